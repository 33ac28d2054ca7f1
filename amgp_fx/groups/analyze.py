"""``analyze``: trace a model, label its dimensions, and collect the groups of channels.

Example:
    >>> import torch, torch.nn as nn, amgp_fx
    >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    >>> graph = amgp_fx.analyze(model, (torch.randn(4, 16),))
    >>> [(g.name, g.full_size, g.prunable) for g in graph.groups if g.prunable]
    [('0.weight[0]', 32, True)]
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.fx as fx
import torch.nn as nn

from amgp_fx.groups.model import Group, Member, Role, UnknownOp
from amgp_fx.groups.propagate import Propagation, propagate
from amgp_fx.groups.registry import RuleRegistry, default_registry
from amgp_fx.tracing import TracedModel, trace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorDim:
    """One dimension of a parameter or buffer with, per index, the base channels it carries."""

    tensor: str
    dim: int
    channels: np.ndarray  # (n, k) base atom ids, -1 padded
    role: Role
    is_parameter: bool


class DependencyGraph:
    """The analysed model: its runnable graph module, its groups, and what surgery needs.

    Attributes:
        traced: the ``TracedModel`` (original model, exported program, runnable module).
        module: the runnable ``fx.GraphModule``; it shares Parameter objects with ``traced.model``.
        groups: every group of channels, prunable or not (``Group.reason`` says why not).
        unknown_ops: ops without a rule, with their source lines.
    """

    def __init__(self, traced: TracedModel, propagation: Propagation, registry: RuleRegistry) -> None:
        self.traced = traced
        self.module: fx.GraphModule = traced.module
        self.registry = registry
        self._prop = propagation
        self._resolved: dict = {}
        self.unknown_ops: list[UnknownOp] = propagation.unknown_ops
        self.tensor_dims: list[TensorDim] = []
        self.groups: list[Group] = []
        self._alive = np.ones(len(propagation.atoms), dtype=bool)
        self._original_calls = {
            node: (node.target, node.args)
            for node in self.module.graph.nodes
            if node.op == "call_function" and (rule := registry.get(node.target)) is not None and rule.rewrite
        }
        self._build()
        self._unique_names()

    # -- public -----------------------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        return self.traced.model

    def group(self, group_id: str) -> Group:
        for g in self.groups:
            if g.id == group_id or g.name == group_id:
                return g
        raise KeyError(f"no group {group_id!r}; known: {', '.join(g.id for g in self.groups)}")

    def prunable_groups(self, kinds: tuple[str, ...] | None = None) -> list[Group]:
        """Groups that may be pruned, optionally only of the given kinds (hidden, embedding, heads...)."""
        return [g for g in self.groups if g.prunable and (kinds is None or g.kind in kinds)]

    def train(self, mode: bool = True) -> "DependencyGraph":
        self.module.train(mode)
        return self

    def table(self, prunable_only: bool = False) -> list[dict[str, Any]]:
        """Rows for a report: one per group."""
        rows = []
        for g in self.groups:
            if prunable_only and not g.prunable:
                continue
            rows.append({
                "id": g.id, "name": g.name, "kind": g.kind, "size": g.size, "full_size": g.full_size,
                "prunable": g.prunable, "mask_equivalent": g.mask_equivalent,
                "members": len(g.members), "reason": g.reason or "",
            })
        return rows

    # -- channel bookkeeping used by surgery ------------------------------------------------
    def resolve(self, label) -> np.ndarray | None:
        """(n, k) base channel ids of a full-size dim label (``None`` for symbolic dims)."""
        if label is None:
            return None
        key = (int(label[0]), len(label)) if len(label) else None
        cached = self._resolved.get(key) if key else None
        if cached is not None and cached[0] is label:
            return cached[1]
        resolved = self._prop.atoms.resolve_many(label)
        if key:
            self._resolved[key] = (label, resolved)
        return resolved

    def present(self, channels: np.ndarray, alive: np.ndarray | None = None) -> np.ndarray:
        """Bool (n,): which indices of a full-size dim are present given the alive channels."""
        alive = self._alive if alive is None else alive
        ok = np.where(channels >= 0, alive[np.maximum(channels, 0)], True)
        return ok.all(axis=1)

    @property
    def alive(self) -> np.ndarray:
        return self._alive

    def set_alive_(self, alive: np.ndarray) -> None:
        """Set which base channels are present and rewrite the graph's size literals to match."""
        self._alive = alive
        for g in self.groups:
            g.alive = alive[g.channel_ids]
        self._rewrite_literals()

    def label_of(self, node: fx.Node):
        return self._prop.labels.get(node)

    # -- internals --------------------------------------------------------------------------
    def _build(self) -> None:
        atoms, prop = self._prop.atoms, self._prop
        atoms.finalize()
        frozen_reason, frozen_texts = atoms.frozen_bases()

        self.fixed_dims: list[tuple[str, int, str]] = []  # dims that can never change, e.g. embedding rows
        for node, (name, is_param) in prop.tensors.items():
            for dim, label in enumerate(prop.labels[node]):
                if label is None:
                    continue
                if len(label) > 64 and self._isolated_and_frozen(label, frozen_reason):
                    self.fixed_dims.append((name, dim, frozen_texts[int(frozen_reason[label[0]])]))
                    continue
                role = prop.roles.get((name, dim), Role.OTHER)
                self.tensor_dims.append(TensorDim(name, dim, self.resolve(label), role, is_param))

        # channels that live in parameters and buffers are the ones that can be removed
        n_atoms = len(atoms)
        in_tensor = np.zeros(n_atoms, dtype=bool)
        for td in self.tensor_dims:
            flat = td.channels.reshape(-1)
            in_tensor[flat[flat >= 0]] = True
        bases = np.nonzero(in_tensor)[0]
        group_parent = np.arange(n_atoms, dtype=np.int64)  # union-find over base channels

        def roots_of(values: np.ndarray) -> np.ndarray:
            r = group_parent[values]
            while True:
                nxt = group_parent[r]
                if np.array_equal(nxt, r):
                    return r
                r = nxt

        def unite(values: np.ndarray) -> None:
            if len(values) > 1:
                r = roots_of(values)
                group_parent[r] = r.min()

        covered = np.zeros(n_atoms, dtype=bool)
        first_seen = np.full(n_atoms, np.iinfo(np.int64).max, dtype=np.int64)
        kind_of: dict[int, str] = {}
        order = 0

        scratch = np.zeros(n_atoms, dtype=np.int64)

        def see(values: np.ndarray) -> None:
            """Record first-appearance order of new channels (order-preserving, O(n))."""
            nonlocal order
            fresh = values[first_seen[values] == np.iinfo(np.int64).max]
            if not len(fresh):
                return
            index = np.arange(len(fresh))
            scratch[fresh[::-1]] = index[::-1]  # earliest position wins
            fresh = fresh[scratch[fresh] == index]
            first_seen[fresh] = np.arange(order, order + len(fresh))
            order += len(fresh)

        # sibling channels: minted together by a producer (a layer's rows, a reshape's factor)
        for block in atoms.blocks:
            if not block.grouping:
                continue
            resolved = atoms.resolve_many(np.arange(block.start, block.start + block.size))
            single = resolved[:, 0][(resolved.shape[1] == 1) | (resolved[:, 1:] < 0).all(axis=1)] \
                if resolved.shape[1] > 1 else resolved[:, 0]
            single = single[in_tensor[single]]
            if not len(single):
                continue
            see(single)
            for b in single[~covered[single]].tolist():
                kind_of.setdefault(b, block.kind)
            covered[single] = True
            unite(single)
        # channels no producer claims: group by the tensor dim they sit in
        for td in self.tensor_dims:
            ch = td.channels
            single = ch[:, 0] if ch.shape[1] == 1 else ch[(ch[:, 1:] < 0).all(axis=1), 0]
            loose = single[(single >= 0) & ~covered[np.maximum(single, 0)]]
            if len(loose):
                see(loose)
                unite(loose)
                covered[loose] = True
        # channels only seen inside products: group by the block where they were minted
        rest = bases[~covered[bases]]
        if len(rest):
            see(rest)
            block_ids = np.searchsorted(np.asarray([b.start for b in atoms.blocks]), rest, side="right") - 1
            for block_id in np.unique(block_ids).tolist():
                unite(rest[block_ids == block_id])
        see(bases)

        ordered = bases[np.argsort(first_seen[bases], kind="stable")]
        ordered_roots = roots_of(ordered)
        index = np.arange(len(ordered_roots))
        scratch[ordered_roots[::-1]] = index[::-1]
        unique_roots = ordered_roots[scratch[ordered_roots] == index]  # in order of first appearance
        rank_of_root = np.full(n_atoms, -1, dtype=np.int64)
        rank_of_root[unique_roots] = np.arange(len(unique_roots))
        gids = rank_of_root[ordered_roots]
        group_of = np.full(n_atoms, -1, dtype=np.int64)
        channel_of = np.full(n_atoms, -1, dtype=np.int64)
        group_of[ordered] = gids
        sort_by_group = np.argsort(gids, kind="stable")
        boundaries = np.searchsorted(gids[sort_by_group], np.arange(len(unique_roots) + 1))
        group_notes: dict[int, set[str]] = {}
        for note_bases, text in atoms.noted_bases():
            touched = group_of[note_bases]
            for gi in np.flatnonzero(np.bincount(touched[touched >= 0])).tolist():
                group_notes.setdefault(gi, set()).add(text)
        for gi in range(len(unique_roots)):
            chans = ordered[sort_by_group[boundaries[gi]:boundaries[gi + 1]]]
            channel_of[chans] = np.arange(len(chans))
            group = Group(id=f"g{gi}", name="", kind=kind_of.get(int(chans[0]), "other"), full_size=len(chans))
            group.channel_ids = chans
            group.alive = np.ones(len(chans), dtype=bool)
            reason_ids = frozen_reason[chans]
            reason_ids = reason_ids[reason_ids >= 0]
            if len(reason_ids):
                group.prunable, group.reason = False, frozen_texts[int(reason_ids.min())]
            if gi in group_notes:
                group.mask_equivalent, group.notes = False, tuple(sorted(group_notes[gi]))
            self.groups.append(group)

        for td in self.tensor_dims:
            ch = td.channels
            valid = ch >= 0
            gid = np.where(valid, group_of[np.maximum(ch, 0)], -1)
            cid = np.where(valid, channel_of[np.maximum(ch, 0)], -1)
            for gi in np.flatnonzero(np.bincount(gid[gid >= 0])).tolist():
                hit = gid == gi
                rows = hit.any(axis=1)
                positions = np.nonzero(rows)[0]
                channels = np.where(hit, cid, -1)[rows].max(axis=1)
                self.groups[gi].members.append(Member(td.tensor, td.dim, positions, channels, td.role, td.is_parameter))

        for g in self.groups:
            producers = [m for m in g.members if m.role is Role.PRODUCER]
            first = (producers or g.members)[0]
            g.name = f"{first.tensor}[{first.dim}]"
            producer_kinds = {prop.roles.get(("kind", m.tensor, m.dim)) for m in producers
                              if len(np.unique(m.channels)) == len(m.positions)}  # the member's dim is these channels
            if "embedding" in producer_kinds:
                g.kind = "embedding"
            elif g.kind in ("other", "reshape") and producers:
                g.kind = "hidden"
            g.owns_name = len(np.unique(first.channels)) == len(first.positions)
            if g.prunable and not any(m.is_parameter for m in g.members):
                g.prunable, g.reason = False, "no parameter holds these channels"
            elif g.prunable and g.full_size < 2:
                g.prunable, g.reason = False, "a single channel cannot be pruned"

    def _unique_names(self) -> None:
        """Two groups can start at the same tensor dim (a reshape's factors); the group whose
        channels the dim holds one-to-one keeps the plain name, the others get their kind appended."""
        by_name: dict[str, list[Group]] = {}
        for g in self.groups:
            by_name.setdefault(g.name, []).append(g)
        for name, same in by_name.items():
            if len(same) > 1:
                same.sort(key=lambda g: (not g.owns_name, not g.prunable))
                for g in same[1:]:
                    g.name = f"{name}:{g.kind}:{g.id}"

    def _isolated_and_frozen(self, label: np.ndarray, frozen_reason: np.ndarray) -> bool:
        """True for a dim whose atoms are all frozen and coupled with nothing (cheap to skip)."""
        atoms = self._prop.atoms
        return bool((frozen_reason[label] >= 0).all() and (atoms.roots(label) == label).all()
                    and (atoms.class_size[label] == 1).all() and not np.isin(label[:1], atoms._subst_roots).any())

    def _rewrite_literals(self) -> None:
        counter = _SizeCounter(self)
        for node, (target, args) in self._original_calls.items():
            rule = self.registry.get(target)
            new_target, new_args = rule.rewrite(_Rewrite(node, target, args, self, counter))
            node.target, node.args = new_target, tuple(new_args)
        self.module.graph.lint()
        self.module.recompile()


class _SizeCounter:
    def __init__(self, graph: DependencyGraph) -> None:
        self.graph = graph

    def count(self, label, default=None):
        if label is None:
            return default
        if len(label) == 0:
            return 0
        return int(self.graph.present(self.graph.resolve(label)).sum())


class _Rewrite:
    """What a rule's ``rewrite`` sees: the original call and the current sizes of labelled dims."""

    def __init__(self, node, target, args, graph: DependencyGraph, counter: _SizeCounter) -> None:
        self.node, self.target, self.args = node, target, args
        self._graph, self._counter = graph, counter

    @property
    def out_label(self):
        return self._graph.label_of(self.node)

    def label(self, value):
        return self._graph.label_of(value) if isinstance(value, fx.Node) else None

    def count(self, label, default=None):
        return self._counter.count(label, default)


def analyze(model: nn.Module, example_inputs: Any, *, kwargs: dict | None = None,
            rules: RuleRegistry | None = None, traced: TracedModel | None = None) -> DependencyGraph:
    """Find every group of channels that must shrink and grow together.

    Args:
        model: any ``nn.Module`` (dict inputs and several positional inputs are fine).
        example_inputs: positional arguments for ``forward``; batch size >= 2.
        rules: a ``RuleRegistry`` (``amgp_fx.default_registry()`` plus your rules); default built-ins.
        traced: reuse an existing ``TracedModel`` instead of tracing again.
    Returns:
        ``DependencyGraph``; run ``graph.module`` (not the eager model) after surgery, because only
        the graph's size literals are rewritten.
    Raises:
        ExampleInputError, TraceError: see :func:`amgp_fx.trace`.
    """
    registry = rules if rules is not None else default_registry()
    traced = traced if traced is not None else trace(model, example_inputs, kwargs=kwargs)
    propagation = propagate(traced.module, registry)
    graph = DependencyGraph(traced, propagation, registry)
    if graph.unknown_ops:
        log.info("ops without a rule (their dims are frozen): %s",
                 ", ".join(sorted({u.target for u in graph.unknown_ops})))
    return graph

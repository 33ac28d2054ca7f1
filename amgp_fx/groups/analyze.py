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
from amgp_fx.trace import TracedModel, trace

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
        self._resolved: dict[int, tuple[int, ...]] = {}
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
        rows = [self._resolve_atom(a) for a in label.tolist()]
        width = max((len(r) for r in rows), default=1)
        out = np.full((len(rows), width), -1, dtype=np.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out

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
            g.alive = alive[g._channel_ids]
        self._rewrite_literals()

    def label_of(self, node: fx.Node):
        return self._prop.labels.get(node)

    # -- internals --------------------------------------------------------------------------
    def _resolve_atom(self, atom: int) -> tuple[int, ...]:
        cached = self._resolved.get(atom)
        if cached is None:
            try:
                cached = self._prop.atoms.resolve(atom)
            except RecursionError:
                cached = (self._prop.atoms.find(atom),)
                self._prop.atoms.freeze_atom(atom, "cyclic reshape of channels")
            self._resolved[atom] = cached
        return cached

    def _build(self) -> None:
        atoms, prop = self._prop.atoms, self._prop
        frozen: dict[int, str] = {}
        for root, why in atoms.frozen_roots().items():
            for base in self._resolve_atom(root):
                frozen.setdefault(base, why)
        notes: dict[int, set[str]] = {}
        for root, ns in atoms.noted_roots().items():
            for base in self._resolve_atom(root):
                notes.setdefault(base, set()).update(ns)

        for node, (name, is_param) in prop.tensors.items():
            for dim, label in enumerate(prop.labels[node]):
                if label is None:
                    continue
                role = prop.roles.get((name, dim), Role.OTHER)
                self.tensor_dims.append(TensorDim(name, dim, self.resolve(label), role, is_param))

        # channels that live in parameters and buffers are the ones that can be removed
        in_tensors: dict[int, None] = {}
        for td in self.tensor_dims:
            for base in td.channels.reshape(-1).tolist():
                if base >= 0:
                    in_tensors.setdefault(base, None)

        # sibling channels: minted together by a producer (a layer's rows, a reshape's factor)
        parent = {b: b for b in in_tensors}

        def find(x):
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        order: dict[int, None] = {}
        kinds: dict[int, str] = {}
        covered: set[int] = set()
        for block in atoms.blocks:
            if not block.grouping:
                continue
            bases = [self._resolve_atom(a) for a in range(block.start, block.start + block.size)]
            bases = [b[0] for b in bases if len(b) == 1 and b[0] in parent]
            for b in bases:
                order.setdefault(b, None)
                kinds.setdefault(b, block.kind)
                covered.add(b)
            for b in bases[1:]:
                parent[find(b)] = find(bases[0])
        for td in self.tensor_dims:  # channels no producer claims: group by the tensor dim they sit in
            single = [int(r[0]) for r in td.channels if r[0] >= 0 and (len(r) == 1 or r[1] < 0)]
            loose = [b for b in single if b not in covered]
            for b in loose:
                order.setdefault(b, None)
            for b in loose[1:]:
                parent[find(b)] = find(loose[0])
            covered.update(loose)
        by_block: dict[int, int] = {}  # channels only seen inside products: group by where they were minted
        for b in in_tensors:
            if b not in covered:
                first = by_block.setdefault(atoms._block_of[b], b)
                parent[find(b)] = find(first)
            order.setdefault(b, None)

        members_of: dict[int, list[int]] = {}
        for b in order:
            members_of.setdefault(find(b), []).append(b)

        channel_index: dict[int, tuple[int, int]] = {}
        for gi, (root, chans) in enumerate(members_of.items()):
            group = Group(id=f"g{gi}", name="", kind=kinds.get(chans[0], "other"), full_size=len(chans))
            group._channel_ids = np.asarray(chans, dtype=np.int64)
            group.alive = np.ones(len(chans), dtype=bool)
            for ci, b in enumerate(chans):
                channel_index[b] = (gi, ci)
            reasons = [frozen[b] for b in chans if b in frozen]
            if reasons:
                group.prunable, group.reason = False, reasons[0]
            group_notes = sorted({n for b in chans for n in notes.get(b, ())})
            if group_notes:
                group.mask_equivalent, group.notes = False, tuple(group_notes)
            self.groups.append(group)

        for td in self.tensor_dims:
            per_group: dict[int, tuple[list, list]] = {}
            for pos, row in enumerate(td.channels.tolist()):
                for base in row:
                    if base >= 0:
                        gi, ci = channel_index[base]
                        positions, chans = per_group.setdefault(gi, ([], []))
                        positions.append(pos)
                        chans.append(ci)
            for gi, (positions, chans) in per_group.items():
                self.groups[gi].members.append(
                    Member(td.tensor, td.dim, np.asarray(positions), np.asarray(chans), td.role, td.is_parameter))

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
            if g.prunable and not any(m.is_parameter for m in g.members):
                g.prunable, g.reason = False, "no parameter holds these channels"
            elif g.prunable and g.full_size < 2:
                g.prunable, g.reason = False, "a single channel cannot be pruned"

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

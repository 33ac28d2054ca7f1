"""One-shot structured pruning to a ratio, a FLOPs target or a latency target, as a JSON plan that can be re-applied.

A plan lists, for each pruned group, which of its channels (positions among the group's full-size
channels) are kept. It is computed from the analysis and the importance scores:

- each selected group loses ``ratio`` of its channels (a per-group override may replace the global
  ratio), capped at ``max_layer_ratio`` per group;
- the kept width is rounded to the nearest multiple of ``multiple`` (8 by default: tensor-core and
  vector-friendly sizes), never below one multiple and never above the group's size; groups no
  larger than ``multiple`` are rounded to whole channels, never 0;
- a request that would keep less than one channel of a group ("empties the layer") is refused;
- a group spanning several segments (tables and towers concatenated, see :mod:`amgp_fx.segments`)
  keeps the same share of every segment (policy ``balanced``, the default for embedding and
  concatenated groups) and never leaves a member tensor with a zero-size dim unless
  ``allow_empty=True``; every member tensor's size before and after is recorded per group;
- with a FLOPs target, a bisection finds the smallest global ratio whose pruned model has at most
  ``flops_target`` x the dense model's forward FLOPs, measured by shrinking, counting and regrowing;
- with a latency target, the same bisection finds the smallest global ratio whose pruned model's
  *predicted* latency (:func:`amgp_fx.latency_model.predict_latency` on given device constants, at
  ``latency_batch`` rows) is at most ``latency_target`` x the dense model's, measured by shrinking,
  exporting to ONNX in a temporary folder (no parity check), predicting and regrowing.

The channels kept are the highest-scoring ones (``amgp_fx.score``, L2 by default). ``apply_plan``
shrinks a freshly analysed copy of the same model to exactly the plan's channels, which together
with the factory and the pruned state dict re-creates the pruned model.

Example:
    >>> import torch, amgp_fx
    >>> model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    >>> graph = amgp_fx.analyze(model, (torch.randn(4, 16),))
    >>> plan = plan_pruning(graph, ratio=0.5)
    >>> [(g.name, g.full_size, len(g.keep)) for g in plan.groups]
    [('0.weight[0]', 64, 32)]
    >>> _ = apply_plan(graph, plan)
    >>> graph.module(torch.randn(3, 16)).shape
    torch.Size([3, 4])
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from amgp_fx.groups.analyze import DependencyGraph
from amgp_fx.groups.model import Group
from amgp_fx.importance import CRITERIA, DATA_CRITERIA, score
from amgp_fx.segments import POLICIES, group_segments, keep_channels, member_sizes, resolve_policy
from amgp_fx.surgery import SurgeryRecord, grow_, shrink_

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_LATENCY_BATCH", "PLAN_FORMAT", "PLAN_VERSION", "GroupKeep", "PlanError", "PruningPlan",
           "apply_plan", "count_parameters", "plan_pruning", "prune_"]

PLAN_FORMAT, PLAN_VERSION = "amgp-fx-pruning-plan", 1
_GRID = 1000  # ratio grid of the FLOPs- and latency-target searches
# Rows the latency target is predicted at by default: a serving-sized batch (the middle of the ONNX
# benchmark's 256..65536 sweep). At the traced batch (8 in the CLI) every kernel is launch-bound, so the
# prediction would count kernels and hardly see the widths that pruning changes.
DEFAULT_LATENCY_BATCH = 16384


class PlanError(ValueError):
    """A pruning request or plan that cannot be carried out; the message names the group and the fix."""


@dataclass(frozen=True)
class GroupKeep:
    """Channels kept in one group: positions in ``[0, full_size)``, ascending."""

    id: str
    name: str
    kind: str
    full_size: int
    keep: tuple[int, ...]
    policy: str = ""  # balanced or global ("" in plans written before policies)
    members: tuple[dict, ...] = ()  # {"tensor", "dim", "role", "channels", "before", "after"} per member

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(dict(m) for m in self.members))
        keep = tuple(int(k) for k in self.keep)
        if not keep or list(keep) != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= self.full_size:
            raise PlanError(f"group {self.id} ({self.name}): kept channels must be distinct, ascending and in "
                            f"[0, {self.full_size}), at least one")
        object.__setattr__(self, "keep", keep)


@dataclass(frozen=True)
class PruningPlan:
    """Which channels of which groups to keep, and how the plan was made (saved as JSON, no pickle)."""

    groups: tuple[GroupKeep, ...]
    criterion: str = "l2"
    ratio: float | None = None
    flops_target: float | None = None
    multiple: int = 8
    max_layer_ratio: float = 0.9
    stats: dict[str, Any] = field(default_factory=dict)  # parameters/FLOPs before and after
    policy: str = "auto"
    allow_empty: bool = False
    version: int = PLAN_VERSION
    latency_target: float | None = None  # predicted latency as a fraction of the dense model's (None in older plans)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["groups"] = [{**asdict(g), "keep": list(g.keep)} for g in self.groups]
        return {"format": PLAN_FORMAT, **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningPlan:
        """Raises PlanError for another format or version, or malformed fields."""
        if not isinstance(data, Mapping) or data.get("format") != PLAN_FORMAT:
            raise PlanError("this is not an amgp-fx pruning plan (no \"format\": \"amgp-fx-pruning-plan\")")
        if data.get("version") != PLAN_VERSION:
            raise PlanError(f"pruning plan version {data.get('version')!r} is not supported (this amgp-fx reads "
                            f"version {PLAN_VERSION})")
        try:
            groups = tuple(GroupKeep(str(g["id"]), str(g["name"]), str(g.get("kind", "")), int(g["full_size"]),
                                     tuple(g["keep"]), str(g.get("policy", "")), tuple(g.get("members", ())))
                           for g in data["groups"])
            known = {"criterion", "ratio", "flops_target", "multiple", "max_layer_ratio", "stats", "policy",
                     "allow_empty", "latency_target"}
            return cls(groups=groups, **{k: data[k] for k in known if k in data})
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, PlanError):
                raise
            raise PlanError(f"malformed pruning plan: {type(error).__name__}: {error}") from error

    def save(self, path: str | os.PathLike) -> None:
        from amgp_fx.fileio import atomic_write_json

        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruningPlan:
        from amgp_fx.fileio import JsonFileError, read_json_file

        try:
            data = read_json_file(path, "pruning plan")
        except JsonFileError as error:  # binary, not JSON or nested too deeply: one line, not a crash
            raise PlanError(str(error)) from None
        if not isinstance(data, dict):
            raise PlanError(f"pruning plan {path} holds a JSON {type(data).__name__}, not an object")
        return cls.from_dict(data)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _batch_size(inputs) -> int:
    """Dim 0 of the first tensor input: the batch the FLOPs were counted at. Inputs may be any
    pytree (a dict of features, a KeyedJaggedTensor), so ``inputs[0].shape`` is not enough."""
    from torch.utils import _pytree as pytree

    leaf = next((t for t in pytree.tree_leaves(inputs) if isinstance(t, torch.Tensor) and t.dim() > 0), None)
    return int(leaf.shape[0]) if leaf is not None else 1


def _round_width(raw: float, full: int, multiple: int) -> int:
    """``raw`` channels rounded half-up to a multiple of ``multiple`` within [multiple, full] (whole
    channels within [1, full] when ``full <= multiple``)."""
    if full <= multiple:
        return min(full, max(1, math.floor(raw + 0.5)))
    return min(full, max(multiple, multiple * math.floor(raw / multiple + 0.5)))


def _select(graph: DependencyGraph, groups: Sequence[str] | None, kinds: Sequence[str] | None) -> list[Group]:
    if groups:
        chosen = []
        for key in groups:
            try:
                group = graph.group(key)
            except KeyError:
                raise PlanError(f"no group {key!r} in this model; 'amgp-compress analyze' lists the groups") from None
            if not group.prunable:
                raise PlanError(f"group {group.id} ({group.name}) cannot be pruned: {group.reason}. Leave it out; "
                                "'amgp-compress analyze' lists the prunable groups")
            chosen.append(group)
    else:
        chosen = graph.prunable_groups(tuple(kinds) if kinds else None)
    if not chosen:
        kinds_text = f" of kind {', '.join(kinds)}" if kinds else ""
        raise PlanError(f"the model has no prunable group{kinds_text}; 'amgp-compress analyze' says why")
    return chosen


def _widths(chosen: Sequence[Group], ratio: float, overrides: Mapping[str, float], multiple: int, cap: float,
            allow_empty_request: bool) -> dict[str, int]:
    widths = {}
    for group in chosen:
        requested = overrides.get(group.id, overrides.get(group.name, ratio))
        effective = min(requested, cap)
        raw = group.size * (1.0 - effective)
        if raw < 1.0 and not allow_empty_request:
            raise PlanError(f"ratio {requested:g} would empty group {group.id} ({group.name}, {group.kind}, "
                            f"{group.size} channels): it keeps {raw:.2g} of a channel. Use a ratio below "
                            f"{1 - 1 / group.size:.3g} for it, cap layers with --max-layer-ratio, or leave it out "
                            "with --kinds/--groups")
        widths[group.id] = _round_width(max(raw, 1.0), group.size, multiple)
    return widths


class _Choice:
    """Per selected group: its segments and policy, and which channels a width keeps (both planners)."""

    def __init__(self, chosen: Sequence[Group], scores: Mapping[str, torch.Tensor], policy: str,
                 allow_empty: bool) -> None:
        self.scores, self.allow_empty = scores, allow_empty
        self.segments = {g.id: group_segments(g) for g in chosen}
        self.policy = {g.id: resolve_policy(policy, g, self.segments[g.id]) for g in chosen}

    def keep(self, widths: Mapping[str, int]) -> dict[str, list[int]]:
        """Positions kept per group, ascending (one per segment at least unless allow_empty)."""
        return {gid: keep_channels(self.scores[gid], width, self.segments[gid], self.policy[gid], self.allow_empty)
                for gid, width in widths.items()}


def _member_table(graph: DependencyGraph, chosen: Sequence[Group], keep: Mapping[str, Sequence[int]]) -> dict:
    """Per group: every member tensor dim with its size before and after all of the plan's groups shrink."""
    shapes = {name: tuple(t.shape) for name, t in [*graph.module.named_parameters(), *graph.module.named_buffers()]}
    gone: dict[tuple[str, int], set[int]] = {}  # positions, not counts: two groups can share a position
    for group in chosen:  # (heads x head_dim of one projection), which goes once when either drops it
        dropped = np.ones(group.full_size, dtype=bool)
        dropped[list(keep[group.id])] = False
        for member in group.members:
            valid = member.channels >= 0
            positions = member.positions[valid][dropped[member.channels[valid]]]
            gone.setdefault((member.tensor, member.dim), set()).update(positions.tolist())
    removed = {key: len(positions) for key, positions in gone.items()}
    return {g.id: tuple(vars(m) for m in member_sizes(g, shapes, removed)) for g in chosen}


def _check_no_empty(entries: Sequence[tuple[str, str, Sequence[dict]]]) -> None:
    """Refuse a plan that leaves a member tensor dim with size 0; entries are (id, name, member sizes)."""
    for entry_id, entry_name, members in entries:
        for member in members:
            if member["before"] > 0 and member["after"] <= 0:
                raise PlanError(f"the plan empties {member['tensor']} (dim {member['dim']}, {member['before']} -> 0) "
                                f"in group {entry_id} ({entry_name}), which drops a whole feature or layer. Keep at "
                                "least one of its channels, or allow it explicitly (allow_empty=True, "
                                "--allow-empty-members)")


def _check_ratio(name: str, value: float, upper_inclusive: bool = False) -> None:
    ok = 0.0 < value <= 1.0 if upper_inclusive else 0.0 < value < 1.0
    if not (isinstance(value, (int, float)) and ok):
        raise PlanError(f"{name} {value!r} is outside (0, 1{']' if upper_inclusive else ')'}: pass a fraction "
                        "such as 0.5")


def plan_pruning(graph: DependencyGraph, ratio: float | None = None, *, flops_target: float | None = None,
                 latency_target: float | None = None, latency_constants=None, latency_batch: int | None = None,
                 group_ratios: Mapping[str, float] | None = None, groups: Sequence[str] | None = None,
                 kinds: Sequence[str] | None = None, criterion: str = "l2", multiple: int = 8,
                 max_layer_ratio: float = 0.9, example_inputs: tuple | None = None, policy: str = "auto",
                 allow_empty: bool = False, latency_batch_fixed: bool = False) -> PruningPlan:
    """Choose the channels to keep in each selected group (the graph is left as it was).

    Args:
        graph: an analysed, not yet pruned model.
        ratio: fraction of channels to remove from each selected group, in (0, 1).
        flops_target: instead of ``ratio``: the pruned model's forward FLOPs as a fraction of the
            dense model's, in (0, 1).
        latency_target: instead of ``ratio``: the pruned model's predicted latency as a fraction of
            the dense model's, in (0, 1); needs ``latency_constants``. Each candidate of the search is
            exported to ONNX (a second or two each on a CPU; about log2 of the number of distinct
            width vectors, plus the dense model, are exported).
        latency_constants: the :class:`amgp_fx.latency_model.DeviceConstants` of the device to
            predict for (``calibrate(...)``, or ``DeviceConstants.from_dict`` of a saved JSON).
        latency_batch: rows the latency is predicted at; default :data:`DEFAULT_LATENCY_BATCH`
            (16384, a serving batch: at a tiny batch every kernel is launch-bound). The models are
            exported with a dynamic batch, or with the example inputs' static batch when this equals it.
        latency_batch_fixed: the model runs at ``latency_batch`` only (it was saved with a static batch), so
            an unreachable target's advice is to re-save it with a dynamic batch, not to pick another batch.
        group_ratios: per-group ratios (by group id or name), overriding ``ratio``.
        groups, kinds: prune only these groups (ids or names), or only groups of these kinds
            (``hidden``, ``embedding``, ``heads``, ...); default every prunable group.
        criterion: importance criterion (``l2``, ``l1``, ``taylor``, ``random``).
        multiple: kept widths are rounded to a multiple of this (>= 1).
        max_layer_ratio: no group loses more than this fraction, in (0, 1].
        example_inputs: inputs for FLOPs counting and ONNX export; default the inputs the graph was traced with.
        policy: ``balanced`` (the same share of every segment of a group), ``global`` (the group's
            top-k) or ``auto`` (balanced for embedding and concatenated groups); see :mod:`amgp_fx.segments`.
        allow_empty: let a segment lose every channel (a member tensor with a zero-size dim); off by
            default, so each segment keeps at least one channel (a group keeps at least one per segment).
    Returns:
        ``PruningPlan``; only groups that lose channels are listed, each with its member tensors'
        sizes before and after. With a target, ``stats`` holds the measured cost before and after
        (``flops_*``, or ``latency_before_s``/``latency_after_s``/``latency_batch``/``latency_constants``).
    Raises:
        PlanError: ratio or target outside (0, 1), more than one of ratio and targets, a latency target
            without constants, a request that would empty a layer, a non-prunable or unknown group, or
            an unreachable target.
    """
    targets = [name for name, value in (("ratio", ratio), ("FLOPs target", flops_target),
                                        ("latency target", latency_target)) if value is not None]
    if len(targets) > 1 or (not targets and not group_ratios):
        raise PlanError("pass exactly one of a pruning ratio, a FLOPs target and a latency target"
                        + (f" (got {' and '.join(targets)})" if targets else ""))
    for name, value in [("ratio", ratio), ("FLOPs target", flops_target), ("latency target", latency_target),
                        *(group_ratios or {}).items()]:
        if value is not None:
            _check_ratio(name if name in ("ratio", "FLOPs target", "latency target") else f"ratio of group {name}",
                         value)
    if latency_target is not None:
        _check_latency_options(latency_constants, latency_batch)
    elif latency_constants is not None or latency_batch is not None:
        raise PlanError("latency_constants and latency_batch belong to a latency target; pass latency_target too")
    _check_ratio("max layer ratio", max_layer_ratio, upper_inclusive=True)
    if not isinstance(multiple, int) or multiple < 1:
        raise PlanError(f"multiple {multiple!r} must be a positive integer (1 turns rounding off)")
    if criterion not in CRITERIA:
        raise PlanError(f"unknown importance criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if criterion in DATA_CRITERIA:
        raise PlanError(f"criterion {criterion!r} scores channels on a batch of data, which plan_pruning does not "
                        "see; use it in AMGP training (AmgpConfig.criterion), or choose l2, l1, taylor or random")
    if policy not in POLICIES:
        raise PlanError(f"unknown pruning policy {policy!r}; choose one of {', '.join(POLICIES)}")
    overrides = dict(group_ratios or {})
    searched = flops_target is not None or latency_target is not None
    only_overrides = ratio is None and not searched
    chosen = _select(graph, groups or (list(overrides) if only_overrides else None), kinds)
    for key in overrides:
        if not any(key in (g.id, g.name) for g in _select(graph, [key], None) if g in chosen):
            raise PlanError(f"group {key!r} has a ratio but is not among the groups being pruned")
    if any(g.size != g.full_size for g in chosen):
        raise PlanError("plan_pruning needs an unpruned graph; analyse the pruned model again to prune it further")
    choice = _Choice(chosen, score(graph, criterion, groups=chosen), policy, allow_empty)
    stats: dict[str, Any] = {}
    inputs = example_inputs if example_inputs is not None else graph.traced.args
    if flops_target is not None:
        ratio, stats = _solve(graph, chosen, choice, flops_target, overrides, multiple, max_layer_ratio,
                              _flops_cost(graph, inputs))
    elif latency_target is not None:
        batch = DEFAULT_LATENCY_BATCH if latency_batch is None else int(latency_batch)
        embedding_left_out = (not any(g.kind == "embedding" for g in chosen)
                              and any(g.kind == "embedding" for g in graph.prunable_groups()))
        ratio, stats = _solve(graph, chosen, choice, latency_target, overrides, multiple, max_layer_ratio,
                              _latency_cost(graph, inputs, latency_constants, batch, latency_batch_fixed,
                                            embedding_left_out))
    widths = _widths(chosen, ratio or 0.0, overrides, multiple, max_layer_ratio, searched)
    keep = choice.keep(widths)
    pruned = [g for g in chosen if len(keep[g.id]) < g.full_size]
    members = _member_table(graph, pruned, keep)
    plan_groups = tuple(GroupKeep(g.id, g.name, g.kind, g.full_size, tuple(keep[g.id]), choice.policy[g.id],
                                  members[g.id]) for g in pruned)
    if not plan_groups:
        log.warning("the request removes no channel (widths round back up to a multiple of %d)", multiple)
    if not allow_empty:
        _check_no_empty([(g.id, g.name, g.members) for g in plan_groups])  # a dim spanning several groups
    return PruningPlan(plan_groups, criterion, ratio, flops_target, multiple, max_layer_ratio, stats, policy,
                       allow_empty, latency_target=latency_target)


def _check_latency_options(constants, batch) -> None:
    from amgp_fx.latency_model import DeviceConstants

    if constants is None:
        raise PlanError("a latency target needs the device's constants (latency_constants): measure them with "
                        "amgp_fx.latency_model.calibrate(device=...) or load a saved set with "
                        "DeviceConstants.from_dict")
    if not isinstance(constants, DeviceConstants):
        raise PlanError(f"latency_constants must be a DeviceConstants, got {type(constants).__name__}; build one "
                        "with DeviceConstants.from_dict(json.load(...)) or calibrate(device=...)")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise PlanError(f"latency batch {batch!r} must be a positive integer (rows per call)")


@dataclass(frozen=True)
class _Cost:
    """What a target search measures on the graph as it currently is (dense, or shrunk to a candidate)."""

    name: str  # "FLOPs", "latency": the target's name in messages
    what: str  # how the cost is measured, for the unreachable-target message
    fix: str  # what to change when the target is out of reach
    measure: Callable[[], float]
    stats: Callable[[float, float], dict]  # (dense, chosen) -> the plan's stats


def _flops_cost(graph: DependencyGraph, inputs) -> _Cost:
    from amgp_fx.bench import count_forward_flops

    def stats(dense: float, after: float) -> dict:
        return {"flops_before": int(dense), "flops_after": int(after), "flops_batch": _batch_size(inputs)}

    return _Cost("FLOPs", "of the dense FLOPs", "Raise the target, --max-layer-ratio, or use --multiple 1",
                 lambda: count_forward_flops(graph.module, inputs), stats)


def _latency_cost(graph: DependencyGraph, inputs, constants, batch: int, batch_fixed: bool = False,
                  embedding_left_out: bool = True) -> _Cost:
    """Predicted latency at ``batch`` rows: the graph module exported to ONNX in a temporary folder (no
    parity check, no checker), then :func:`amgp_fx.latency_model.predict_latency`. The advice for an
    unreachable target names only what can change: another batch only when the model's batch is not
    fixed, more kinds of groups only when the embedding groups were left out."""
    from amgp_fx.export import export_onnx
    from amgp_fx.latency_model import predict_latency

    static = batch == _batch_size(inputs)  # the example batch itself: a static export is exact (and always works)

    def measure() -> float:
        with tempfile.TemporaryDirectory(prefix="amgp-latency-") as folder:
            path = Path(folder) / "candidate.onnx"
            export_onnx(graph.module, inputs, path, dynamic_batch=not static, parity=False, check=False)
            return predict_latency(path, batch, constants).seconds

    def stats(dense: float, after: float) -> dict:
        return {"latency_before_s": dense, "latency_after_s": after, "latency_batch": batch,
                "latency_constants": constants.to_dict()}

    fixes = ["Raise the target or --max-layer-ratio"]
    if embedding_left_out:
        fixes.append("let more kinds of groups be pruned (--kinds hidden,embedding: gathers and the interaction "
                     "shrink only with the embedding dim)")
    fixes.append("use --multiple 1")
    if batch_fixed:
        fixes.append(f"re-save the model with a dynamic batch so that it can be predicted at a larger "
                     f"--latency-batch (its batch is static at {batch}; small batches are launch-bound)")
    else:
        fixes.append("predict at a larger --latency-batch (small batches are launch-bound)")
    return _Cost("latency", f"of the dense model's predicted latency at batch {batch} on {constants.device}",
                 ", ".join(fixes[:-1]) + ", or " + fixes[-1], measure, stats)


def _candidates(chosen, overrides, multiple, cap) -> list[tuple[float, dict[str, int]]]:
    """The first ratio of each distinct width vector on a 1/1000 grid of ``(0, cap]``, least pruned first.

    Widths are step functions of the ratio, so the grid collapses to a few distinct width vectors.
    """
    candidates: list[tuple[float, dict[str, int]]] = []
    for step in range(1, _GRID + 1):
        widths = _widths(chosen, cap * step / _GRID, overrides, multiple, cap, True)
        if not candidates or widths != candidates[-1][1]:
            candidates.append((cap * step / _GRID, widths))
    return candidates


def _solve(graph, chosen, choice: _Choice, target, overrides, multiple, cap, cost: _Cost) -> tuple[float, dict]:
    """Smallest ratio (on a 1/1000 grid of the cap) whose pruned ``cost`` is <= target x the dense cost.

    A bisection over the distinct width vectors measures about log2 of their number (shrink, measure,
    regrow each). On return the candidate before the chosen one was measured above the target, or is
    the dense model itself.
    """
    dense = cost.measure()
    if not dense > 0:
        raise PlanError(f"the model has no counted {cost.name} (only lookups?), so a {cost.name} target means "
                        "nothing; use a ratio" if cost.name == "FLOPs" else
                        f"the dense model's predicted {cost.name} is 0, so a {cost.name} target means nothing; "
                        "use a ratio")
    candidates = _candidates(chosen, overrides, multiple, cap)
    measured: dict[int, float] = {}

    def cost_of(index: int) -> float:
        if index not in measured:
            keep = choice.keep(candidates[index][1])
            record = shrink_(graph, {k: v for k, v in keep.items() if len(v) < graph.group(k).size})
            try:
                measured[index] = cost.measure()
            finally:
                grow_(graph, record)
            log.info("%s target search: ratio %.3f -> %.4g of dense", cost.name, candidates[index][0],
                     measured[index] / dense)
        return measured[index]

    last = len(candidates) - 1
    if cost_of(last) > target * dense:
        raise PlanError(f"{cost.name} target {target:g} is out of reach: removing the most allowed ({cap:g} of every "
                        f"selected group) leaves {cost_of(last) / dense:.3g} {cost.what}. {cost.fix}")
    low, high = -1, last  # cost_of(high) meets the target; low is the largest index known not to
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if cost_of(middle) <= target * dense else (middle, high)
    return candidates[high][0], cost.stats(dense, cost_of(high))


def apply_plan(graph: DependencyGraph, plan: PruningPlan | Mapping[str, Any], optimizers=None) -> SurgeryRecord:
    """Shrink ``graph`` to the plan's channels (in place; see :func:`amgp_fx.shrink_`).

    Groups are found by id and checked by name and size; if ids differ (another analysis order)
    a unique (name, size) match is used.

    Raises:
        PlanError: the plan names a group this model does not have, of another size, or not prunable.
    """
    plan = plan if isinstance(plan, PruningPlan) else PruningPlan.from_dict(plan)
    keep, targets = {}, []
    for entry in plan.groups:
        group = next((g for g in graph.groups if g.id == entry.id and g.name == entry.name
                      and g.full_size == entry.full_size), None)
        if group is None:
            matches = [g for g in graph.groups if g.name == entry.name and g.full_size == entry.full_size]
            if len(matches) != 1:
                raise PlanError(f"the plan's group {entry.id} ({entry.name}, {entry.full_size} channels) is not in "
                                "this model: the plan was made for another model or configuration. Re-create it "
                                "with 'amgp-compress prune' on this model")
            group = matches[0]
        if not group.prunable:
            raise PlanError(f"the plan prunes group {group.id} ({group.name}), which cannot be pruned here: "
                            f"{group.reason}")
        if group.size != group.full_size:
            raise PlanError(f"group {group.id} ({group.name}) is already pruned; apply plans to a fresh model")
        keep[group.id] = list(entry.keep)
        targets.append(group)
    if not plan.allow_empty:  # checked on this model, so hand-written plans are covered too
        members = _member_table(graph, targets, keep)
        _check_no_empty([(g.id, g.name, members[g.id]) for g in targets])
    return shrink_(graph, keep, optimizers)


def prune_(graph: DependencyGraph, ratio: float | None = None, *, optimizers=None, measure_flops: bool = True,
           **options) -> tuple[PruningPlan, SurgeryRecord]:
    """Plan (see :func:`plan_pruning` for the options) and apply it; the plan's ``stats`` get the
    parameter counts and forward FLOPs before and after."""
    from amgp_fx.bench import count_forward_flops

    params_before = count_parameters(graph.module)
    plan = plan_pruning(graph, ratio, **options)
    inputs = options.get("example_inputs") or graph.traced.args
    stats = dict(plan.stats)
    if measure_flops and "flops_before" not in stats:
        stats.update(flops_before=count_forward_flops(graph.module, inputs), flops_batch=_batch_size(inputs))
    record = apply_plan(graph, plan, optimizers)
    if measure_flops and "flops_after" not in stats:
        stats["flops_after"] = count_forward_flops(graph.module, inputs)
    stats.update(params_before=params_before, params_after=count_parameters(graph.module))
    return dataclasses.replace(plan, stats=stats), record

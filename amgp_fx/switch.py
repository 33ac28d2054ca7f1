"""How AMGP changes width: which units sit out a pruned phase, and how a shrink and a growth happen.

`amgp_fx.amgp.AmgpHook` decides *when* (its schedule); a `SwitchPolicy` decides *how*, with the
options of `amgp_fx.schedule.AmgpConfig`:

* selection (``plan_keep`` and ``selection``): the kept channels of each group from importance
  scores, re-scored every cycle ("score"), the first cycle's choice again ("sticky"), disjoint
  shares of a fixed random order in turn ("rotate", FedRolex-like), or the units that sat out
  least so far ("balanced"), so that no unit falls behind for good.
* shrink: physical removal (``surgery.shrink_``) with the kept units' outgoing weights rescaled
  (``amgp_fx.rescale``); with ``fade_steps`` the chosen units are faded out first (outgoing
  weights to exactly zero, the rescale phased in), so the removal itself changes no output.
* bias fold (``fold_bias``, ``amgp_fx.bias_fold``): at a shrink, and at each step of a fade, the
  change in every consumer's mean output (the removed units' mean, the rescale's shift of the kept
  units' mean) goes into its bias, measured on a batch of real inputs (``stats``); the fold is given
  back where the rescale is divided out.
* growth: ``surgery.grow_`` (restored or fresh values) with the rescale divided out; with
  ``grow_init="split"``, copies of kept units that share their outgoing weights (``amgp_fx.net2wider``,
  function-preserving, the rescale split along); or, with ``preserve_growth``, function-preserving: kept units keep their current weights, regrown units
  enter with zero outgoing weights, and ``grow_ramp_steps`` phases their saved outgoing weights
  back in while undoing the rescale.

Fades and ramps change weights a little at every step (``step``), in the parameters' own storage,
so the optimizer and the trainer see nothing unusual. They are exact where every path out of a
group goes through its consumers' weights (MLP hidden units; not a residual or a concat output).

Dim letters: C channels of a group.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from amgp_fx.activations import ConsumerInput
from amgp_fx.bias_fold import add_to_biases_, fold_change, mean_outputs, sum_folds
from amgp_fx.groups.analyze import DependencyGraph
from amgp_fx.groups.model import Group, Role
from amgp_fx.gradmax import GradientProbe, gradmax_incoming_, record_linear_gradients
from amgp_fx.importance import channel_energy
from amgp_fx.net2wider import split_grow_
from amgp_fx.rescale import consumer_scales, member_slices
from amgp_fx.schedule import AmgpConfig, GrowInit, Method, PruneScope
from amgp_fx.segments import group_segments, keep_channels, resolve_policy
from amgp_fx.surgery import SurgeryRecord, grow_, optimizer_list, shrink_

__all__ = ["SwitchPolicy", "plan_keep", "round_width", "removed_overlap"]


# -- how many channels, which channels ------------------------------------------------------------
def round_width(raw: float, full: int, multiple: int) -> int:
    """``raw`` channels rounded half-up to a multiple of ``multiple`` within [multiple, full];
    whole channels within [1, full] when ``full <= multiple``.

    Example:
        >>> round_width(512 * 0.5, 512, 8), round_width(100 * 0.5, 100, 8), round_width(6 * 0.5, 6, 8)
        (256, 48, 3)
    """
    if full <= multiple:
        return min(full, max(1, math.floor(raw + 0.5)))
    return min(full, max(multiple, multiple * math.floor(raw / multiple + 0.5)))


def _names(group: Group) -> tuple[str, ...]:
    return (group.id, group.name, *group.parameters)


def target_sizes(groups: Sequence[Group], config: AmgpConfig, amount: float,
                 scores: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Kept channels per group for ``amount`` of the configured pruning (never above the present size)."""
    if config.scope is not PruneScope.GLOBAL:
        return {g.id: min(g.size, round_width(g.full_size * (1 - amount * config.ratio_for(_names(g))),
                                              g.full_size, config.round_to)) for g in groups}
    # one ranking over every chosen channel; scores normalised by their group's mean so that
    # groups with large fan-in do not win by scale alone
    floor = {g.id: min(g.size, max(1, math.ceil(g.full_size * (1 - config.max_layer_ratio)))) for g in groups}
    budget = round(sum(g.full_size for g in groups) * (1 - amount * config.ratio))
    entries = []
    for g in groups:
        values = scores[g.id].double()
        mean = float(values.mean()) if values.numel() else 0.0
        normal = values / mean if mean > 0 else torch.zeros_like(values)
        ranked = torch.sort(normal, descending=True, stable=True).values.tolist()
        entries += [(value, g.id) for value in ranked[floor[g.id]:]]
    kept = dict(floor)
    spare = max(0, budget - sum(floor.values()))
    for _, group_id in sorted(entries, key=lambda e: -e[0])[:spare]:
        kept[group_id] += 1
    return {g.id: min(g.size, max(floor[g.id] if g.full_size <= config.round_to else 1,
                                  round_width(kept[g.id], g.full_size, config.round_to))) for g in groups}


def plan_keep(graph: DependencyGraph, groups: Sequence[Group], config: AmgpConfig, amount: float,
              scores: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
    """Positions (among present channels, ascending) to keep in each group that loses channels.

    Args:
        groups: from ``amgp.select_groups``.
        amount: share of the configured pruning (``Phase.amount``), in [0, 1].
        scores: group id -> importance of its present channels, shape (size,).
    Returns:
        group id -> kept positions, shape (K,) with 1 <= K < size; groups that keep all are left out.
    """
    sizes = target_sizes(groups, config, amount, scores)
    keep = {}
    for g in groups:
        if sizes[g.id] < g.size:
            kept = _keep_per_segment(g, scores[g.id], sizes[g.id])
            if len(kept) < g.size:
                keep[g.id] = kept
    return keep


def _keep_per_segment(group: Group, scores: torch.Tensor, width: int) -> list[int]:
    """The ``width`` best present positions, spread over the group's segments as one-shot pruning
    spreads them (``segments``: the same share of every embedding table or tower feeding a ``cat``,
    never a whole one removed), so an AMGP phase narrows layers and never drops a feature."""
    segments = group_segments(group)
    if len(segments) == 1 and group.kind != "embedding":
        return sorted(torch.sort(scores, descending=True, stable=True).indices[:width].tolist())
    present = np.flatnonzero(group.alive)
    position = np.full(group.full_size, -1, dtype=np.int64)
    position[present] = np.arange(len(present))
    parts = [position[s.channels][position[s.channels] >= 0] for s in segments]
    parts = [part for part in parts if len(part)]
    return keep_channels(scores, width, parts, resolve_policy("auto", group, segments))


def removed_overlap(previous: np.ndarray, current: np.ndarray) -> float:
    """Jaccard overlap of two sets of removed channels (1.0: the same units sat out again)."""
    union = np.union1d(previous, current).size
    return float(np.intersect1d(previous, current).size / union) if union else 1.0


def _ranks01(values: torch.Tensor) -> torch.Tensor:
    """Ranks of ``values`` scaled into [0, 1): an order that adds to integer priorities without ties."""
    order = torch.argsort(torch.argsort(values.double(), stable=True), stable=True)
    return order.double() / max(1, values.numel())


# -- weight edits on a group's outgoing slices ---------------------------------------------------------
@torch.no_grad()
def _scale_outgoing_(graph: DependencyGraph, group: Group, channels: np.ndarray, factor: float, *,
                     normalized: bool) -> None:
    """Multiply the outgoing weights of ``channels`` (full-size ids, present now) by ``factor``."""
    wanted = torch.from_numpy(np.asarray(channels, dtype=np.int64))
    for tensor, dim, index, channel in member_slices(graph, group, Role.CONSUMER, normalized=normalized):
        chosen = index[torch.isin(channel, wanted)].to(tensor.device)
        if chosen.numel():
            tensor.index_copy_(dim, chosen, tensor.index_select(dim, chosen) * factor)


@torch.no_grad()
def _take_outgoing(graph: DependencyGraph, group: Group, channels: np.ndarray) -> list[torch.Tensor]:
    """The outgoing slices of ``channels`` (every consumer, normalized or not), in member order."""
    wanted = torch.from_numpy(np.asarray(channels, dtype=np.int64))
    taken = []
    for tensor, dim, index, channel in member_slices(graph, group, Role.CONSUMER, normalized=True):
        chosen = index[torch.isin(channel, wanted)].to(tensor.device)
        taken.append(tensor.index_select(dim, chosen).clone())
    return taken


@torch.no_grad()
def _add_outgoing_(graph: DependencyGraph, group: Group, channels: np.ndarray, values: Sequence[torch.Tensor],
                   weight: float) -> None:
    """Add ``weight`` x ``values`` (from ``_take_outgoing``) to the outgoing slices of ``channels``."""
    wanted = torch.from_numpy(np.asarray(channels, dtype=np.int64))
    slices = member_slices(graph, group, Role.CONSUMER, normalized=True)
    for (tensor, dim, index, channel), value in zip(slices, values):
        chosen = index[torch.isin(channel, wanted)].to(tensor.device)
        if chosen.numel():
            tensor.index_add_(dim, chosen, value.to(tensor.device, tensor.dtype) * weight)


# -- fades and ramps in progress ---------------------------------------------------------------------
@dataclasses.dataclass
class _Fade:
    """Units fading out before a shrink: outgoing x (1 - t/n), the kept ones' rescale x (1 + (s-1) t/n)."""

    keep: dict[str, list[int]]  # shrink_'s plan (positions among the channels present at the fade's start)
    removed: dict[str, np.ndarray]  # full-size ids of the fading channels, per group
    kept: dict[str, np.ndarray]
    scales: dict[str, float]  # the rescale the kept units reach
    outgoing: dict[str, list[torch.Tensor]]  # the fading units' outgoing weights when the fade began
    length: int
    done: int = 0
    stats: dict[str, ConsumerInput] | None = None  # with fold_bias: the consumers' inputs when the fade began
    folded: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # bias fold so far


@dataclasses.dataclass
class _Ramp:
    """Regrown units after a function-preserving growth: saved outgoing weights added back in
    ``length`` equal parts while the kept units' rescale is divided out."""

    regrown: dict[str, np.ndarray]
    kept: dict[str, np.ndarray]
    targets: dict[str, list[torch.Tensor]]
    scales: dict[str, float]  # the rescale the kept units carry at the growth
    length: int
    done: int = 0
    folds: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # bias fold taken out in equal parts


class SwitchPolicy:
    """Selection, shrinks and growths of one AMGP run, with their fades and ramps.

    Args:
        graph, groups: the analysed model and the groups AMGP prunes.
        config: the run's ``AmgpConfig`` (selection, rescale, fades, growth options).
    """

    def __init__(self, graph: DependencyGraph, groups: Sequence[Group], config: AmgpConfig) -> None:
        self.graph, self.groups, self.config = graph, list(groups), config
        self.out_count = {g.id: np.zeros(g.full_size, dtype=np.int64) for g in self.groups}  # cycles sat out
        self.first_removed: dict[str, np.ndarray] = {}
        self.last_removed: dict[str, np.ndarray] = {}
        self.cycle = 0  # shrinks from full size so far (rotate's window)
        self.fade: _Fade | None = None
        self.ramp: _Ramp | None = None
        self.scales: dict[str, float] = {}  # the kept units' rescale while pruned
        self.kept: dict[str, np.ndarray] = {}  # the channels the shrink in effect kept (full-size ids)
        self.faded_outgoing: dict[str, list[torch.Tensor]] = {}  # what a fade zeroed, given back at growth
        self.folds: dict[str, torch.Tensor] = {}  # bias FQN -> what the shrink in effect folded into it
        self.gradmax_groups: list[str] = []  # the groups the last gradmax growth re-aimed

    # -- selection ---------------------------------------------------------------------------
    def choose(self, scores: Mapping[str, torch.Tensor], amount: float) -> dict[str, list[int]]:
        """The keep plan for a shrink of ``amount``, from importance ``scores`` and the selection policy."""
        policy = self.config.selection
        at_full = all(g.size == g.full_size for g in self.groups)
        if policy == "score" or not at_full or self.config.schedule.method is not Method.AMGP:
            return plan_keep(self.graph, self.groups, self.config, amount, scores)
        sizes = target_sizes(self.groups, self.config, amount, scores)
        adjusted = {}
        for index, g in enumerate(self.groups):
            rank = _ranks01(scores[g.id])
            if policy == "sticky" and g.id in self.first_removed:
                keep_bonus = torch.ones(g.full_size, dtype=torch.float64)
                keep_bonus[torch.from_numpy(self.first_removed[g.id])] = 0.0
                adjusted[g.id] = keep_bonus + rank
            elif policy == "rotate":
                seed = self.config.seed * 1_000_003 + index  # one fixed order per group for the whole run
                order = torch.randperm(g.full_size, generator=torch.Generator().manual_seed(seed))
                removed = g.full_size - sizes[g.id]
                start = (self.cycle * removed) % g.full_size
                window = order[(torch.arange(removed) + start) % g.full_size]
                bonus = torch.ones(g.full_size, dtype=torch.float64)
                bonus[window] = 0.0
                adjusted[g.id] = bonus + rank
            elif policy == "balanced":
                adjusted[g.id] = torch.from_numpy(self.out_count[g.id]).double() + rank
            else:
                adjusted[g.id] = rank
        return plan_keep(self.graph, self.groups, self.config, amount, adjusted)

    def _removed_channels(self, keep: Mapping[str, Sequence[int]]) -> tuple[dict, dict]:
        removed, kept = {}, {}
        for group_id, positions in keep.items():
            present = np.nonzero(self.graph.group(group_id).alive)[0]
            mask = np.zeros(len(present), dtype=bool)
            mask[np.asarray(positions, dtype=np.int64)] = True
            removed[group_id], kept[group_id] = present[~mask], present[mask]
        return removed, kept

    # -- shrink ------------------------------------------------------------------------------
    def _needs_stats(self, stats, what: str) -> None:
        if self.config.fold_bias and stats is None:
            raise ValueError(f"fold_bias folds the removed units' mean output into the consumers' biases: {what} needs "
                             "stats=amgp_fx.activations.consumer_inputs(graph, inputs) of a batch of real inputs")

    def _scales(self, keep: Mapping[str, Sequence[int]], stats: Mapping[str, ConsumerInput] | None) -> dict:
        """The rescale of each group's kept units; from the measured energies where ``stats`` are given."""
        if not self.config.rescale:
            return {}
        energies = None
        if stats is not None:
            centered = self.config.fold_bias  # the fold gives back the mean: only the fluctuation is lost
            energies = {k: channel_energy(self.graph, self.graph.group(k), stats, centered) for k in keep}
        return consumer_scales(self.graph, keep, energies)

    def _mean_outputs(self, channels: Mapping[str, np.ndarray],
                      stats: Mapping[str, ConsumerInput]) -> dict[str, torch.Tensor]:
        return sum_folds([mean_outputs(self.graph, self.graph.group(k), v, stats) for k, v in channels.items()])

    def begin_fade(self, keep: dict[str, list[int]], length: int,
                   stats: dict[str, ConsumerInput] | None = None) -> None:
        """Start fading out the channels ``keep`` leaves out, over ``length`` steps before the shrink;
        with ``fold_bias``, ``stats`` (``consumer_inputs`` now) gives the means each step folds."""
        self._needs_stats(stats, "begin_fade")
        removed, kept = self._removed_channels(keep)
        scales = self._scales(keep, stats)
        outgoing = {k: _take_outgoing(self.graph, self.graph.group(k), v) for k, v in removed.items()}
        self.fade = _Fade(keep, removed, kept, scales, outgoing, max(1, int(length)),
                          stats=dict(stats) if self.config.fold_bias else None)

    def shrink(self, keep: dict[str, list[int]], optimizers, saved_device=None,
               stats: dict[str, ConsumerInput] | None = None) -> tuple[SurgeryRecord, dict]:
        """Remove the channels ``keep`` leaves out; returns (record, diagnostics).

        The kept units' rescale multiplies their whole outgoing slices before the removal (so the
        saved slices carry it too, and a growth divides it out of everything alike). After a
        finished fade the removed units' outgoing weights are zero and the kept ones carry the
        rescale already, so the removal changes nothing. With ``fold_bias`` (and no fade, which
        folds as it goes) the change of every consumer's mean output is added to its bias before the
        removal, from ``stats`` (``consumer_inputs`` of the model now)."""
        fade, self.fade = self.fade, None
        if fade is not None:
            while fade.done < fade.length:  # a shrink that came early finishes its fade at once
                self._fade_step(fade)
            keep, scales = fade.keep, fade.scales
        else:
            self._needs_stats(stats, "a shrink")
            scales = self._scales(keep, stats)
        removed, kept = self._removed_channels(keep)
        folds = fade.folded if fade is not None else {}
        if fade is None:
            before = self._mean_outputs({k: np.union1d(removed[k], kept[k]) for k in keep}, stats) \
                if self.config.fold_bias else {}
            for group_id, factor in scales.items():
                if factor != 1.0:
                    _scale_outgoing_(self.graph, self.graph.group(group_id), kept[group_id], factor, normalized=False)
            if self.config.fold_bias:  # before the removal: the removed rows of a shrinking bias keep their fold
                folds = add_to_biases_(self.graph, fold_change(before, self._mean_outputs(kept, stats)))
        at_full = all(g.size == g.full_size for g in self.groups)
        record = shrink_(self.graph, keep, optimizers, saved_device=saved_device)
        self.scales, self.kept, self.folds = scales, kept, folds
        self.faded_outgoing = fade.outgoing if fade is not None else {}
        overlaps = [removed_overlap(self.last_removed[k], v) for k, v in removed.items() if k in self.last_removed]
        for group_id, channels in removed.items():
            self.out_count[group_id][channels] += 1
            self.first_removed.setdefault(group_id, channels)
        self.last_removed = removed
        self.cycle += int(at_full)
        return record, {"overlap": float(np.mean(overlaps)) if overlaps else None, "faded": fade is not None}

    # -- growth ------------------------------------------------------------------------------
    def grow(self, record: SurgeryRecord, optimizers, generator: torch.Generator | None = None,
             probe: GradientProbe | None = None, reduce=None) -> None:
        """Bring ``record``'s channels back, as the config says (see the module docstring); ``probe``
        (inputs, loss function) is the batch a ``gradmax`` growth measures its gradients on, ``reduce``
        averages them over data-parallel ranks."""
        config = self.config
        self.ramp = None
        before = {g.id: g.alive.copy() for g in self.groups}
        split = config.grow_init is GrowInit.SPLIT
        gradmax = config.grow_init is GrowInit.GRADMAX
        if gradmax and probe is None:
            raise ValueError("grow_init='gradmax' measures gradients on a batch: pass probe=(inputs, loss function)")
        init = "fresh" if split else "restore" if gradmax else config.grow_init.value  # gradmax: restore, then re-aim
        grow_(self.graph, record, optimizers, init=init,
              optimizer_state=config.optimizer_state.value,
              generator=torch.Generator().manual_seed(0) if split else generator)  # split overwrites the values
        regrown = {g.id: np.nonzero(g.alive & ~before[g.id])[0] for g in self.groups}
        if split:  # copies of kept units sharing their outgoing weights: the function is unchanged
            generator = generator or torch.Generator().manual_seed(config.seed)
            for g in self.groups:
                if regrown[g.id].size:
                    split_grow_(self.graph, g, np.nonzero(before[g.id])[0], regrown[g.id],
                                optimizer_list(optimizers), generator)
            self._forget()
            return
        restore = config.grow_init is GrowInit.RESTORE
        faded = self.faded_outgoing if restore else {}  # restored units come back as they were before their fade
        if not config.preserve_growth:
            if restore:  # the kept units back to the scale the restored ones had, the biases without the fold
                self._unscale_kept(1.0)
                add_to_biases_(self.graph, self.folds, -1.0)
                for group_id, values in faded.items():
                    _add_outgoing_(self.graph, self.graph.group(group_id), regrown[group_id], values, 1.0)
            self._forget()
            return
        targets = {}
        for g in self.groups:
            if regrown[g.id].size:
                if config.grow_ramp_steps:
                    targets[g.id] = faded.get(g.id) or _take_outgoing(self.graph, g, regrown[g.id])
                _scale_outgoing_(self.graph, g, regrown[g.id], 0.0, normalized=True)
        if gradmax:  # the regrown units' outgoing weights are zero now: the gradients do not see them
            self.gradmax_groups = []
            for g in self.groups:  # one group at a time: a later layer's inputs see an earlier one's new aim
                if regrown[g.id].size and gradmax_incoming_(self.graph, g, regrown[g.id],
                                                            record_linear_gradients(self.graph, probe), reduce):
                    self.gradmax_groups.append(g.id)
        if config.grow_ramp_steps:
            self.ramp = _Ramp(regrown, dict(self.kept), targets, dict(self.scales), config.grow_ramp_steps,
                              folds=dict(self.folds))
            self._forget()

    def _unscale_kept(self, share: float) -> None:
        """Divide ``share`` of the kept units' rescale out of their outgoing weights (1.0: all of it)."""
        for group_id, factor in self.scales.items():
            if factor != 1.0:
                _scale_outgoing_(self.graph, self.graph.group(group_id), self.kept[group_id],
                                 factor ** -share, normalized=False)

    def _forget(self) -> None:
        self.scales, self.kept, self.faded_outgoing, self.folds = {}, {}, {}, {}

    # -- per step ------------------------------------------------------------------------------
    def step(self) -> None:
        """Advance a fade or a ramp in progress by one step (call before the step's forward)."""
        if self.fade is not None and self.fade.done < self.fade.length:
            self._fade_step(self.fade)
        if self.ramp is not None:
            self._ramp_step(self.ramp)
            if self.ramp.done >= self.ramp.length:
                self.ramp = None

    @property
    def busy(self) -> bool:
        """A fade or a ramp is in progress."""
        return self.fade is not None or self.ramp is not None

    def _fade_step(self, fade: _Fade) -> None:
        t, n = fade.done, fade.length
        present = {k: np.union1d(fade.removed[k], fade.kept[k]) for k in fade.removed}
        before = self._mean_outputs(present, fade.stats) if fade.stats is not None else {}
        out_factor = (1 - (t + 1) / n) / (1 - t / n)  # exactly 0 at the last step
        for group_id, channels in fade.removed.items():
            _scale_outgoing_(self.graph, self.graph.group(group_id), channels, out_factor, normalized=True)
        for group_id, scale in fade.scales.items():
            level = lambda k: 1 + (scale - 1) * k / n  # noqa: E731
            _scale_outgoing_(self.graph, self.graph.group(group_id), fade.kept[group_id],
                             level(t + 1) / level(t), normalized=False)
        if fade.stats is not None:
            step = add_to_biases_(self.graph, fold_change(before, self._mean_outputs(present, fade.stats)))
            fade.folded = sum_folds([fade.folded, step])
        fade.done += 1

    def _ramp_step(self, ramp: _Ramp) -> None:
        t, n = ramp.done, ramp.length
        for group_id, values in ramp.targets.items():
            _add_outgoing_(self.graph, self.graph.group(group_id), ramp.regrown[group_id], values, 1.0 / n)
        for group_id, scale in ramp.scales.items():
            if scale == 1.0:
                continue
            level = lambda k: 1 + (1 / scale - 1) * k / n  # noqa: E731 - from x1 to x(1/s) of today's weights
            _scale_outgoing_(self.graph, self.graph.group(group_id), ramp.kept[group_id],
                             level(t + 1) / level(t), normalized=False)
        add_to_biases_(self.graph, ramp.folds, -1.0 / n)
        ramp.done += 1

    # -- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        def plain(d):
            return {k: np.asarray(v).tolist() for k, v in d.items()}

        def cpu(d):
            return {k: [t.cpu() for t in v] for k, v in d.items()}

        def cpu_one(d):
            return {k: t.cpu() for k, t in d.items()}

        fade = None if self.fade is None else {
            "keep": self.fade.keep, "removed": plain(self.fade.removed), "kept": plain(self.fade.kept),
            "scales": self.fade.scales, "outgoing": cpu(self.fade.outgoing), "length": self.fade.length,
            "done": self.fade.done, "folded": cpu_one(self.fade.folded),
            "stats": None if self.fade.stats is None else {k: v.to_state() for k, v in self.fade.stats.items()}}
        ramp = None if self.ramp is None else {
            "regrown": plain(self.ramp.regrown), "kept": plain(self.ramp.kept),
            "targets": cpu(self.ramp.targets),
            "scales": self.ramp.scales, "length": self.ramp.length, "done": self.ramp.done,
            "folds": cpu_one(self.ramp.folds)}
        return {"out_count": plain(self.out_count), "first_removed": plain(self.first_removed),
                "last_removed": plain(self.last_removed), "cycle": self.cycle, "scales": dict(self.scales),
                "kept": plain(self.kept), "faded_outgoing": cpu(self.faded_outgoing), "folds": cpu_one(self.folds),
                "fade": fade, "ramp": ramp}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        def arrays(d):
            return {k: np.asarray(v, dtype=np.int64) for k, v in d.items()}

        self.out_count = {k: np.asarray(v, dtype=np.int64) for k, v in state["out_count"].items()}
        self.first_removed, self.last_removed = arrays(state["first_removed"]), arrays(state["last_removed"])
        self.cycle, self.scales = int(state["cycle"]), {k: float(v) for k, v in state["scales"].items()}
        self.kept = arrays(state.get("kept", {}))
        self.faded_outgoing = {k: list(v) for k, v in state.get("faded_outgoing", {}).items()}
        self.folds = dict(state.get("folds", {}))
        fade, ramp = state.get("fade"), state.get("ramp")
        stats = None if fade is None or fade.get("stats") is None else {
            k: ConsumerInput.from_state(v) for k, v in fade["stats"].items()}
        self.fade = None if fade is None else _Fade(
            {k: list(v) for k, v in fade["keep"].items()}, arrays(fade["removed"]), arrays(fade["kept"]),
            dict(fade["scales"]), {k: list(v) for k, v in fade["outgoing"].items()}, int(fade["length"]),
            int(fade["done"]), stats, dict(fade.get("folded", {})))
        self.ramp = None if ramp is None else _Ramp(
            arrays(ramp["regrown"]), arrays(ramp["kept"]), {k: list(v) for k, v in ramp["targets"].items()},
            dict(ramp["scales"]), int(ramp["length"]), int(ramp["done"]), dict(ramp.get("folds", {})))

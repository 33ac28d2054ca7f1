"""The AMGP training hook: shrink at the start of each pruned phase, grow back after it.

Plug it into ``amgp_fx.train.train`` (``hooks=[hook], forward=hook.forward``): the trainer
steps the eager model's parameters, which the graph module shares, while ``hook.forward`` runs the
graph module (the only one that runs pruned) in the eager model's train/eval mode. At every phase
boundary of ``AmgpConfig.schedule`` it re-scores importance, picks the channels to keep in each
chosen group (``plan_keep``), and shrinks the model, its gradients and its optimizer state in
place (``amgp_fx.shrink_``); when the pruned phase ends it grows the removed units back
(``amgp_fx.grow_``, saved or fresh values, saved or zero optimizer state). The same hook runs the
baselines: ``method="dense"`` (accounting only) and ``method="prune_only"`` (gradual pruning to
the compact model, no growth); a small dense model is a dense run of a narrower model whose width
comes from ``flops.width_scale_for_flops``.

Accounting, written to the metrics log as JSON lines (``kind`` = ``amgp_surgery``,
``amgp_phase``, ``amgp_summary``): training FLOPs per step (``flops.count_training_flops`` on the
graph as it runs, at the step's batch size) summed per phase and over the run; wall-clock per phase
(``cuda.synchronize`` at the boundaries on a GPU; it includes surgery and anything the training
loop does in between, such as evaluation, but not the FLOPs counting itself); peak memory per
phase (CUDA allocator peak; on the CPU the process's peak resident set).

Data: the ``activation`` criterion and ``fold_bias`` measure what each consumer op sees
(``amgp_fx.activations.consumer_inputs``) on the inputs of the step at whose start the switch
happens: the training batch the trainer hands the hooks (``ctx.batch``; the held-out ``probe`` only
when there is none, as in a direct call), turned into the model's inputs as ``forward`` does. A
training batch, not the probe, so that held-out rows never steer training; in a multi-process run
the statistics are averaged over the ranks, so that every rank folds the same biases.

Resume: ``state_dict`` holds the keep plans in effect and the removed slices (values and optimizer
state) of the current shrink; ``load_state_dict`` re-shrinks the freshly built full-size model with
them before the trainer loads the model and optimizer state, so a run resumed inside a pruned phase
continues exactly as the uninterrupted one.

Dim letters: B batch, H hidden width.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import logging
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from amgp_fx.activations import ConsumerInput, consumer_inputs
from amgp_fx.flops import TrainingFlops, count_training_flops, graph_step_flops
from amgp_fx.groups.analyze import DependencyGraph
from amgp_fx.groups.model import Group
from amgp_fx.importance import DATA_CRITERIA, score
from amgp_fx.lr_schedule import BASE_LR_KEY, LR_SCALE_KEY
from amgp_fx.schedule import AmgpConfig, AmgpSchedule, FinalState, GrowInit, Method, Phase, PruneScope
from amgp_fx.surgery import SurgeryRecord, optimizer_list, shrink_
from amgp_fx.switch import SwitchPolicy, plan_keep, round_width, target_sizes

log = logging.getLogger(__name__)

__all__ = ["AmgpError", "AmgpHook", "select_groups", "plan_keep", "round_width", "dense_config",
           "predict_train_flops", "match_prune_only"]

STATE_VERSION = 1


class AmgpError(ValueError):
    """An AMGP request that cannot run on this model; the message names the group and why."""


# -- which groups, how many channels, which channels -----------------------------------------------
def select_groups(graph: DependencyGraph, groups: Sequence[str] = (),
                  kinds: Sequence[str] = ("hidden",)) -> list[Group]:
    """The groups AMGP prunes.

    Args:
        groups: ids ("g3"), names ("top_mlp.0.0.weight[0]") or fnmatch patterns ("top_mlp.*",
            matched against ids, names and the groups' parameter FQNs). An exact id or name selects
            that group whatever its kind; a pattern selects the prunable groups of ``kinds`` it matches.
            Empty: every prunable group of ``kinds``.
        kinds: group kinds ("hidden", "embedding", "heads", ...).
    Returns:
        The chosen groups, in the analysis' order.
    Raises:
        AmgpError: an unknown name, a group that cannot be pruned (with the analysis' reason), or
            no prunable group at all.
    """
    if not groups:
        chosen = graph.prunable_groups(tuple(kinds))
        if not chosen:
            raise AmgpError(f"the model has no prunable group of kind {', '.join(kinds)}; the analysis says why "
                            f"per group ({len(graph.groups)} groups, kinds: "
                            f"{', '.join(sorted({g.kind for g in graph.groups}))})")
        return chosen
    picked: list[Group] = []
    for key in groups:
        exact = [g for g in graph.groups if key in (g.id, g.name)]
        if exact:
            usable = [g for g in exact if g.prunable]
            if not usable:
                g = exact[0]
                raise AmgpError(f"group {g.id} ({g.name}, {g.kind}) cannot be pruned: {g.reason}")
        else:
            matches = [g for g in graph.groups
                       if any(fnmatch.fnmatchcase(n, key) for n in (g.id, g.name, *g.parameters))]
            if not matches:
                raise AmgpError(f"no group matches {key!r}; groups: "
                                + ", ".join(f"{g.id} ({g.name})" for g in graph.groups))
            usable = [g for g in matches if g.prunable and g.kind in kinds]
            if not usable:
                reasons = "; ".join(f"{g.id} ({g.name}, {g.kind}): {g.reason or 'kind not in ' + str(tuple(kinds))}"
                                    for g in matches)
                raise AmgpError(f"no group matching {key!r} can be pruned: {reasons}")
        picked += [g for g in usable if g not in picked]
    return [g for g in graph.groups if g in picked]


def dense_config(total_steps: int) -> AmgpConfig:
    """The dense baseline: the hook only accounts FLOPs, wall-clock and memory."""
    return AmgpConfig(AmgpSchedule(total_steps, 0, 0, 0, 0, Method.DENSE), ratio=0.0)


def predict_train_flops(graph: DependencyGraph, config: AmgpConfig, *, batch_size: int, optimizers=None,
                        _cache: dict | None = None) -> int:
    """Training FLOPs of a whole run of ``config`` on the analysed (full-size) model, before running it.

    Each phase costs its length times the step FLOPs at the widths its ``amount`` gives
    (``graph_step_flops``: nothing is changed). Exact for scopes "group" and "layer"; for
    "global" the widths depend on the scores, and the uniform widths of ``ratio`` are used.
    """
    groups = select_groups(graph, config.groups, config.kinds) if config.schedule.method is not Method.DENSE else []
    uniform = dataclasses.replace(config, scope=PruneScope.GROUP) if config.scope is PruneScope.GLOBAL else config
    cost: dict = {} if _cache is None else _cache
    total = 0
    for phase in config.schedule.phases():
        sizes = target_sizes(groups, uniform, phase.amount, {}) if phase.amount > 0 else {}
        key = tuple(sorted(sizes.items()))
        if key not in cost:
            cost[key] = graph_step_flops(graph, sizes, batch_size=batch_size, optimizers=optimizers).total
        total += phase.length * cost[key]
    return total


def match_prune_only(graph: DependencyGraph, config: AmgpConfig, *, batch_size: int, target_flops: int,
                     ramp_share: float = 0.2, increments: int = 4, optimizers=None) -> AmgpConfig:
    """A prune-only baseline of ``config``'s ratio and groups whose run costs about ``target_flops``:
    dense warm-up, ``increments`` cubic pruning steps over ``ramp_share`` of the run, then the
    compact model; the warm-up length is chosen by bisection (longer warm-up, more FLOPs).

    Returns:
        The prune-only ``AmgpConfig`` whose predicted FLOPs are closest to, and not above,
        ``target_flops`` (warm-up 0 if even that costs more).
    """
    total = config.schedule.total_steps
    cache: dict = {}
    ramp = max(increments, int(round(ramp_share * total)) // increments * increments)

    def build(warmup: int) -> AmgpConfig:
        schedule = AmgpSchedule(total, warmup, increments, ramp // increments, 0, Method.PRUNE_ONLY, FinalState.COMPACT)
        return dataclasses.replace(config, schedule=schedule)

    def cost(warmup: int) -> int:
        return predict_train_flops(graph, build(warmup), batch_size=batch_size, optimizers=optimizers, _cache=cache)

    low, high = (1 if config.criterion == "taylor" else 0), total - ramp  # taylor scores need a warm-up step
    if cost(low) > target_flops:
        return build(low)
    while high - low > 1:
        middle = (low + high) // 2
        fits = cost(middle) <= target_flops
        low, high = (middle, high) if fits else (low, middle)
    return build(low)


# -- the hook ----------------------------------------------------------------------------------------
class AmgpHook:
    """Training hook that alternates between the full-size and the pruned model.

    Args:
        graph: ``amgp_fx.analyze(model, example_inputs)`` of the model being trained; train
            ``hook.forward`` (the graph's module), not the eager model, which cannot run pruned.
        config: ``AmgpConfig`` (schedule and pruning policy).
        label: name of the run in its log records (default: the method).
        log_every: write an ``amgp_step`` record every N steps (0: none).
        plan_sync: maps the keep plan this process computed to the one to apply; default: rank
            0's plan on every rank of an initialised multi-process group
            (``amgp_fx.distributed.broadcast_plan``), the plan itself otherwise.
        saved_device: where the removed units wait until they grow back: ``None`` (default) on
            the parameters' own device, so a shrink copies nothing to the host (a DLRM-industrial
            shrink removes 281 MB of values and Adam moments); ``"cpu"`` to hold no accelerator
            memory for them.
        probe: a small held-out ``Batch`` (a few thousand rows): its loss just before and just
            after every shrink and growth goes into the surgery records (``loss_before``,
            ``loss_after``: the switch's jump), and at the end of every fade and ramp.
    Raises:
        AmgpError: a requested group cannot be pruned (raised here, before training starts).

    Example:
        >>> import torch, amgp_fx
        >>> from amgp_fx.schedule import AmgpConfig, AmgpSchedule
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
        >>> graph = amgp_fx.analyze(model, (torch.randn(4, 8),))
        >>> hook = AmgpHook(graph, AmgpConfig(AmgpSchedule(10, warmup_steps=2, cycles=1, pruned_steps=4)))
        >>> [g.size for g in hook.groups]
        [64]
    """

    def __init__(self, graph: DependencyGraph, config: AmgpConfig, *, label: str | None = None,
                 log_every: int = 0, plan_sync: Callable[[dict[str, list[int]]], dict[str, list[int]]] | None = None,
                 saved_device: torch.device | str | None = None, probe=None) -> None:
        if not isinstance(config, AmgpConfig):
            raise TypeError(f"config must be an AmgpConfig, got {type(config).__name__}")
        self.graph = graph
        self.config = config
        self.schedule = config.schedule
        self.label = label or config.schedule.method.value
        self.log_every = log_every
        self.plan_sync = plan_sync
        self.saved_device = saved_device
        pruning = config.schedule.method is not Method.DENSE
        self.groups: list[Group] = select_groups(graph, config.groups, config.kinds) if pruning else []
        self.switch = SwitchPolicy(graph, self.groups, config)  # how shrinks and growths happen
        self.probe = probe
        self._plan = -1
        self._keeps: list[dict[str, list[int]]] = []  # shrinks in effect, in order
        self._record: SurgeryRecord | None = None  # of the last shrink (AMGP grows it back)
        self._pending_scores: dict[str, torch.Tensor] | None = None
        self._last_growth_step: int | None = None
        self._phase: Phase | None = None
        self._phase_flops = 0
        self._phase_steps = 0
        self._phase_elapsed = 0.0
        self._phase_t0: float | None = None
        self._total_flops = 0
        self._steps = 0
        self._flops_cache: dict[tuple, TrainingFlops] = {}
        self._accounting_s = 0.0  # seconds of the current phase spent counting FLOPs or evaluating
        self._eval_t0: float | None = None
        self._finished = False
        self.history: list[dict[str, Any]] = []  # one record per finished phase
        self.surgeries: list[dict[str, Any]] = []

    # -- public views ----------------------------------------------------------------------------
    def forward(self, model: torch.nn.Module, batch) -> torch.Tensor:
        """``train``'s forward: the graph module (whose size literals follow surgery) on the inputs
        ``batch`` maps to, in ``model``'s train/eval mode. Logits (B,) or (B, T). The mapping
        (:mod:`amgp_fx.batch_inputs`) is ``hook.input_map`` if set (``"PATH=SOURCE; ..."``), else the
        default for the graph's example inputs: ``(batch.dense, batch.sparse)`` for a (dense, sparse)
        model, dense and sparse columns in order for a dict or nested inputs."""
        from amgp_fx.batch_inputs import batch_inputs_for

        module = self.graph.module
        if module.training != model.training:
            module.train(model.training)
        return module(*batch_inputs_for(self, self.graph.traced.args)(batch))

    def sizes(self) -> dict[str, int]:
        """Present channels of each chosen group now."""
        return {g.id: g.size for g in self.groups}

    def width(self) -> float:
        """Present share of the chosen groups' channels (1.0 at full size)."""
        full = sum(g.full_size for g in self.groups)
        return sum(g.size for g in self.groups) / full if full else 1.0

    @property
    def total_flops(self) -> int:
        return self._total_flops

    # -- trainer hooks ---------------------------------------------------------------------------
    def on_train_start(self, ctx) -> None:
        """Check that the run is as long as the schedule, and that the graph sees the model's buffers.

        Raises:
            AmgpError: ``ctx.total_steps`` differs from ``schedule.total_steps``, or the parameters
                are not on the training device.
        """
        total = getattr(ctx, "total_steps", None)
        if total is not None and int(total) != self.schedule.total_steps:
            raise AmgpError(f"the AMGP schedule lasts {self.schedule.total_steps} steps but training runs {total}; "
                            f"build the config for total_steps={total} "
                            f"(e.g. AmgpConfig.from_recipe_name(name, {total}))")
        self._share_buffers(ctx)

    def on_step_start(self, ctx) -> None:
        """At a phase boundary: close the last phase, open the new one, grow and/or shrink; then
        count this step's FLOPs."""
        step = int(ctx.step)
        phase = self.schedule.phase_at(step)
        if self._phase is None or phase.start != self._phase.start:
            if self._phase is not None:
                self._close_phase(ctx, step)
            self._open_phase(ctx, phase)
            if phase.plan != self._plan:
                self._switch(ctx, phase)
        elif self._phase_t0 is None:  # resumed inside this phase
            self._phase_t0 = self._now(ctx)
        self._maybe_begin_fade(ctx, step, phase)
        self._scale_learning_rate(ctx, phase, step)
        flops = self.step_flops(ctx)
        self._phase_flops += flops.total
        self._total_flops += flops.total
        self._phase_steps += 1
        self._steps += 1
        if self.log_every and step % self.log_every == 0:
            self._log(ctx, {"kind": "amgp_step", "step": step, "phase": phase.name, "cycle": phase.cycle,
                            "width": self.width(), "flops_step": flops.total, "flops_total": self._total_flops})

    def on_step_end(self, ctx) -> None:
        """Advance a fade or ramp in progress; score with this step's gradients before a ``taylor``
        prune; finish after the last step."""
        step = int(ctx.step) - 1  # the trainer counts completed steps here
        if self.switch.busy:  # after the optimizer's update: a fade's last step leaves exact zeros for the shrink
            ending = self.switch.ramp is not None and self.switch.ramp.done + 1 >= self.switch.ramp.length
            self.switch.step()
            if ending:
                self._log(ctx, {"kind": "amgp_ramp_end", "step": step + 1, "probe_loss": self._probe_loss(ctx)})
        following = self.schedule.phase_at(step + 1) if step + 1 < self.schedule.total_steps else None
        if (self.config.criterion == "taylor" and following is not None and following.start == step + 1
                and following.plan >= 0 and following.plan != self._plan):
            self._pending_scores = self._scores(following)  # gradients of this step are still there
        if step + 1 >= self.schedule.total_steps:
            self.on_train_end(ctx)

    def on_eval_start(self, ctx) -> None:
        """Evaluation is not training: its time stays out of the phase's wall-clock, so that runs
        evaluated at different cadences (or methods whose evaluation costs differ) compare fairly."""
        self._eval_t0 = self._now(ctx) if self._phase_t0 is not None else None

    def on_eval_end(self, ctx) -> None:
        if self._eval_t0 is not None:  # evaluation runs between steps: the phase open at its start still is
            self._accounting_s += self._now(ctx) - self._eval_t0
        self._eval_t0 = None

    def on_train_end(self, ctx) -> None:
        """Close the last phase, grow back if the run must end full-size, and log the summary."""
        if self._finished:
            return
        if self._phase is not None:
            self._close_phase(ctx, int(ctx.step))
        if self.schedule.final is FinalState.FULL and self._record is not None:
            self._grow(ctx)
        self._finished = True
        self._log(ctx, {"kind": "amgp_summary", "step": int(ctx.step), **self.summary()})

    # -- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: keep plans in effect, removed slices, accounting."""
        elapsed = self._phase_elapsed - self._accounting_s
        elapsed += time.perf_counter() - self._phase_t0 if self._phase_t0 is not None else 0.0
        return {
            "version": STATE_VERSION, "config": self.config.to_dict(), "plan": self._plan,
            "keeps": [{k: list(v) for k, v in keep.items()} for keep in self._keeps],
            "saved": self._record.saved_state() if self._record is not None else None,
            "switch": self.switch.state_dict(), "last_growth_step": self._last_growth_step,
            "pending_scores": self._pending_scores,
            "phase_start": None if self._phase is None else self._phase.start,
            "phase_flops": self._phase_flops, "phase_steps": self._phase_steps, "phase_elapsed": elapsed,
            "total_flops": self._total_flops, "steps": self._steps, "finished": self._finished,
            "history": list(self.history), "surgeries": list(self.surgeries),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Re-shrink the freshly built full-size model to the saved plans and restore the removed
        slices; call before loading model and optimizer state (``train`` does).

        Raises:
            AmgpError: another config, another state version, or a model that is already pruned.
        """
        if state.get("version") != STATE_VERSION:
            raise AmgpError(f"AMGP state version {state.get('version')!r} is not supported (this code reads "
                            f"{STATE_VERSION})")
        if AmgpConfig.from_dict(state["config"]) != self.config:
            raise AmgpError("the checkpoint was written by another AMGP config; resume with the same config")
        if any(g.size != g.full_size for g in self.groups) or self._keeps:
            raise AmgpError("load_state_dict needs the freshly built full-size model; this one is already pruned")
        record = None
        for keep in state["keeps"]:
            record = shrink_(self.graph, {k: list(v) for k, v in keep.items()})
        self._keeps = [dict(keep) for keep in state["keeps"]]
        self._record = None
        if state["saved"] is not None and record is not None:
            record.load_saved_state_(state["saved"])
            self._record = record
        if "switch" in state:
            self.switch.load_state_dict(state["switch"])
        else:  # a checkpoint from before amgp_fx.switch: only the rescale of the shrink in effect
            self.switch.scales = {k: float(v) for k, v in state.get("scales", {}).items()}
        self._last_growth_step = state.get("last_growth_step")
        self._plan = int(state["plan"])
        self._pending_scores = state.get("pending_scores")
        start = state["phase_start"]
        self._phase = None if start is None else self.schedule.phase_at(int(start))
        self._phase_flops, self._phase_steps = int(state["phase_flops"]), int(state["phase_steps"])
        self._phase_elapsed, self._phase_t0, self._accounting_s = float(state["phase_elapsed"]), None, 0.0
        self._total_flops, self._steps = int(state["total_flops"]), int(state["steps"])
        self._finished = bool(state["finished"])
        self.history, self.surgeries = list(state["history"]), list(state["surgeries"])

    # -- accounting --------------------------------------------------------------------------------
    def step_flops(self, ctx=None, batch_size: int | None = None) -> TrainingFlops:
        """FLOPs of one step of the model as it is now, at the step's batch size (cached per width)."""
        rows = batch_size or _batch_rows(ctx)
        optimizers = _optimizers(ctx)
        key = (tuple(g.size for g in self.graph.groups), rows)
        if key not in self._flops_cache:
            began = time.perf_counter()
            self._flops_cache[key] = count_training_flops(self.graph.module, self.graph.traced.args,
                                                          batch_size=rows, optimizers=optimizers)
            self._accounting_s += time.perf_counter() - began  # not part of the phase's wall-clock
        return self._flops_cache[key]

    def summary(self) -> dict[str, Any]:
        """Run totals and the per-phase records (JSON-ready)."""
        wall = sum(p["wall_clock_s"] for p in self.history)
        return {"label": self.label, "method": self.schedule.method.value, "final": self.schedule.final.value,
                "steps": self._steps, "train_flops": self._total_flops,
                "flops_per_step_mean": self._total_flops / self._steps if self._steps else 0.0,
                "wall_clock_s": wall, "width_final": self.width(), "sizes_final": self.sizes(),
                "phases": list(self.history), "surgeries": list(self.surgeries)}

    # -- internals ---------------------------------------------------------------------------------
    def _needs_data(self) -> bool:
        return self.config.criterion in DATA_CRITERIA or self.config.fold_bias

    def _consumer_inputs(self, ctx) -> dict[str, ConsumerInput]:
        """``consumer_inputs`` of the model now on this step's batch (see the module docstring)."""
        from amgp_fx.batch_inputs import batch_inputs_for
        from amgp_fx.distributed import all_reduce_sum, is_distributed  # torch.distributed only when pruning

        batch = getattr(ctx, "batch", None) if ctx is not None else None
        batch = batch if batch is not None else self.probe
        if batch is None:
            raise AmgpError("the 'activation' criterion and fold_bias measure activations on a batch: the training "
                            "context has no .batch and the hook no probe")
        stats = consumer_inputs(self.graph, batch_inputs_for(self, self.graph.traced.args)(batch.to(_device(ctx))))
        if is_distributed():
            world = torch.distributed.get_world_size()
            stats = {name: dataclasses.replace(s, mean=all_reduce_sum(s.mean.clone()) / world,
                                               mean_square=all_reduce_sum(s.mean_square.clone()) / world)
                     for name, s in stats.items()}
        return stats

    def _scores(self, phase: Phase, stats: dict[str, ConsumerInput] | None = None) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + max(phase.plan, 0))
        scores = score(self.graph, self.config.criterion, groups=self.groups, generator=generator, stats=stats,
                       centered=self.config.fold_bias)
        if self.config.criterion == "taylor" and all(float(s.abs().sum()) == 0 for s in scores.values()):
            raise AmgpError("criterion 'taylor' found no gradients at the phase boundary; the trainer must keep "
                            "the last step's gradients until on_step_end, or use criterion 'l2'")
        return scores

    def _switch(self, ctx, phase: Phase) -> None:
        """Surgery at the first step of ``phase``: grow back and/or shrink to its plan."""
        if self.schedule.method is Method.AMGP and self._record is not None:
            self._grow(ctx)
        if phase.plan >= 0:
            fade = self.switch.fade
            if fade is not None:
                self._pending_scores = None  # the fade chose the units when it began
            stats = self._consumer_inputs(ctx) if fade is None and self._needs_data() else None
            keep = fade.keep if fade is not None else self._synced(self.switch.choose(self._take_scores(phase, stats),
                                                                                       phase.amount))
            start = self._now(ctx)
            before, loss_before = self.sizes(), self._probe_loss(ctx)
            record, details = self.switch.shrink(keep, _optimizers(ctx), saved_device=self.saved_device, stats=stats)
            if self.schedule.method is not Method.AMGP:
                self.switch.scales, self.switch.folds = {}, {}  # prune-only never grows back: nothing to give back
            self._keeps.append(keep)
            self._record = record if self.schedule.method is Method.AMGP else None  # prune-only never grows
            self._log_surgery(ctx, "shrink", before, start, record.nbytes, loss_before, details)
        self._plan = phase.plan

    def _take_scores(self, phase: Phase, stats: dict[str, ConsumerInput] | None = None) -> dict[str, torch.Tensor]:
        scores = self._pending_scores if self._pending_scores is not None else self._scores(phase, stats)
        self._pending_scores = None
        return scores

    def _maybe_begin_fade(self, ctx, step: int, phase: Phase) -> None:
        """With ``fade_steps``: choose the units of the next shrink now and start fading them out,
        so that it completes at the shrink (after any growth ramp of this phase)."""
        fade = self.config.fade_steps
        if not fade or self.switch.fade is not None or phase.pruned or self.schedule.method is Method.DENSE:
            return
        following = self.schedule.phase_at(phase.end) if phase.end < self.schedule.total_steps else None
        if following is None or not following.pruned or following.start != phase.end:
            return
        ramp_end = phase.start + (self.config.grow_ramp_steps if self.config.preserve_growth else 0)
        begin = max(following.start - fade, ramp_end, phase.start)
        if step != begin or begin >= following.start:
            return
        stats = self._consumer_inputs(ctx) if self._needs_data() else None
        keep = self._synced(self.switch.choose(self._scores(following, stats), following.amount))
        self.switch.begin_fade(keep, following.start - begin, stats=stats)
        self._log(ctx, {"kind": "amgp_fade_start", "step": step, "steps": following.start - begin,
                        "probe_loss": self._probe_loss(ctx)})

    def _scale_learning_rate(self, ctx, phase: Phase, step: int) -> None:
        """Dense optimizers at ``pruned_lr_scale`` x their rate while pruned and, with
        ``rewarm_steps``, re-warmed linearly after each growth; sparse (embedding) optimizers are
        left alone. The factor goes to each param group's ``amgp_lr_scale`` (``amgp_fx.lr_schedule``;
        the trainer composes it with its schedule) and into ``lr`` at once, for other loops."""
        config = self.config
        if config.pruned_lr_scale == 1.0 and not config.rewarm_steps:
            return
        factor = config.pruned_lr_scale if phase.pruned else 1.0
        grown = self._last_growth_step
        if config.rewarm_steps and grown is not None and step - grown < config.rewarm_steps:
            factor *= (step - grown + 1) / config.rewarm_steps
        holder = getattr(ctx, "optimizers", None) if ctx is not None else None
        names = getattr(holder, "names", None)
        for index, optimizer in enumerate(_optimizers(ctx)):
            if names is not None and names[index] != "dense":
                continue
            for group in optimizer.param_groups:
                old = group.get(LR_SCALE_KEY, 1.0)
                group.setdefault(BASE_LR_KEY, group["lr"] / old)
                group["lr"] = group["lr"] / old * factor
                group[LR_SCALE_KEY] = factor

    def _synced(self, keep: dict[str, list[int]]) -> dict[str, list[int]]:
        """The plan every rank applies: ranks that pruned different channels would diverge."""
        if self.plan_sync is not None:
            return self.plan_sync(keep)
        from amgp_fx.distributed import broadcast_plan  # torch.distributed only when pruning

        return broadcast_plan(keep)

    def _grow(self, ctx) -> None:
        start = self._now(ctx)
        before, loss_before = self.sizes(), self._probe_loss(ctx)
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + 7919 * (self._plan + 1))
        probe, reduce = self._gradient_probe(ctx) if self.config.grow_init is GrowInit.GRADMAX else (None, None)
        self.switch.grow(self._record, _optimizers(ctx), generator=generator, probe=probe, reduce=reduce)
        self._record = None
        self._keeps = []
        self._plan = -1
        self._last_growth_step = int(ctx.step) if ctx is not None else 0
        self._log_surgery(ctx, "grow", before, start, 0, loss_before, {})

    def _gradient_probe(self, ctx):
        """(inputs, loss function) of this step's batch (else the probe's) for a gradmax growth, and
        the mean over data-parallel ranks, so that every rank aims the regrown units alike."""
        from amgp_fx.batch_inputs import batch_inputs_for
        from amgp_fx.distributed import all_reduce_sum, is_distributed  # torch.distributed only when pruning
        from amgp_fx.train import logits_of

        batch = getattr(ctx, "batch", None) if ctx is not None else None
        batch = batch if batch is not None else self.probe
        if batch is None:
            raise AmgpError("grow_init='gradmax' measures gradients on a batch: the training context has no .batch "
                            "and the hook no probe")
        batch = batch.to(_device(ctx))

        def loss_of(output):
            logits = logits_of(output)
            label = batch.label.reshape(logits.shape).to(logits.dtype)
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, label)

        reduce = None
        if is_distributed():
            world = torch.distributed.get_world_size()
            reduce = lambda t: all_reduce_sum(t.clone()) / world  # noqa: E731
        return (batch_inputs_for(self, self.graph.traced.args)(batch), loss_of), reduce

    @torch.no_grad()
    def _probe_loss(self, ctx) -> float | None:
        """Mean BCE loss of the model as it is now on the probe batch (eval mode), or None."""
        if self.probe is None:
            return None
        module = self.graph.module
        device = _device(ctx)
        if getattr(self, "_probe_device", None) != device:
            self.probe, self._probe_device = self.probe.to(device), device
        was_training = module.training
        module.eval()
        try:
            from amgp_fx.train import logits_of

            logits = logits_of(module(self.probe.dense, self.probe.sparse))
        finally:
            module.train(was_training)
        label = self.probe.label.reshape(logits.shape).to(logits.dtype)
        return float(torch.nn.functional.binary_cross_entropy_with_logits(logits, label))

    def _log_surgery(self, ctx, action: str, before: dict, start: float, nbytes: int, loss_before: float | None,
                     details: Mapping[str, Any]) -> None:
        seconds = self._now(ctx) - start
        record = {"kind": "amgp_surgery", "step": int(ctx.step), "action": action, "sizes_before": before,
                  "sizes_after": self.sizes(), "width": self.width(), "seconds": seconds,
                  "saved_bytes": nbytes, "loss_before": loss_before, "loss_after": self._probe_loss(ctx), **details}
        self.surgeries.append(record)
        self._log(ctx, record)

    def _open_phase(self, ctx, phase: Phase) -> None:
        self._phase = phase
        self._phase_flops = self._phase_steps = 0
        self._phase_elapsed = self._accounting_s = 0.0
        device = _device(ctx)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self._phase_t0 = self._now(ctx)

    def _close_phase(self, ctx, done: int) -> None:
        """Finish the current phase; ``done`` steps of the run are complete."""
        phase = self._phase
        elapsed = self._phase_elapsed + (self._now(ctx) - self._phase_t0 if self._phase_t0 is not None else 0.0)
        elapsed -= self._accounting_s
        device = _device(ctx)
        if device.type == "cuda":
            peak = int(torch.cuda.max_memory_allocated(device))
        else:
            peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        record = {"kind": "amgp_phase", "step": done, "phase": phase.name, "cycle": phase.cycle,
                  "start": phase.start, "end": done, "steps": self._phase_steps, "flops": self._phase_flops,
                  "flops_per_step": self._phase_flops / self._phase_steps if self._phase_steps else 0.0,
                  "wall_clock_s": elapsed, "peak_memory_bytes": peak, "memory_kind": device.type,
                  "width": self.width(), "sizes": self.sizes()}
        self.history.append(record)
        self._log(ctx, record)
        self._phase_t0 = None

    def _now(self, ctx) -> float:
        device = _device(ctx)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def _share_buffers(self, ctx) -> None:
        """Point the graph module at the model's buffers again if ``model.to(device)`` replaced them
        (parameters move in place, buffers are new tensors), so both see one batch-norm state."""
        model = getattr(ctx, "model", None)
        if model is None or model is self.graph.module:
            return
        own = dict(model.named_buffers())
        for name, buffer in list(self.graph.module.named_buffers()):
            if name in own and own[name] is not buffer:
                owner_name, _, leaf = name.rpartition(".")
                owner = self.graph.module.get_submodule(owner_name) if owner_name else self.graph.module
                owner._buffers[leaf] = own[name]
        device = _device(ctx)
        for name, parameter in self.graph.module.named_parameters():
            if not _same_device(parameter.device, device):
                raise AmgpError(f"parameter {name} is on {parameter.device}, training runs on {device}; move the "
                                "model to the device before amgp_fx.analyze")

    def _log(self, ctx, record: dict[str, Any]) -> None:
        record = {**record, "label": self.label}
        logger = getattr(ctx, "logger", None)
        if logger is not None:
            logger.log(record)
        else:
            log.info("%s", record)


def _optimizers(ctx) -> list:
    return optimizer_list(getattr(ctx, "optimizers", None) if ctx is not None else None)


def _device(ctx) -> torch.device:
    device = getattr(ctx, "device", None) if ctx is not None else None
    return torch.device(device) if device is not None else torch.device("cpu")


def _same_device(actual: torch.device, wanted: torch.device) -> bool:
    """``cuda:0`` is ``cuda`` (the current device) for this check."""
    return actual.type == wanted.type and (wanted.index is None or actual.index is None or actual.index == wanted.index)


def _batch_rows(ctx) -> int:
    batch = getattr(ctx, "batch", None)
    if batch is not None:
        rows = getattr(batch, "num_rows", None)
        if rows is not None:
            return int(rows)
    config = getattr(ctx, "config", None)
    if config is not None and getattr(config, "batch_size", None):
        return int(config.batch_size)
    raise AmgpError("cannot tell the batch size of this step: the training context has neither .batch nor "
                    ".config.batch_size")

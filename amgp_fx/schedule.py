"""When AMGP trains the full-size model and when the pruned one: a pure step -> phase function.

No torch import: a schedule can be built, validated, saved and plotted anywhere.

Phases of an AMGP run (``method="amgp"``) of ``total_steps`` steps::

    warmup | pruned 0 | dense 0 | pruned 1 | dense 1 | ... | pruned C-1 | dense C-1 | final
    full     shrunk     full      shrunk     full             shrunk       full        full or compact

Every pruned phase re-scores importance and shrinks the full-size model anew (``Phase.plan`` is a
new number), so different units can go in different cycles; its dense phase grows them back. The
final phase is full-size (``final="full"``, the default) or pruned once more and kept compact
(``final="compact"``). ``method="prune_only"`` prunes gradually instead: ``cycles`` increments of
``pruned_steps`` each, the removed share following the cubic ramp of Zhu & Gupta (2017), then the
compact model trains to the end; it never grows. ``method="dense"`` never prunes.

``Phase.amount`` is the share of the configured pruning in effect (0: full size, 1: the whole
``AmgpConfig.ratio``), so the expected width of a group with ratio r is ``1 - amount * r``.

Example:
    >>> schedule = AmgpSchedule(total_steps=100, warmup_steps=10, cycles=2, pruned_steps=30, dense_steps=10)
    >>> [(p.name, p.start, p.end) for p in schedule.phases()]  # doctest: +NORMALIZE_WHITESPACE
    [('warmup', 0, 10), ('pruned', 10, 40), ('dense', 40, 50), ('pruned', 50, 80), ('dense', 80, 90),
     ('final', 90, 100)]
    >>> schedule.phase_at(45).name, schedule.pruned_share()
    ('dense', 0.6)
"""
from __future__ import annotations

import dataclasses
import enum
import fnmatch
from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = ["SCHEDULE_VERSION", "Method", "FinalState", "PruneScope", "GrowInit", "OptimizerStatePolicy",
           "Phase", "AmgpSchedule", "AmgpConfig", "RECIPES", "DEFAULT_RECIPE", "schedule_config_from_dict"]

SCHEDULE_VERSION = 1
CRITERIA = ("l2", "l1", "taylor", "random", "activation")  # amgp_fx.importance.CRITERIA, without importing torch
SELECTIONS = ("score", "sticky", "rotate", "balanced")  # amgp_fx.switch's selection policies


class Method(str, enum.Enum):
    """What the schedule does with the width: alternate, prune gradually, or nothing."""

    AMGP = "amgp"
    PRUNE_ONLY = "prune_only"
    DENSE = "dense"


class FinalState(str, enum.Enum):
    """The model that comes out of training: original shapes, or the pruned ones."""

    FULL = "full"
    COMPACT = "compact"


class PruneScope(str, enum.Enum):
    """How the removed share is spread: the same ratio in every group, a ratio per layer (by FQN
    pattern, ``layer_ratios``), or one importance ranking across all groups (``global``)."""

    GROUP = "group"
    LAYER = "layer"
    GLOBAL = "global"


class GrowInit(str, enum.Enum):
    """Values of regrown units: the saved ones, fresh function-preserving ones, copies of kept units
    whose outgoing weights they share (``amgp_fx.net2wider``), or incoming weights along the largest
    gradient directions of the batch (``amgp_fx.gradmax``; with ``preserve_growth``)."""

    RESTORE = "restore"
    FRESH = "fresh"
    SPLIT = "split"
    GRADMAX = "gradmax"


class OptimizerStatePolicy(str, enum.Enum):
    """Optimizer state of regrown units: the saved moments, zeros, or "mean": first moments zero and
    second moments the kept units' mean (``amgp_fx.surgery.grow_``), so that Adam's first updates of
    a regrown unit are as large as everyone else's rather than ~lr-sized sign steps."""

    RESTORE = "restore"
    RESET = "reset"
    MEAN = "mean"


@dataclasses.dataclass(frozen=True)
class Phase:
    """A run of steps ``[start, end)`` at one width.

    Attributes:
        name: "warmup", "pruned", "dense" or "final".
        cycle: -1 for warmup, the cycle number (0-based) for pruned and dense phases, ``cycles``
            for final.
        start, end: first step and one past the last step.
        amount: share of the configured pruning in effect, in [0, 1].
        plan: -1 at full size; otherwise the number of the shrink in effect. A phase whose plan
            differs from the previous phase's triggers surgery at its first step.
    """

    name: str
    cycle: int
    start: int
    end: int
    amount: float = 0.0
    plan: int = -1

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def pruned(self) -> bool:
        return self.plan >= 0


def _enum(cls: type[enum.Enum], owner: str, name: str, value: Any) -> enum.Enum:
    try:
        return cls(value)
    except ValueError:
        raise ValueError(f"{owner}.{name} must be one of {[m.value for m in cls]}, got {value!r}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _cubic(k: int, cycles: int) -> float:
    """Share of the target pruning after increment k (0-based) of ``cycles``: 1 - (1 - t)^3."""
    return 1.0 - (1.0 - (k + 1) / cycles) ** 3


@dataclasses.dataclass(frozen=True)
class AmgpSchedule:
    """Phase lengths in optimizer steps.

    Args:
        total_steps: steps of the whole run; the final phase lasts until then.
        warmup_steps: full-size steps before the first prune (>= 1 for the ``taylor`` criterion).
        cycles: number of pruned/dense cycles (amgp) or of pruning increments (prune_only).
        pruned_steps: length of each pruned phase (amgp) or of each increment (prune_only).
        dense_steps: length of each full-size phase after a pruned one (amgp only).
        method: "amgp", "prune_only" or "dense".
        final: "full" or "compact"; prune_only is always compact, dense always full.

    Raises:
        ValueError: a negative length, phases longer than ``total_steps``, or a combination the
            method cannot run; the message names the field.
    """

    total_steps: int
    warmup_steps: int = 0
    cycles: int = 1
    pruned_steps: int = 0
    dense_steps: int = 0
    method: Method = Method.AMGP
    final: FinalState = FinalState.FULL

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", _enum(Method, "AmgpSchedule", "method", self.method))
        object.__setattr__(self, "final", _enum(FinalState, "AmgpSchedule", "final", self.final))
        _require(_is_int(self.total_steps) and self.total_steps > 0,
                 f"AmgpSchedule.total_steps must be a positive integer, got {self.total_steps!r}")
        for name in ("warmup_steps", "cycles", "pruned_steps", "dense_steps"):
            value = getattr(self, name)
            _require(_is_int(value) and value >= 0, f"AmgpSchedule.{name} must be an integer >= 0, got {value!r}")
        if self.method is Method.DENSE:
            _require(self.cycles == 0 and self.pruned_steps == 0 and self.dense_steps == 0,
                     "AmgpSchedule(method='dense') prunes nothing: set cycles=0, pruned_steps=0 and dense_steps=0 "
                     f"(got cycles={self.cycles}, pruned_steps={self.pruned_steps}, dense_steps={self.dense_steps})")
            _require(self.final is FinalState.FULL, "AmgpSchedule(method='dense') ends full-size: set final='full'")
        else:
            _require(self.cycles >= 1 and self.pruned_steps >= 1,
                     f"AmgpSchedule(method={self.method.value!r}) needs cycles >= 1 and pruned_steps >= 1, "
                     f"got cycles={self.cycles}, pruned_steps={self.pruned_steps}")
        if self.method is Method.PRUNE_ONLY:
            _require(self.dense_steps == 0, "AmgpSchedule(method='prune_only') never grows: set dense_steps=0")
            _require(self.final is FinalState.COMPACT,
                     "AmgpSchedule(method='prune_only') ends compact: set final='compact'")
        scheduled = self.warmup_steps + self.cycles * (self.pruned_steps + self.dense_steps)
        _require(scheduled <= self.total_steps,
                 f"AmgpSchedule phases need {scheduled} steps (warmup {self.warmup_steps} + {self.cycles} cycles x "
                 f"({self.pruned_steps} pruned + {self.dense_steps} dense)) but total_steps is {self.total_steps}")
        if self.method is Method.AMGP and self.final is FinalState.COMPACT:
            _require(self.total_steps > scheduled or self.dense_steps == 0,
                     "AmgpSchedule(final='compact') needs a final phase (total_steps > warmup + cycles x "
                     "(pruned + dense)) or dense_steps=0, so that the run ends on a pruned model")

    # -- the pure step -> phase function -------------------------------------------------------
    def phases(self) -> tuple[Phase, ...]:
        """Every phase of the run, in order, without empty ones."""
        phases: list[Phase] = []
        step = 0

        def add(name: str, cycle: int, length: int, amount: float = 0.0, plan: int = -1) -> None:
            nonlocal step
            if length > 0:
                phases.append(Phase(name, cycle, step, step + length, amount, plan))
            step += length

        add("warmup", -1, self.warmup_steps)
        for cycle in range(self.cycles):
            if self.method is Method.PRUNE_ONLY:
                add("pruned", cycle, self.pruned_steps, _cubic(cycle, self.cycles), cycle)
            else:
                add("pruned", cycle, self.pruned_steps, 1.0, cycle)
                add("dense", cycle, self.dense_steps)
        final_length = self.total_steps - step
        if self.final is FinalState.FULL:
            add("final", self.cycles, final_length)
        elif self.method is Method.PRUNE_ONLY or self.dense_steps == 0:
            add("final", self.cycles, final_length, 1.0, self.cycles - 1)  # keeps the last shrink
        else:
            add("final", self.cycles, final_length, 1.0, self.cycles)  # a new shrink, kept
        return tuple(phases)

    def phase_at(self, step: int) -> Phase:
        """The phase that step ``step`` (0-based) belongs to; steps past the end stay in the last phase.

        Raises:
            ValueError: for a negative step.
        """
        _require(_is_int(step) and step >= 0, f"step must be an integer >= 0, got {step!r}")
        phases = self.phases()
        for phase in phases:
            if step < phase.end:
                return phase
        return phases[-1]

    def pruned_share(self) -> float:
        """Fraction of all steps that run a pruned model."""
        return sum(p.length for p in self.phases() if p.pruned) / self.total_steps

    @classmethod
    def from_fractions(cls, total_steps: int, *, warmup: float = 0.1, pruned: float = 0.6, cycles: int = 3,
                       final: float = 0.1, method: str = "amgp", final_state: str = "full") -> AmgpSchedule:
        """A schedule from shares of ``total_steps``: ``pruned`` is the share of all steps spent
        pruned (split over ``cycles``), the rest after warmup and final is split into dense phases.

        Raises:
            ValueError: for shares outside [0, 1] or summing past 1.

        Example:
            >>> s = AmgpSchedule.from_fractions(1000, warmup=0.1, pruned=0.6, cycles=3, final=0.1)
            >>> (s.warmup_steps, s.pruned_steps, s.dense_steps, s.pruned_share())
            (100, 200, 66, 0.6)
        """
        for name, value in (("warmup", warmup), ("pruned", pruned), ("final", final)):
            _require(isinstance(value, (int, float)) and 0 <= value <= 1,
                     f"AmgpSchedule.from_fractions: {name} must be a share in [0, 1], got {value!r}")
        _require(warmup + pruned + final <= 1 + 1e-9,
                 f"AmgpSchedule.from_fractions: warmup + pruned + final = {warmup + pruned + final:g} exceeds 1")
        method = Method(method)
        warmup_steps = int(round(warmup * total_steps))
        if method is Method.DENSE:
            return cls(total_steps, warmup_steps, 0, 0, 0, method, FinalState.FULL)
        _require(_is_int(cycles) and cycles >= 1, f"AmgpSchedule.from_fractions: cycles must be >= 1, got {cycles!r}")
        pruned_steps = max(1, int(round(pruned * total_steps / cycles)))
        if method is Method.PRUNE_ONLY:
            return cls(total_steps, warmup_steps, cycles, pruned_steps, 0, method, FinalState.COMPACT)
        final_steps = int(round(final * total_steps))
        dense_steps = max(0, (total_steps - warmup_steps - final_steps - cycles * pruned_steps) // cycles)
        return cls(total_steps, warmup_steps, cycles, pruned_steps, dense_steps, method, FinalState(final_state))

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "version": SCHEDULE_VERSION,
                **{f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AmgpSchedule:
        """Inverse of ``to_dict``. Raises ValueError for a wrong type, version or unknown keys."""
        return cls(**_checked_values(cls, data))


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value):
        return value.to_dict()
    return value


def _checked_values(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    values = dict(data)
    type_name = values.pop("type", cls.__name__)
    _require(type_name == cls.__name__, f"expected a {cls.__name__} dict, got type {type_name!r}")
    version = values.pop("version", SCHEDULE_VERSION)
    _require(version == SCHEDULE_VERSION,
             f"{cls.__name__} version {version!r} is not supported (this code reads version {SCHEDULE_VERSION})")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    _require(not unknown, f"unknown {cls.__name__} keys {unknown}; known keys are {sorted(known)}")
    return values


@dataclasses.dataclass(frozen=True)
class AmgpConfig:
    """What to prune, how much, and how to grow back; the timing is ``schedule``.

    Args:
        schedule: the phase lengths (``AmgpSchedule``).
        ratio: share of each group's channels removed in a pruned phase, in [0, 1).
        scope: "group" (``ratio`` in every group), "layer" (``layer_ratios`` by pattern, else
            ``ratio``) or "global" (``ratio`` of all chosen channels, ranked across groups by
            importance normalised per group, at most ``max_layer_ratio`` of any one group).
        layer_ratios: ``((pattern, ratio), ...)``; a pattern (fnmatch) matches a group's id, its
            name or one of its parameters' FQNs (``"top_mlp.*"``); the first match wins.
        max_layer_ratio: cap on the share removed from any one group, in (0, 1).
        groups: group ids, names or fnmatch patterns to prune; () = every prunable group of ``kinds``.
        kinds: group kinds pruned by default: "hidden" (MLP units); add "embedding" or "heads" on request.
        criterion: importance, re-scored at every prune: "l2", "l1", "taylor", "random" or
            "activation" (each unit's expected squared contribution to its consumers on the step's
            training batch, so that units silent on the data go first; ``amgp_fx.importance``).
        round_to: kept widths are rounded to a multiple of this (tensor cores like 8); 1 = exact.
        grow_init: "restore" (saved values), "fresh" (random in, zero out: same function) or "split"
            (Net2WiderNet: each regrown unit copies a kept unit and its optimizer state, and the
            two share the source's outgoing weights in random shares: same function, useful at once;
            on the 2x CPU proxy below "restore" in both stages, docs/benchmarks.md "Growth by splitting"),
            or "gradmax" (with preserve_growth: the regrown units' incoming weights along the top
            eigenvectors of the step batch's gradient moments, so their zero outgoing weights learn fastest).
        optimizer_state: "restore" (saved moments of regrown units), "reset" (zeros) or "mean"
            (first moments zero, second moments the kept units' mean). Adam's bias correction counts
            the tensor's steps, not the slot's: a regrown slot with zero (or step-0) moments late in
            training moves by ~1.5-3x the rate per step, in the sign of its gradient, for ~100 steps.
        rescale: keep each next layer's input scale when units go (``amgp_fx.rescale``): the kept
            units' outgoing weights are multiplied at a shrink and divided back at a restoring growth.
            Without it a half-width MLP's output collapses and training at a small learning rate
            spends the pruned phase recovering (H200 DLRM benchmark at lr 1e-4: -0.019 AUC vs dense
            without, -0.015 with it).
        pruned_lr_scale: learning-rate multiplier of the dense optimizer while the model is pruned.
            Adam moves each weight by about the learning rate per step, so a layer whose fan-in was
            halved changes its output half as fast; like muP's 1/fan-in rule, a scale of about
            full/kept width keeps the pruned phases learning at the full model's pace. 1.0 = off.
        seed: seeds the ``random`` criterion and fresh initialisation (per cycle).
        preserve_growth: a growth leaves the model's outputs as they were just before it: the kept
            units keep their current weights and scale, the regrown ones (restored or fresh) enter
            with zero outgoing weights (``amgp_fx.switch``).
        grow_ramp_steps: with ``preserve_growth``, over this many steps after a growth the regrown
            units' saved outgoing weights are added back in and the kept units' rescale is undone,
            in equal increments (0: the regrown units keep zero outgoing weights and learn them).
        fade_steps: fade the units chosen for removal out over this many steps before each shrink
            (their outgoing weights fall linearly to exactly zero while the kept units' rescale
            rises), so that the shrink itself changes nothing; the units are chosen when the fade starts.
        selection: which units sit out a pruned phase: "score" (the lowest importance now),
            "sticky" (the first shrink's choice every cycle), "rotate" (disjoint shares of a fixed
            random order in turn) or "balanced" (those that sat out least so far, by importance
            among equals), so every unit trains a fair share.
        rewarm_steps: after each growth, the dense optimizer's rate rises linearly from
            1/rewarm_steps of its rate back to it over this many steps (staged training's re-warm-up).
        fold_bias: at each shrink (and along a fade), add what the consumers lose of their mean
            input to their biases (FLAP, An et al. 2024; ``amgp_fx.bias_fold``), measured on the
            step's training batch, so the shrunk model's output at the mean input is unchanged; the
            fold is given back where the rescale is divided out. Consumers without a bias are
            skipped (no parameter is created). With criterion "activation", units are then scored
            by the variance of their output instead of its second moment: the mean is folded back.

    Raises:
        ValueError: naming the field, for out-of-range values or contradictions.

    Example:
        >>> config = AmgpConfig.from_recipe_name("amgp-half", total_steps=1000)
        >>> config.ratio, config.schedule.cycles, config.width_at(0), config.width_at(150)
        (0.5, 3, 1.0, 0.5)
        >>> AmgpConfig.from_dict(config.to_dict()) == config
        True
    """

    schedule: AmgpSchedule
    ratio: float = 0.5
    scope: PruneScope = PruneScope.GROUP
    layer_ratios: tuple[tuple[str, float], ...] = ()
    max_layer_ratio: float = 0.9
    groups: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ("hidden",)
    criterion: str = "l2"
    round_to: int = 8
    grow_init: GrowInit = GrowInit.RESTORE
    optimizer_state: OptimizerStatePolicy = OptimizerStatePolicy.RESTORE
    rescale: bool = True
    pruned_lr_scale: float = 1.0
    seed: int = 0
    preserve_growth: bool = False
    grow_ramp_steps: int = 0
    fade_steps: int = 0
    selection: str = "score"
    rewarm_steps: int = 0
    fold_bias: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.schedule, Mapping):
            object.__setattr__(self, "schedule", AmgpSchedule.from_dict(self.schedule))
        _require(isinstance(self.schedule, AmgpSchedule),
                 f"AmgpConfig.schedule must be an AmgpSchedule, got {type(self.schedule).__name__}")
        object.__setattr__(self, "scope", _enum(PruneScope, "AmgpConfig", "scope", self.scope))
        object.__setattr__(self, "grow_init", _enum(GrowInit, "AmgpConfig", "grow_init", self.grow_init))
        object.__setattr__(self, "optimizer_state",
                           _enum(OptimizerStatePolicy, "AmgpConfig", "optimizer_state", self.optimizer_state))
        object.__setattr__(self, "groups", tuple(self.groups))
        object.__setattr__(self, "kinds", tuple(self.kinds))
        object.__setattr__(self, "layer_ratios", tuple((str(p), r) for p, r in self.layer_ratios))
        _require(isinstance(self.ratio, (int, float)) and not isinstance(self.ratio, bool) and 0 <= self.ratio < 1,
                 f"AmgpConfig.ratio must be in [0, 1), got {self.ratio!r}")
        _require(isinstance(self.max_layer_ratio, (int, float)) and 0 < self.max_layer_ratio < 1,
                 f"AmgpConfig.max_layer_ratio must be in (0, 1), got {self.max_layer_ratio!r}")
        for pattern, ratio in self.layer_ratios:
            _require(isinstance(ratio, (int, float)) and 0 <= ratio <= self.max_layer_ratio,
                     f"AmgpConfig.layer_ratios[{pattern!r}] must be in [0, max_layer_ratio={self.max_layer_ratio}], "
                     f"got {ratio!r}")
        _require(not self.layer_ratios or self.scope is PruneScope.LAYER,
                 f"AmgpConfig.layer_ratios needs scope='layer', got scope={self.scope.value!r}")
        _require(self.scope is not PruneScope.GROUP or self.ratio <= self.max_layer_ratio,
                 f"AmgpConfig.ratio={self.ratio} is above max_layer_ratio={self.max_layer_ratio}")
        _require(all(isinstance(g, str) and g for g in self.groups), "AmgpConfig.groups must be non-empty strings")
        _require(bool(self.kinds) and all(isinstance(k, str) and k for k in self.kinds),
                 f"AmgpConfig.kinds must name at least one group kind, got {self.kinds!r}")
        _require(self.criterion in CRITERIA, f"AmgpConfig.criterion must be one of {CRITERIA}, got {self.criterion!r}")
        _require(_is_int(self.round_to) and self.round_to >= 1,
                 f"AmgpConfig.round_to must be an integer >= 1, got {self.round_to!r}")
        _require(isinstance(self.rescale, bool), f"AmgpConfig.rescale must be true or false, got {self.rescale!r}")
        _require(isinstance(self.pruned_lr_scale, (int, float)) and not isinstance(self.pruned_lr_scale, bool)
                 and 0 < self.pruned_lr_scale <= 100,
                 f"AmgpConfig.pruned_lr_scale must be a number in (0, 100], got {self.pruned_lr_scale!r}")
        _require(_is_int(self.seed) and self.seed >= 0, f"AmgpConfig.seed must be an integer >= 0, got {self.seed!r}")
        _require(isinstance(self.preserve_growth, bool),
                 f"AmgpConfig.preserve_growth must be true or false, got {self.preserve_growth!r}")
        for name in ("grow_ramp_steps", "fade_steps", "rewarm_steps"):
            value = getattr(self, name)
            _require(_is_int(value) and 0 <= value <= self.schedule.total_steps,
                     f"AmgpConfig.{name} must be an integer in [0, total_steps], got {value!r}")
        _require(self.grow_ramp_steps == 0 or self.preserve_growth,
                 "AmgpConfig.grow_ramp_steps ramps a function-preserving growth: set preserve_growth=True")
        _require(self.grow_init is not GrowInit.GRADMAX or (self.preserve_growth and self.grow_ramp_steps == 0),
                 "AmgpConfig.grow_init='gradmax' picks the incoming weights of units that enter with zero outgoing "
                 "weights: set preserve_growth=True and grow_ramp_steps=0")
        _require(self.grow_ramp_steps == 0 or self.grow_init is not GrowInit.SPLIT,
                 "AmgpConfig.grow_init='split' leaves nothing to ramp (the copies share their sources' outgoing "
                 "weights at once): set grow_ramp_steps=0")
        _require(isinstance(self.fold_bias, bool),
                 f"AmgpConfig.fold_bias must be true or false, got {self.fold_bias!r}")
        _require(self.selection in SELECTIONS, f"AmgpConfig.selection must be one of {SELECTIONS}, "
                                               f"got {self.selection!r}")
        _require(self.criterion != "taylor" or self.schedule.warmup_steps >= 1 or self.schedule.method is Method.DENSE,
                 "AmgpConfig.criterion='taylor' needs gradients before the first prune: set warmup_steps >= 1")
        _require(self.criterion != "taylor" or self.schedule.method is not Method.AMGP or self.schedule.cycles < 2
                 or self.schedule.dense_steps >= 1,
                 "AmgpConfig.criterion='taylor' scores the full-size model before each prune: set dense_steps >= 1")

    def ratio_for(self, names: tuple[str, ...]) -> float:
        """The target ratio of a group known by ``names`` (its id, name and parameter FQNs)."""
        if self.scope is PruneScope.LAYER:
            for pattern, ratio in self.layer_ratios:
                if any(fnmatch.fnmatchcase(name, pattern) for name in names):
                    return float(ratio)
        return float(self.ratio)

    def width_at(self, step: int, names: tuple[str, ...] = ()) -> float:
        """Expected width (share of full size, before rounding) of a group at ``step``."""
        return 1.0 - self.schedule.phase_at(step).amount * self.ratio_for(names)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with ``type`` and ``version``; the schedule nests as its own dict."""
        values = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"type": type(self).__name__, "version": SCHEDULE_VERSION, **values}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AmgpConfig:
        """Inverse of ``to_dict``. Raises ValueError for a wrong type, version or unknown keys."""
        values = _checked_values(cls, data)
        values["schedule"] = AmgpSchedule.from_dict(values["schedule"]) if "schedule" in values else None
        if "layer_ratios" in values:
            values["layer_ratios"] = tuple((p, r) for p, r in values["layer_ratios"])
        return cls(**values)

    _SCHEDULE_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"warmup_steps", "cycles", "pruned_steps", "dense_steps", "method", "final"})

    @classmethod
    def from_recipe_name(cls, name: str, total_steps: int, **overrides: Any) -> AmgpConfig:
        """A named recipe (``RECIPES``) resolved for ``total_steps``, with overrides of any
        ``AmgpConfig`` or ``AmgpSchedule`` field.

        Raises:
            ValueError: for an unknown recipe or field.
        """
        if name not in RECIPES:
            raise ValueError(f"unknown AMGP recipe {name!r}; choose from {sorted(RECIPES)}")
        recipe = dict(RECIPES[name])
        fractions = recipe.pop("fractions")
        schedule = AmgpSchedule.from_fractions(total_steps, **fractions)
        for key, field_name in (("grow_ramp_share", "grow_ramp_steps"), ("fade_share", "fade_steps"),
                                ("rewarm_share", "rewarm_steps")):
            share = recipe.pop(key, None)  # a share of one pruned phase, resolved for this run's length
            if share is not None and field_name not in overrides:
                recipe[field_name] = int(round(share * schedule.pruned_steps))
        schedule_overrides = {k: overrides.pop(k) for k in list(overrides) if k in cls._SCHEDULE_FIELDS}
        if schedule_overrides:
            schedule = dataclasses.replace(schedule, **schedule_overrides)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        _require(not unknown, f"unknown AmgpConfig fields {unknown}; known: {sorted(known | cls._SCHEDULE_FIELDS)}")
        return cls(schedule=schedule, **{**recipe, **overrides})


# Named recipes: shares of the run's steps plus pruning settings (torchao-style recipe names).
RECIPES: dict[str, dict[str, Any]] = {
    # 60% of the steps at half width in 3 cycles, full-size warm-up and final tail
    "amgp-half": dict(fractions=dict(warmup=0.1, pruned=0.6, cycles=3, final=0.1), ratio=0.5),
    # later pruning: a 30% full-size warm-up before 50% of the steps at half width (on MovieLens the 10% warm-up
    # of amgp-half pruned a model still far from trained)
    "amgp-half-late": dict(fractions=dict(warmup=0.3, pruned=0.5, cycles=3, final=0.1), ratio=0.5),
    # gentler: 25% of units off in 50% of the steps
    "amgp-quarter": dict(fractions=dict(warmup=0.1, pruned=0.5, cycles=3, final=0.1), ratio=0.25),
    # aggressive: 70% of the steps at half width in 4 cycles, short tail
    "amgp-aggressive": dict(fractions=dict(warmup=0.1, pruned=0.7, cycles=4, final=0.05), ratio=0.5),
    # AMGP that ends on the compact model, for serving it
    "amgp-half-compact": dict(fractions=dict(warmup=0.1, pruned=0.6, cycles=3, final=0.1, final_state="compact"),
                              ratio=0.5),
    # grow late: the first 60% of the steps at half width, one function-preserving growth, whose regrown units
    # are ramped in over a quarter of the pruned phase's length, then full size (the CPU proxy's best; see
    # docs/benchmarks.md "What makes AMGP pay off")
    "amgp-grow-late": dict(fractions=dict(warmup=0.0, pruned=0.6, cycles=1, final=0.4), ratio=0.5,
                           preserve_growth=True, grow_ramp_share=0.25),
    # grow late, and keep what the small model learned: the same one growth, but the regrown units stay at zero
    # outgoing weights (they learn from there) and the kept units keep their scale, with no ramp. On the CPU proxy
    # the ramp (regrown units' saved outgoing weights phased in, the kept units' rescale phased out) stalls the
    # AUC for its length, more so at 2x the MLP width; without it: at least as good on 6 of 6 seeds
    # (docs/benchmarks.md "Where the growth costs"). Not yet measured on the H200.
    "amgp-grow-late-zero": dict(fractions=dict(warmup=0.0, pruned=0.6, cycles=1, final=0.4), ratio=0.5,
                                preserve_growth=True),
    # grow late, keep what the small model learned, and re-warm the rate after the growth: regrown units come back
    # with zero Adam moments while the step count is late, so their first updates are ~lr-sized sign steps that all
    # push the next layer the same way, a push that grows with width (tools/probe_growth_jump.py, 3 seeds: the
    # held-out loss rises 0.6x-14x at width 256 and 29x-54x at 1024 after the growth; re-warmed over 20 steps,
    # 4%-67%). On the GPU (DLRM industrial, H100, fair grid, 3 seeds) it removes the collapse after the growth
    # and lifts AMGP by +0.0104 AUC over amgp-grow-late-zero (better on every seed); best on the 2x CPU proxy on
    # every seed, neutral at 1x and on MovieLens/Adult (docs/benchmarks.md "The re-warm on the GPU")
    "amgp-grow-late-rewarm": dict(fractions=dict(warmup=0.0, pruned=0.6, cycles=1, final=0.4), ratio=0.5,
                                  preserve_growth=True, rewarm_share=0.1),
    # the re-warmed growth from a narrower start, earlier: 0.4 width for the first 53% of the steps (the same
    # training FLOPs as amgp-grow-late-rewarm on the DLRM proxy, 0.58x dense), so the regrown units join at a higher
    # point of a decaying rate. On the 2x CPU proxy (6 seeds) offline a tie with the default (-0.0002), and in the
    # recurring stage above it on 5 of 6 seeds (+0.0014) and above dense and small dense on every seed (+0.0033,
    # +0.0039); at 4x the horizon below the default (recurring -0.0009 on every seed). Not yet measured on the GPU
    # (docs/benchmarks.md "Growing earlier from a narrower start")
    "amgp-grow-earlier-rewarm": dict(fractions=dict(warmup=0.0, pruned=0.53, cycles=1, final=0.47), ratio=0.6,
                                     preserve_growth=True, rewarm_share=0.1),
    # amgp-half's cycles with the shrinks that see the data: units scored by their measured contribution to the
    # next layer (criterion "activation") and their mean output folded into its bias. The best cyclic recipe on
    # the CPU proxy (-0.0077 vs dense, amgp-half -0.0243; grow-late -0.0044), for those who want every unit
    # back in every cycle (docs/benchmarks.md "Shrinks that see the data")
    "amgp-cycles-data": dict(fractions=dict(warmup=0.1, pruned=0.6, cycles=3, final=0.1), ratio=0.5,
                             criterion="activation", fold_bias=True),
    # baseline: gradual cubic pruning to half width over 40% of the steps, then compact training
    "prune-only-half": dict(fractions=dict(warmup=0.1, pruned=0.4, cycles=4, method="prune_only"), ratio=0.5),
    # baseline: the full-size model all the way
    "dense": dict(fractions=dict(warmup=0.0, method="dense"), ratio=0.0),
}

# What `amgp-compress --amgp` uses unless told: the best recipe measured (docs/benchmarks.md, "What makes
# AMGP pay off?" and "The re-warm on the GPU": +0.0104 AUC over the growth without re-warm on the GPU's DLRM,
# best or tied on the CPU proxies and real data); amgp-grow-late and amgp-half, the previous defaults, stay
# available by name.
DEFAULT_RECIPE = "amgp-grow-late-rewarm"

_ALLOWED = {"AmgpConfig": AmgpConfig, "AmgpSchedule": AmgpSchedule}


def schedule_config_from_dict(data: Mapping[str, Any]) -> AmgpConfig | AmgpSchedule:
    """Rebuild an ``AmgpConfig`` or ``AmgpSchedule`` by its ``type`` (an allowlist, no pickle).

    Raises:
        ValueError: for a missing or unknown ``type``.
    """
    type_name = data.get("type")
    if type_name not in _ALLOWED:
        raise ValueError(f"unknown AMGP config type {type_name!r}; allowed: {sorted(_ALLOWED)}")
    return _ALLOWED[type_name].from_dict(data)

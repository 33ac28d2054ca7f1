"""Learning-rate schedules for `amgp_fx.train.train`: a linear warm-up, then constant, cosine or
linear decay, as production recommendation training runs (MLPerf DLRM: warm-up then decay).

The trainer is the only writer of a param group's ``lr``: once per step, after the step hooks ran
and before the optimizers step, it sets

    lr = base_lr * lr_factor(step) * group.get(LR_SCALE_KEY, 1.0)

``base_lr`` is the group's rate when training started (kept in the group as ``BASE_LR_KEY``, so it is
saved and resumed with the optimizer state). ``LR_SCALE_KEY`` is how a hook asks for more or less
(AMGP's ``pruned_lr_scale`` while pruned, or its re-warm-up after a growth) without knowing the
schedule, and the schedule applies without knowing the hook.

Example:
    >>> [round(lr_factor(s, 10, "cosine", warmup_steps=2), 3) for s in (0, 1, 2, 6, 9)]
    [0.5, 1.0, 1.0, 0.5, 0.038]
    >>> lr_factor(9, 10, "linear", final_ratio=0.1)
    0.19
"""
from __future__ import annotations

import math
from typing import Iterable

__all__ = ["BASE_LR_KEY", "LR_SCALE_KEY", "SCHEDULES", "lr_factor", "set_learning_rates"]

SCHEDULES = ("constant", "cosine", "linear")
BASE_LR_KEY = "base_lr"
LR_SCALE_KEY = "amgp_lr_scale"


def lr_factor(step: int, total_steps: int, schedule: str = "constant", *, warmup_steps: int = 0,
              final_ratio: float = 0.0) -> float:
    """The multiplier of the base rate at ``step`` (0-based) of ``total_steps``.

    Warm-up: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps (never 0, so the
    first step learns). Then ``constant`` stays at 1; ``cosine`` and ``linear`` fall from 1 at the
    end of warm-up towards ``final_ratio`` at ``total_steps`` (the last step is one step short of it).

    Raises:
        ValueError: an unknown schedule, or counts and ratios out of range.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose from {SCHEDULES}")
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps or not 0.0 <= final_ratio <= 1.0:
        raise ValueError(f"lr_factor needs total_steps >= 1, 0 <= warmup_steps <= total_steps and final_ratio in "
                         f"[0, 1]; got {total_steps}, {warmup_steps}, {final_ratio}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return final_ratio + (1.0 - final_ratio) * shape


def set_learning_rates(optimizers: Iterable, factor: float) -> None:
    """Every param group's ``lr`` = its base rate x ``factor`` x its hook scale (see the module doc)."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            base = group.setdefault(BASE_LR_KEY, group["lr"])
            group["lr"] = base * factor * group.get(LR_SCALE_KEY, 1.0)

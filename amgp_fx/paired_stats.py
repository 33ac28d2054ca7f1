"""Paired per-seed differences between two methods, with a 95% confidence interval and a verdict.

A benchmark that runs every method on the same seeds (same data order, same initialisation where the
shapes allow) compares them seed by seed; the spread of those differences, not of each method's AUC,
says whether a difference is real. With three seeds a mean difference of 0.002 and a spread of 0.003
is a tie, and a report should say so rather than count wins. The interval is Student's t on the
per-seed differences (two-sided 95%); no SciPy is needed.

Example:
    >>> pair = paired_differences({0: 0.81, 1: 0.80, 2: 0.82}, {0: 0.80, 1: 0.80, 2: 0.80})
    >>> pair["per_seed"], pair["wins"], pair["verdict"]
    ([0.01, 0.0, 0.02], 2, 'tie')
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

__all__ = ["paired_differences", "describe_interval", "t_quantile_975"]

# two-sided 95% quantiles of Student's t, degrees of freedom 1..30 (beyond: the normal's, within 2%)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(dof: int) -> float:
    """The 0.975 quantile of Student's t with ``dof`` degrees of freedom (>= 1)."""
    if dof < 1:
        raise ValueError(f"Student's t needs at least one degree of freedom, got {dof}")
    if dof <= len(_T975):
        return _T975[dof - 1]
    return 1.960 + 2.4 / dof  # within 0.1% of the exact quantile for dof > 30


def paired_differences(values: Mapping[int, float], base: Mapping[int, float]) -> dict[str, Any]:
    """``values[seed] - base[seed]`` on the seeds both have, in seed order, summarised.

    Returns:
        ``per_seed``, ``mean``, ``std`` (sample), ``wins`` (differences above zero), ``seeds``,
        ``ci95`` ([low, high] of the mean; None with fewer than two seeds) and ``verdict``:
        "above" or "below" when the interval excludes zero, else "tie" (also with one seed).
    """
    diffs = [round(values[s] - base[s], 10) for s in sorted(values) if s in base]
    mean = statistics.fmean(diffs) if diffs else None
    std = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    ci95 = None
    verdict = "tie"
    if len(diffs) > 1:
        half = t_quantile_975(len(diffs) - 1) * std / math.sqrt(len(diffs))
        ci95 = [mean - half, mean + half]
        verdict = "above" if ci95[0] > 0 else "below" if ci95[1] < 0 else "tie"
    return {"per_seed": diffs, "mean": mean, "std": std, "wins": sum(d > 0 for d in diffs), "seeds": len(diffs),
            "ci95": ci95, "verdict": verdict}


def describe_interval(pair: Mapping[str, Any]) -> str:
    """``pair``'s verdict with its 95% interval, for tables and logs: "tie, 95% CI [-0.0040, +0.0060]"."""
    if pair.get("ci95") is None:
        return f"{pair.get('verdict', 'tie')} (one seed: no interval)"
    low, high = pair["ci95"]
    return f"{pair['verdict']}, 95% CI [{low:+.4f}, {high:+.4f}]"

"""How reports write numbers: one format for "a fraction of dense", FLOPs in a unit that fits.

Every report (the ``run`` report, latency tables, phase tables, the CLI summaries) goes through
these, so a reader sees the same quantity written the same way everywhere: ``0.65x of dense``,
never ``35.0%`` in one place and ``2.85x`` in another; ``2.99 kFLOPs``, never ``2.992e-06 GFLOPs``.

Example:
    >>> flops_text(2992), flops_text(1.5e9), of_dense(0.6512), of_dense(None)
    ('2.99 kFLOPs', '1.50 GFLOPs', '0.65x', '-')
"""
from __future__ import annotations

import math

__all__ = ["flops_scale", "flops_text", "of_dense", "ratio"]

_PREFIXES = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""))


def flops_scale(value: float) -> tuple[float, str]:
    """(divisor, unit) that puts ``value`` FLOPs between 1 and 1000, e.g. (1e6, "MFLOPs"): one unit
    for a whole column or axis, picked from its largest value."""
    for divisor, prefix in _PREFIXES:
        if abs(value) >= divisor:
            return divisor, f"{prefix}FLOPs"
    return 1.0, "FLOPs"


def flops_text(value: float | None) -> str:
    """``value`` FLOPs with three significant digits and a unit that fits (``-`` when unknown)."""
    if value is None or not math.isfinite(value):
        return "-"
    divisor, unit = flops_scale(value)
    return f"{value / divisor:.3g} {unit}" if divisor == 1.0 else f"{value / divisor:.2f} {unit}"


def ratio(part: float | None, whole: float | None) -> float | None:
    """``part / whole``, None when either is unknown or ``whole`` is not positive."""
    if part is None or whole is None or not whole > 0:
        return None
    return part / whole


def of_dense(value: float | None) -> str:
    """A fraction of the dense (full-size) baseline as ``0.65x`` (``-`` when unknown): below 1 is less
    than dense, for FLOPs, latency and parameters alike."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.2f}x"

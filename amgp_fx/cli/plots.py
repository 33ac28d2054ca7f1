"""The PNGs the CLI writes beside its reports, when matplotlib (the ``plot`` extra) is installed.

Plots are optional: without matplotlib a command still succeeds, writes no PNG, and says in its
report and summary how to get them (:data:`PLOT_HINT`). Each function returns the PNG's name in
the output folder (what reports link), or None when it wrote none.
"""
from __future__ import annotations

from amgp_fx.cli.output import OutputDir

__all__ = ["PLOT_HINT", "plot_hint", "plotting_available", "save_curve", "save_latency_plot"]

PLOT_HINT = "plots need matplotlib: pip install amgp-fx[plot]"


def plotting_available() -> bool:
    """Whether matplotlib imports (it is an optional extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_hint() -> str:
    """What a summary says instead of a plot's path: '' when plots are drawn, else how to get them."""
    return "" if plotting_available() else f"no plots ({PLOT_HINT})"


def save_curve(out: OutputDir, name: str, records, title: str) -> str | None:
    """The training curve of a metrics log (width and FLOPs per step for AMGP, loss, eval AUC) as
    ``name`` in ``out``; None without matplotlib or without records to draw."""
    if not plotting_available():
        return None
    from amgp_fx.amgp_report import plot_run

    try:
        plot_run(records, out.file(name), title=title)
    except ValueError:  # no training records (e.g. 0 steps)
        return None
    return name


def save_latency_plot(out: OutputDir, records, name: str = "latency.png", title: str = "") -> str | None:
    """p50 latency against batch size, one line per variant and runtime, as ``name`` in ``out``; None
    without matplotlib or without records."""
    if not records or not plotting_available():
        return None
    from amgp_fx.latency_report import plot_latency

    plot_latency(records, out.file(name), title=title)
    return name

"""Reading an AMGP run: a phase table, a method comparison table, and a PNG of the alternation.

Inputs are plain records: the ``amgp_phase`` records an ``AmgpHook`` writes to the metrics log (or
``hook.history``), the ``eval`` records of ``amgp_fx.train.train``, and the benchmark records of
``tools/bench_amgp.py``. matplotlib is imported only when a plot is drawn.

Example:
    >>> phases = [{"kind": "amgp_phase", "phase": "warmup", "cycle": -1, "start": 0, "end": 10, "steps": 10,
    ...            "width": 1.0, "flops_per_step": 4e9, "flops": 4e10, "wall_clock_s": 1.5,
    ...            "peak_memory_bytes": 2**30}]
    >>> print(phase_table(phases).splitlines()[0])
    | phase   |   cycle | steps   |   width |   GFLOPs/step |   GFLOPs |   wall-clock (s) |   peak memory (MiB) |
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["phase_records", "phase_table", "comparison_table", "best_per_method", "plot_run",
           "plot_auc_vs_flops"]


def phase_records(records: Iterable[Mapping[str, Any]] | str | os.PathLike) -> list[dict[str, Any]]:
    """The ``amgp_phase`` records of a metrics log (a JSON-lines path or records), in step order."""
    if isinstance(records, (str, os.PathLike)):
        records = _read_lines(records)
    return sorted((dict(r) for r in records if r.get("kind", "amgp_phase") == "amgp_phase" and "phase" in r),
                  key=lambda r: r["start"])


def phase_table(records: Iterable[Mapping[str, Any]] | str | os.PathLike, tablefmt: str = "github") -> str:
    """One row per phase: steps, width, FLOPs per step and in total, wall-clock, peak memory; a
    total row at the end."""
    from tabulate import tabulate

    phases = phase_records(records)
    rows = [[p["phase"], p["cycle"], f"{p['start']}-{p['end']}", p["width"], p["flops_per_step"] / 1e9,
             p["flops"] / 1e9, p["wall_clock_s"], p.get("peak_memory_bytes", 0) / 2**20] for p in phases]
    if phases:
        steps = sum(p["steps"] for p in phases)
        flops = sum(p["flops"] for p in phases)
        rows.append(["total", "", str(steps), "", flops / max(steps, 1) / 1e9, flops / 1e9,
                     sum(p["wall_clock_s"] for p in phases),
                     max(p.get("peak_memory_bytes", 0) for p in phases) / 2**20])
    headers = ["phase", "cycle", "steps", "width", "GFLOPs/step", "GFLOPs", "wall-clock (s)", "peak memory (MiB)"]
    return tabulate(rows, headers=headers, tablefmt=tablefmt, floatfmt=".3g")


def best_per_method(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each (model, method) at its own best learning rate, with paired differences to dense.

    ``records`` hold one entry per (model, method, lr) with ``auc_mean`` and ``per_seed`` runs.
    The best rate is the one with the highest mean AUC over seeds; the chosen record gains
    ``lr_grid`` (every rate tried with its mean and spread) and, for other methods than dense,
    ``paired_vs_dense``: per seed, its AUC minus dense's (at dense's own best rate) on the same
    seed, their mean and sample standard deviation, and on how many seeds it won.

    Example:
        >>> runs = lambda *aucs: [{"seed": i, "auc": a} for i, a in enumerate(aucs)]
        >>> rows = [dict(model="m", method="dense", lr=1e-3, auc_mean=0.80, per_seed=runs(0.80, 0.80)),
        ...         dict(model="m", method="dense", lr=3e-4, auc_mean=0.79, per_seed=runs(0.79, 0.79)),
        ...         dict(model="m", method="amgp", lr=1e-3, auc_mean=0.805, per_seed=runs(0.81, 0.80))]
        >>> best = best_per_method(rows)
        >>> [(r["method"], r["lr"]) for r in best], best[1]["paired_vs_dense"]["per_seed"]
        ([('dense', 0.001), ('amgp', 0.001)], [0.01, 0.0])
    """
    import statistics

    chosen: dict[tuple, dict[str, Any]] = {}
    grids: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        key = (r["model"], r["method"])
        grids.setdefault(key, []).append({"lr": r["lr"], "auc_mean": r["auc_mean"], "auc_std": r.get("auc_std", 0.0)})
        if key not in chosen or r["auc_mean"] > chosen[key]["auc_mean"]:
            chosen[key] = dict(r)
    for key, record in chosen.items():
        record["lr_grid"] = sorted(grids[key], key=lambda g: g["lr"])
        dense = chosen.get((key[0], "dense"))
        if dense is None or record is dense:
            continue
        base = {run["seed"]: run["auc"] for run in dense["per_seed"]}
        diffs = [round(run["auc"] - base[run["seed"]], 10) for run in record["per_seed"] if run["seed"] in base]
        record["paired_vs_dense"] = {
            "per_seed": diffs, "mean": statistics.fmean(diffs) if diffs else None,
            "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0, "wins": sum(d > 0 for d in diffs),
            "seeds": len(diffs), "dense_lr": dense["lr"]}
    return list(chosen.values())


def comparison_table(records: Sequence[Mapping[str, Any]], tablefmt: str = "github") -> str:
    """One row per (model, method) benchmark record: AUC and logloss as mean +- std over seeds, the
    AUC difference to the same model's dense run, training FLOPs and wall-clock relative to dense.

    Example:
        >>> rows = [dict(model="m", method="dense", auc_mean=0.8, auc_std=0.001, logloss_mean=0.45,
        ...              train_flops=1e12, wall_clock_s=10.0, seeds=[0, 1, 2], samples=1000),
        ...         dict(model="m", method="amgp", auc_mean=0.7996, auc_std=0.001, logloss_mean=0.451,
        ...              train_flops=6e11, wall_clock_s=7.0, seeds=[0, 1, 2], samples=1000)]
        >>> table = comparison_table(rows)
        >>> [line.split("|")[4].strip() for line in table.splitlines()[2:]]  # AUC vs dense
        ['+0.0000', '-0.0004']
    """
    from tabulate import tabulate

    dense = {r["model"]: r for r in records if r["method"] == "dense"}
    rows = []
    for r in records:
        base = dense.get(r["model"])
        gap = f"{r['auc_mean'] - base['auc_mean']:+.4f}" if base else ""
        flops_ratio = f"{r['train_flops'] / base['train_flops']:.2f}" if base and base["train_flops"] else ""
        wall_ratio = f"{r['wall_clock_s'] / base['wall_clock_s']:.2f}" if base and base["wall_clock_s"] else ""
        rows.append([r["model"], r["method"], f"{r['auc_mean']:.4f} +- {r.get('auc_std', 0.0):.4f}", gap,
                     f"{r['logloss_mean']:.4f}", f"{r['train_flops'] / 1e12:.4g}", flops_ratio,
                     f"{r['wall_clock_s']:.1f}", wall_ratio, r.get("samples", ""), len(r.get("seeds", ())),
                     f"{r['lr']:g}" if r.get("lr") is not None else ""])
    headers = ["model", "method", "test AUC", "AUC vs dense", "logloss", "train TFLOPs", "FLOPs vs dense",
               "wall-clock (s)", "wall-clock vs dense", "samples", "seeds", "lr"]
    return tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True)


def plot_run(records: Iterable[Mapping[str, Any]] | str | os.PathLike, path: str | os.PathLike,
             title: str | None = None) -> Path:
    """PNG of model width, FLOPs per step and evaluation AUC over training steps.

    Args:
        records: a metrics log (path or records) with ``amgp_phase`` and ``eval`` records; several
            runs may share it if their records carry distinct ``label`` values (one line each).
        path: where the PNG goes.
    Returns:
        ``path``.
    Raises:
        ValueError: the records hold no ``amgp_phase`` record.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = _read_lines(records) if isinstance(records, (str, os.PathLike)) else list(records)
    labels = list(dict.fromkeys(r.get("label", "") for r in records if r.get("kind") == "amgp_phase"))
    if not labels:
        raise ValueError("no amgp_phase records to plot; pass the metrics log of a run with an AmgpHook")
    figure, (width_axis, flops_axis, auc_axis) = plt.subplots(3, 1, sharex=True, figsize=(8, 7))
    for label in labels:
        phases = phase_records(r for r in records if r.get("label", "") == label)
        steps = [p["start"] for p in phases] + [phases[-1]["end"]]
        width_axis.step(steps, [p["width"] for p in phases] + [phases[-1]["width"]], where="post", label=label)
        flops_axis.step(steps, [p["flops_per_step"] / 1e9 for p in phases] + [phases[-1]["flops_per_step"] / 1e9],
                        where="post", label=label)
        evals = [r for r in records if r.get("kind") == "eval" and r.get("label", label) == label and "auc" in r]
        if evals:
            auc_axis.plot([r["step"] for r in evals], [r["auc"] for r in evals], marker="o", label=label)
    width_axis.set_ylabel("width (share of units)")
    flops_axis.set_ylabel("GFLOPs per step")
    auc_axis.set_ylabel("eval AUC")
    auc_axis.set_xlabel("step")
    width_axis.legend(loc="lower right", fontsize="small")
    for axis in (width_axis, flops_axis, auc_axis):
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _read_lines(path: str | os.PathLike) -> list[dict[str, Any]]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def plot_auc_vs_flops(records: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Test AUC (mean, with the seeds' spread) against training FLOPs relative to dense, one marker
    series per method (several FLOPs levels per method where the records have them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = {r["model"]: r for r in records if r["method"] == "dense"}
    figure, axes = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in records):
        rows = sorted((r for r in records if r["method"] == method and r["model"] in dense),
                      key=lambda r: r["train_flops"])
        x = [r["train_flops"] / dense[r["model"]]["train_flops"] for r in rows]
        axes.errorbar(x, [r["auc_mean"] for r in rows], yerr=[r.get("auc_std", 0.0) for r in rows], marker="o",
                      capsize=3, label=method, linestyle="-" if len(rows) > 1 else "none")
    axes.set_xlabel("training FLOPs / dense")
    axes.set_ylabel("test AUC")
    axes.grid(alpha=0.3)
    axes.legend()
    axes.set_title(title)
    figure.tight_layout()
    target = Path(path)
    figure.savefig(target, dpi=120)
    plt.close(figure)
    return target

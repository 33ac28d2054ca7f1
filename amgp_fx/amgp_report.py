"""Reading an AMGP run: a phase table, a method comparison table, a PNG of the training curve, and
the training FLOPs AMGP saved (:class:`FlopsMeter`).

Inputs are plain records: the ``amgp_phase`` records an ``AmgpHook`` writes to the metrics log (or
``hook.history``), the ``train`` and ``eval`` records of ``amgp_fx.train.train``, and the benchmark
records of ``tools/bench_amgp.py``. matplotlib is imported only when a plot is drawn. FLOPs are
written in a unit that fits (:mod:`amgp_fx.report_format`).

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

from amgp_fx.paired_stats import paired_differences
from amgp_fx.report_format import flops_scale

__all__ = ["FlopsMeter", "phase_records", "phase_table", "comparison_table", "best_per_method", "add_paired",
           "plot_run", "plot_auc_vs_flops"]


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
    steps, flops = sum(p["steps"] for p in phases), sum(p["flops"] for p in phases)
    per_step, per_step_unit = flops_scale(max((p["flops_per_step"] for p in phases), default=0.0))
    total, total_unit = flops_scale(flops)  # one unit per column, from its largest value (the total row)
    rows = [[p["phase"], p["cycle"], f"{p['start']}-{p['end']}", p["width"], p["flops_per_step"] / per_step,
             p["flops"] / total, p["wall_clock_s"], p.get("peak_memory_bytes", 0) / 2**20] for p in phases]
    if phases:
        rows.append(["total", "", str(steps), "", flops / max(steps, 1) / per_step, flops / total,
                     sum(p["wall_clock_s"] for p in phases),
                     max(p.get("peak_memory_bytes", 0) for p in phases) / 2**20])
    headers = ["phase", "cycle", "steps", "width", f"{per_step_unit}/step", total_unit, "wall-clock (s)",
               "peak memory (MiB)"]
    return tabulate(rows, headers=headers, tablefmt=tablefmt, floatfmt=".3g")


def best_per_method(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each (model, method) at its own best learning rate, with paired differences to dense.

    ``records`` hold one entry per (model, method, lr) with ``auc_mean`` and ``per_seed`` runs.
    The best rate is the one with the highest mean AUC over the seeds that every rate of the method
    has run (a grid cut short by a GPU call's time must not pick a rate for one lucky seed; with none
    in common, over each rate's own seeds); the chosen record gains ``selected_on_seeds``,
    ``lr_grid`` (every rate tried with its mean and spread) and, for other methods than dense,
    ``paired_vs_dense``: per seed, its AUC minus dense's (at dense's own best rate) on the same
    seed, their mean, sample standard deviation, 95% interval and verdict, and on how many seeds it
    won (:func:`amgp_fx.paired_stats.paired_differences`).

    Example:
        >>> runs = lambda *aucs: [{"seed": i, "auc": a} for i, a in enumerate(aucs)]
        >>> rows = [dict(model="m", method="dense", lr=1e-3, auc_mean=0.80, per_seed=runs(0.80, 0.80)),
        ...         dict(model="m", method="dense", lr=3e-4, auc_mean=0.79, per_seed=runs(0.79, 0.79)),
        ...         dict(model="m", method="amgp", lr=1e-3, auc_mean=0.805, per_seed=runs(0.81, 0.80))]
        >>> best = best_per_method(rows)
        >>> [(r["method"], r["lr"]) for r in best], best[1]["paired_vs_dense"]["per_seed"]
        ([('dense', 0.001), ('amgp', 0.001)], [0.01, 0.0])
    """
    by_method: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in records:
        by_method.setdefault((r["model"], r["method"]), []).append(r)
    chosen: dict[tuple, dict[str, Any]] = {}
    for key, rates in by_method.items():
        common = set.intersection(*({run["seed"] for run in r["per_seed"]} for r in rates))

        def score(r: Mapping[str, Any]) -> float:
            aucs = [run["auc"] for run in r["per_seed"] if run["seed"] in common]
            return sum(aucs) / len(aucs) if aucs else r["auc_mean"]

        best = max(rates, key=score)  # the first of equals, as before
        chosen[key] = {**best, "selected_on_seeds": sorted(common) if common else None}
        chosen[key]["lr_grid"] = sorted(({"lr": r["lr"], "auc_mean": r["auc_mean"], "auc_std": r.get("auc_std", 0.0),
                                          "seeds": len(r["per_seed"])} for r in rates), key=lambda g: g["lr"])
    for key, record in chosen.items():
        dense = chosen.get((key[0], "dense"))
        if dense is None or record is dense:
            continue
        record["paired_vs_dense"] = {
            **paired_differences({run["seed"]: run["auc"] for run in record["per_seed"]},
                                 {run["seed"]: run["auc"] for run in dense["per_seed"]}),
            "dense_lr": dense["lr"]}
    return list(chosen.values())


def add_paired(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """AMGP's paired per-seed differences to every other method of its model, each at its own best
    rate (``best_per_method``'s records), offline and, where the runs have it, in the recurring stage:
    ``paired_vs`` -> method -> {"auc": ..., "recurring_auc": ...}. A claim "above small dense on every
    seed" reads ``paired_vs["small_dense"]["auc"]["wins"]``, not two means side by side."""
    for amgp in (r for r in records if r["method"] == "amgp"):
        others = [r for r in records if r["model"] == amgp["model"] and r["method"] != "amgp"]
        amgp["paired_vs"] = {
            other["method"]: {key: paired_differences({run["seed"]: run[key] for run in amgp["per_seed"]},
                                                      {run["seed"]: run[key] for run in other["per_seed"]})
                              for key in ("auc", "recurring_auc") if key in amgp["per_seed"][0]}
            for other in others}
    return records


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

    from amgp_fx.report_format import of_dense, ratio

    dense = {r["model"]: r for r in records if r["method"] == "dense"}
    rows = []
    for r in records:
        base = dense.get(r["model"])
        gap = f"{r['auc_mean'] - base['auc_mean']:+.4f}" if base else ""
        flops_ratio = of_dense(ratio(r["train_flops"], base["train_flops"])) if base else ""
        wall_ratio = of_dense(ratio(r["wall_clock_s"], base["wall_clock_s"])) if base else ""
        rows.append([r["model"], r["method"], f"{r['auc_mean']:.4f} +- {r.get('auc_std', 0.0):.4f}", gap,
                     f"{r['logloss_mean']:.4f}", f"{r['train_flops'] / 1e12:.4g}", flops_ratio,
                     f"{r['wall_clock_s']:.1f}", wall_ratio, r.get("samples", ""), len(r.get("seeds", ())),
                     f"{r['lr']:g}" if r.get("lr") is not None else ""])
    headers = ["model", "method", "test AUC", "AUC vs dense", "logloss", "train TFLOPs", "FLOPs vs dense",
               "wall-clock (s)", "wall-clock vs dense", "samples", "seeds", "lr"]
    return tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True)


def plot_run(records: Iterable[Mapping[str, Any]] | str | os.PathLike, path: str | os.PathLike,
             title: str | None = None) -> Path:
    """PNG of a training run over its steps: model width and FLOPs per step (AMGP runs), training loss
    and evaluation AUC, one panel each for what the records hold.

    Args:
        records: a metrics log (path or records) with ``amgp_phase``, ``train`` and ``eval`` records;
            several runs may share it if their records carry distinct ``label`` values (one line each).
        path: where the PNG goes.
    Returns:
        ``path``.
    Raises:
        ValueError: the records hold no ``amgp_phase``, ``train`` or ``eval`` record.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = _read_lines(records) if isinstance(records, (str, os.PathLike)) else list(records)
    kinds = {r.get("kind") for r in records}
    source = {"width": "amgp_phase", "flops": "amgp_phase", "train": "train", "eval": "eval"}  # panel -> records
    panels = [panel for panel, kind in source.items() if kind in kinds]
    if not panels:
        raise ValueError("no amgp_phase, train or eval records to plot; pass the metrics log of a training run")
    labels = list(dict.fromkeys(r.get("label", "") for r in records if r.get("kind") in set(source.values())))
    named = [label for label in labels if label]
    if len(named) == 1:  # one run: the trainer's unlabelled loss and eval records belong to the hook's label
        records, labels = [{**r, "label": r.get("label") or named[0]} for r in records], named
    figure, axes = plt.subplots(len(panels), 1, sharex=True, figsize=(8, 1.2 + 1.9 * len(panels)), squeeze=False)
    axis_of = dict(zip(panels, axes[:, 0]))
    phases_all = phase_records(r for r in records if r.get("kind") == "amgp_phase")
    divisor, unit = flops_scale(max((p["flops_per_step"] for p in phases_all), default=0.0))
    for index, label in enumerate(labels):
        color = f"C{index % 10}"
        mine = [r for r in records if r.get("label", "") == label]
        phases = phase_records(r for r in mine if r.get("kind") == "amgp_phase")
        if phases:
            steps = [p["start"] for p in phases] + [phases[-1]["end"]]
            axis_of["width"].step(steps, [p["width"] for p in phases] + [phases[-1]["width"]], where="post",
                                  color=color, label=label or None)
            axis_of["flops"].step(steps, [p["flops_per_step"] / divisor for p in phases]
                                  + [phases[-1]["flops_per_step"] / divisor], where="post", color=color)
        for kind, key, marker in (("train", "loss", None), ("eval", "auc", "o")):
            points = [(r["step"], r[key]) for r in mine if r.get("kind") == kind and r.get(key) is not None]
            if points and kind in axis_of:
                axis_of[kind].plot(*zip(*points), marker=marker, color=color, label=label or None)
    for kind, text in (("width", "width (share of units)"), ("flops", f"{unit} per step"),
                       ("train", "training loss"), ("eval", "eval AUC (held-out rows)")):
        if kind in axis_of:
            axis_of[kind].set_ylabel(text)
            axis_of[kind].grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    if len(labels) > 1:  # on every panel: each may show only some of the runs
        for axis in axes[:, 0]:
            if axis.get_legend_handles_labels()[0]:
                axis.legend(loc="best", fontsize="small")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


class FlopsMeter:
    """Training FLOPs of an AMGP run next to those of the same steps at full width (dense), as they run.

    Put it before the ``AmgpHook`` in ``train``'s hooks: at each step's end it adds the hook's count
    for the step (the model as it ran, at the step's rows) and the full-width count at the same rows,
    taken from a step that ran at full width (exact), else scaled from one by rows. Covers the steps
    of this ``train`` call (a resumed run: those since the resume).
    """

    def __init__(self, hook) -> None:
        self.hook = hook
        self.amgp_flops = 0
        self.steps = 0
        self._rows: dict[int, int] = {}  # rows per step -> steps
        self._full: dict[int, int] = {}  # rows per step -> full-width FLOPs of a step

    def on_step_end(self, ctx) -> None:
        rows = int(ctx.batch.num_rows) if getattr(ctx, "batch", None) is not None else int(ctx.config.batch_size)
        flops = int(self.hook.step_flops(ctx, batch_size=rows).total)
        self.amgp_flops += flops
        self.steps += 1
        self._rows[rows] = self._rows.get(rows, 0) + 1
        if self.hook.width() >= 1.0:
            self._full.setdefault(rows, flops)

    def full_flops(self) -> int | None:
        """FLOPs the same steps cost at full width; None when no step ran at full width."""
        if not self._full:
            return None
        known_rows, known = max(self._full.items())
        return int(sum(count * self._full.get(rows, known * rows / known_rows) for rows, count in self._rows.items()))

    def summary(self) -> dict[str, Any]:
        """JSON-ready: AMGP's and full width's training FLOPs over the same steps and their ratio."""
        from amgp_fx.report_format import ratio

        full = self.full_flops()
        return {"steps": self.steps, "train_flops": self.amgp_flops, "full_width_train_flops": full,
                "flops_vs_full_width": ratio(self.amgp_flops, full)}


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

"""Latency records as a table (tabulate), a JSON file and a PNG plot of latency against batch size.

The table puts each variant's p50 latency as a fraction of the baseline variant's (``p50 / p50
baseline``, same model, runtime and batch size) next to its FLOPs as a fraction of the baseline's
(``FLOPs / FLOPs baseline``), both written ``0.50x`` (:func:`amgp_fx.report_format.of_dense`), so a
reader sees at once how much of the FLOPs reduction turns into wall-clock time. samples/s is
``batch / p50``: the same statistic as the headline latency, not a mean that one slow call drags
down. matplotlib is imported only by :func:`plot_latency`.

Example:
    >>> dense = LatencyRecord("dlrm", "dense", "ort-cpu", 8, 2.0, 2.1, 2.2, 4000.0, 1000, "cpu", "")
    >>> half = dataclasses.replace(dense, variant="width-0.5", p50_ms=1.0, flops=400)
    >>> "0.50x" in format_table([dense, half]) and "0.40x" in format_table([dense, half])
    True
    >>> samples_per_s(half)
    8000.0
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["REPORT_VERSION", "RUNTIMES", "LatencyRecord", "format_table", "fractions", "load_records",
           "plot_latency", "samples_per_s", "save_records", "speedups"]

REPORT_VERSION = 1
RUNTIMES = ("ort-cuda", "ort-cuda-graph", "ort-cpu", "torch-eager", "torch-compile")


@dataclasses.dataclass(frozen=True)
class LatencyRecord:
    """One (model, variant, runtime, batch size) measurement; times in milliseconds."""

    model: str
    variant: str
    runtime: str
    batch_size: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    samples_per_s: float
    flops: int | None  # forward FLOPs per batch (FlopCounterMode), None when unknown
    device: str
    command: str

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyRecord:
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown LatencyRecord fields {sorted(unknown)}")
        return cls(**dict(data))


def speedups(records: Sequence[LatencyRecord], baseline_variant: str = "dense") -> dict[int, tuple[float, float]]:
    """``{index: (speedup, flops_ratio)}`` for records with a baseline at the same model/runtime/batch."""
    baseline = {(r.model, r.runtime, r.batch_size): r for r in records if r.variant == baseline_variant}
    result = {}
    for index, record in enumerate(records):
        base = baseline.get((record.model, record.runtime, record.batch_size))
        if base is None:
            continue
        speedup = base.p50_ms / record.p50_ms if record.p50_ms > 0 else float("nan")
        flops_ratio = base.flops / record.flops if base.flops and record.flops else float("nan")
        result[index] = (speedup, flops_ratio)
    return result


def fractions(records: Sequence[LatencyRecord], baseline_variant: str = "dense") -> dict[int, tuple[float, float]]:
    """``{index: (p50 / p50 baseline, FLOPs / FLOPs baseline)}``: each record as a fraction of its
    baseline (same model/runtime/batch); the inverse of :func:`speedups`."""
    return {index: (1 / speedup if speedup else float("nan"), 1 / flops if flops else float("nan"))
            for index, (speedup, flops) in speedups(records, baseline_variant).items()}


def samples_per_s(record: LatencyRecord) -> float:
    """Rows per second at the p50 latency (``batch / p50``): consistent with the p50 column."""
    return record.batch_size / (record.p50_ms / 1e3) if record.p50_ms > 0 else float("nan")


def format_table(records: Sequence[LatencyRecord], baseline_variant: str = "dense", tablefmt: str = "github") -> str:
    """A tabulate table, one row per record: p50/p90/p99, samples/s at p50, FLOPs per batch, and p50
    and FLOPs as fractions of ``baseline_variant`` (``0.50x``: half of the baseline's)."""
    from tabulate import tabulate

    from amgp_fx.report_format import flops_text, of_dense

    ratios = fractions(records, baseline_variant)
    rows = []
    for index, r in enumerate(records):
        p50_ratio, flops_ratio = ratios.get(index, (None, None))
        rows.append([
            r.model, r.variant, r.runtime, r.batch_size, f"{r.p50_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.p99_ms:.3f}",
            f"{samples_per_s(r):,.0f}", flops_text(r.flops), of_dense(p50_ratio), of_dense(flops_ratio),
        ])
    headers = ["model", "variant", "runtime", "batch", "p50 ms", "p90 ms", "p99 ms", "samples/s (at p50)",
               "FLOPs/batch", f"p50 vs {baseline_variant}", f"FLOPs vs {baseline_variant}"]
    return tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True)


def save_records(records: Sequence[LatencyRecord], path: str | os.PathLike,
                 metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``{"version", "metadata", "records"}`` JSON atomically (:func:`amgp_fx.fileio.atomic_write_text`)."""
    from amgp_fx.fileio import atomic_write_text

    target = Path(path)
    payload = {"version": REPORT_VERSION, "metadata": dict(metadata or {}), "records": [r.to_dict() for r in records]}
    atomic_write_text(target, json.dumps(payload, indent=1) + "\n")  # fsynced: a killed run keeps the last one
    return target


def load_records(path: str | os.PathLike) -> list[LatencyRecord]:
    """Read a file written by :func:`save_records`; raises ValueError on another version."""
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    if payload.get("version") != REPORT_VERSION:
        raise ValueError(f"{path}: latency report version {payload.get('version')!r}, expected {REPORT_VERSION}")
    return [LatencyRecord.from_dict(record) for record in payload["records"]]


def plot_latency(records: Sequence[LatencyRecord], path: str | os.PathLike, title: str = "") -> Path:
    """PNG: p50 latency (ms, log) against batch size (log2), one panel per model, a line per variant/runtime."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    models = list(dict.fromkeys(r.model for r in records))
    variants = list(dict.fromkeys(r.variant for r in records))
    runtimes = list(dict.fromkeys(r.runtime for r in records))
    figure = Figure(figsize=(5.5 * max(len(models), 1), 4.2))
    axes = figure.subplots(1, max(len(models), 1), squeeze=False)
    for axis, model in zip(axes[0], models):
        lines = {}
        for r in records:
            if r.model == model:
                lines.setdefault((r.variant, r.runtime), []).append((r.batch_size, r.p50_ms))
        for (variant, runtime), points in sorted(lines.items()):
            points.sort()
            axis.plot(*zip(*points), linestyle=("-", "--", ":", "-.")[variants.index(variant) % 4],
                      color=f"C{runtimes.index(runtime) % 10}", marker="o", markersize=3,
                      label=f"{runtime} / {variant}")
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        sizes = sorted({r.batch_size for r in records if r.model == model})
        axis.set_xticks(sizes, [str(size) for size in sizes])  # the batch sizes timed, as numbers
        times = [r.p50_ms for r in records if r.model == model]
        axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))  # 0.05, not 5 x 10^-2
        axis.yaxis.set_minor_formatter(FormatStrFormatter("%g") if max(times) < 10 * min(times) else NullFormatter())
        axis.set_xlabel("batch size")
        axis.set_ylabel("p50 latency (ms)")
        axis.set_title(model)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    devices = sorted({r.device for r in records})
    figure.suptitle(title or f"latency vs batch size ({', '.join(devices)})", fontsize=9)
    figure.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=120)
    return target


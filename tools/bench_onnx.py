#!/usr/bin/env python3
"""Latency of dense vs compact recommendation models, against what the device can physically reach.

One command regenerates ``docs/results/onnx_latency.json`` and its table (issue 16):

1. Builds each ``model:preset`` config's variants: ``dense``; ``amgp-pruned-R`` (every hidden group
   keeps its R most important units); ``amgp-emb-R`` (a FLOPs-target plan over hidden AND embedding
   groups, at the FLOPs of ``amgp-pruned-R``: pruning the embedding dim shrinks gathers and the
   interaction too); ``dense-fused-emb`` (one Gather for all tables, ONNX only); optional stand-ins.
2. Exports each to ONNX (fp32, parity-checked), converts to every ``--precisions`` format with
   :func:`amgp_fx.export_precision.convert_precision` (parity against fp32 torch recorded). Models,
   exports and conversions are made by the first step that needs them, so they are steps of the
   budget too.
3. Calibrates the time model on the device (:func:`amgp_fx.latency_model.calibrate`: GEMM throughput
   per precision, copy and gather bandwidth, ORT's per-node launch time), or loads ``--constants``,
   and predicts every variant's latency from its ONNX graph.
4. Times the runtimes step by step, most important first (fp32 ORT / torch eager / CUDA graphs /
   torch.compile on dense and pruned variants; then fp16/bf16; then the extra variants). A step starts
   only when what it needs (build, export, conversion, timing) fits in what is left of
   ``--time-budget-s``, estimated from the work of the same kind done so far (:class:`Budget`), so the
   run ends near its budget having lost only the least important steps. ORT runs with
   ``--ort-opt-level`` and TF32 as torch (``--tf32`` sets both); torch.compile in ``--compile-mode``.
5. Writes the records, the calibration, the parity reports and the predictions (JSON), the summary
   table (measured speedup of each compact variant over dense in the same precision and runtime, the
   predicted speedup, the share of it reached, the FLOPs ratio, and each runtime against torch eager)
   as markdown beside it, and the plot. The JSON and the table are rewritten atomically after every
   export, conversion and timing step (``metadata.complete`` is false until the end), so a run killed
   from outside keeps all it measured. ``--from-json`` re-renders the table from a results file
   (``--table``/``--plot`` write it and the plot) and ``--docs`` splices it into docs/benchmarks.md
   between the onnx-latency markers.

TensorRT is not tried: the GPU machine has no package registry and its wheels (tensorrt-cu12/13 libs)
are GBs, over what a device call can carry.

GPU run (H200; about 8 minutes, bounded by ``--time-budget-s``; onnxruntime-gpu from docs/onnx.md):
    PYTHONUNBUFFERED=1 python3 tools/bench_onnx.py --out $OUT/onnx_latency.json
then, here: python3 tools/bench_onnx.py --from-json docs/results/onnx_latency.json --docs docs/benchmarks.md
CPU smoke run (seconds):
    python3 tools/bench_onnx.py --configs dlrm:small --batch-sizes 8 32 --iters 3 --warmup 1 --out /tmp/l.json
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib
import json
import logging
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import amgp_fx  # noqa: E402
from amgp_fx import models  # noqa: E402
from amgp_fx.bench import (OPT_LEVELS, RUNTIMES, benchmark_onnx, benchmark_torch, count_forward_flops,  # noqa: E402
                           cuda_provider_available)
from amgp_fx.export import export_onnx  # noqa: E402
from amgp_fx.export_precision import PRECISIONS, cast_module, convert_precision  # noqa: E402
from amgp_fx.fileio import atomic_write_text  # noqa: E402
from amgp_fx.latency_model import QUICK_CPU_CALIBRATION, DeviceConstants, calibrate, predict_latency  # noqa: E402
from amgp_fx.latency_report import format_table, load_records, plot_latency, save_records  # noqa: E402
from amgp_fx.passes import default_passes  # noqa: E402
from amgp_fx.passes.fuse_embeddings import FUSE_EMBEDDINGS_PASS  # noqa: E402
from amgp_fx.passes.pair_gather import PAIR_GATHER_PASS  # noqa: E402

RUNTIME_ORDER = ("ort-cuda", "torch-eager", "ort-cuda-graph", "torch-compile", "ort-cpu")
GPU_RUNTIMES = ("ort-cuda", "torch-eager", "ort-cuda-graph", "torch-compile")
CPU_RUNTIMES = ("ort-cpu", "torch-eager")
DOCS_START, DOCS_END = "<!-- onnx-latency-table:start -->", "<!-- onnx-latency-table:end -->"
TENSORRT_NOTE = ("TensorRT EP not tried: the GPU machine has no package registry and the TensorRT wheels "
                 "(tensorrt-cu13 and its libs) are GBs, beyond what a device call carries")


@dataclasses.dataclass
class Variant:
    config: str  # "dlrm:default"
    label: str  # "dense", "amgp-pruned-0.5", ...
    model: torch.nn.Module | None  # None until built by ``make`` (the first step that needs it)
    factory: Callable[[int], tuple] | None  # batch size -> CPU inputs
    flops: dict[int, int]
    core: bool = True  # dense and the pruned variants: timed first
    onnx_only: bool = False
    onnx: dict[str, Path] = dataclasses.field(default_factory=dict)  # precision -> .onnx
    make: Callable[[], torch.nn.Module] | None = None
    passes: object = None  # export passes (None: the defaults)
    broken: dict[str, str] = dataclasses.field(default_factory=dict)  # "model"/"fp32"/"fp16"/... -> why it failed

    def name(self, precision: str) -> str:
        return self.label if precision == "fp32" else f"{self.label}-{precision}"


def parse_args(argv):
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["dlrm:default"],
                        help="model:preset pairs (models.build_model); e.g. also dlrm:mlperf dcn_v2:default")
    parser.add_argument("--pruned-ratios", nargs="*", type=float, default=[0.5, 0.25],
                        help="keep ratios of the amgp-fx pruned variants (hidden units kept per group)")
    parser.add_argument("--no-embedding-variants", dest="embedding_variants", action="store_false",
                        help="skip amgp-emb-R (hidden + embedding groups pruned to amgp-pruned-R's FLOPs)")
    parser.add_argument("--width-ratios", nargs="*", type=float, default=[],
                        help="stand-in compact variants: MLP widths scaled by these ratios")
    parser.add_argument("--compact-from", nargs="*", default=[], metavar="CONFIG=PATH",
                        help="compact model per config, saved with torch.export.save (.pt2)")
    parser.add_argument("--no-fused-embeddings", dest="fused_embeddings", action="store_false",
                        help="skip the dense-fused-emb ONNX variant")
    parser.add_argument("--pair-gather", action="store_true",
                        help="add the dense-pair-gather ONNX variant: DLRM's pair gather z[:, li, lj] exported as one "
                             "flat Gather instead of Transpose-GatherND-Transpose (amgp_fx.passes.pair_gather)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS,
                        default=["fp32", "fp16", "bf16"] if gpu else ["fp32", "fp16"],
                        help="numeric formats (default: all on a GPU; fp32 fp16 on a CPU, whose ORT has no bf16)")
    parser.add_argument("--batch-sizes", nargs="+", type=int,
                        default=[256, 1024, 4096, 16384, 65536] if gpu else [256, 1024, 4096])
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=None,
                        help=f"default: {' '.join(GPU_RUNTIMES)} with a GPU, else {' '.join(CPU_RUNTIMES)}")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--tf32", action="store_true", help="TF32 fp32 matmuls in both PyTorch and ONNX Runtime")
    parser.add_argument("--ort-opt-level", choices=tuple(OPT_LEVELS), default="all")
    parser.add_argument("--compile-mode", default="reduce-overhead" if gpu else "default",
                        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                        help="torch.compile mode (default on a GPU: reduce-overhead, torch's CUDA graphs, as ORT's "
                             "ort-cuda-graph rows; max-autotune compiles for minutes per shape)")
    parser.add_argument("--compile-static", action="store_true",
                        help="torch.compile with automatic dynamic shapes (two compiles) instead of dynamic=True")
    parser.add_argument("--constants", default=None, help="device constants JSON (DeviceConstants) instead of "
                                                           "calibrating here")
    parser.add_argument("--out", default="docs/results/onnx_latency.json")
    parser.add_argument("--plot", default=None, help="PNG path (default: --out with .png; with --from-json: none)")
    parser.add_argument("--table", default=None, help="markdown summary (default: --out with .md; with --from-json: "
                                                      "none)")
    parser.add_argument("--from-json", default=None, metavar="RESULTS.json",
                        help="measure nothing: render the summary table of an earlier run")
    parser.add_argument("--docs", default=None, metavar="FILE.md",
                        help=f"replace the text between {DOCS_START} and {DOCS_END} in FILE.md with the table")
    parser.add_argument("--workdir", default=None, help="where the .onnx files go (default: a temp folder)")
    parser.add_argument("--time-budget-s", type=float, default=450.0,
                        help="start no build, export, conversion or timing step that would not end within this "
                             "many seconds, judged by the work of its kind so far (keeps the run under ~8 min)")
    return parser.parse_args(argv)


def say(message: str) -> None:
    print(f"[bench_onnx {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------------------ variants


def width_scaled_overrides(name: str, preset: str, ratio: float, keep_last: bool) -> dict:
    """Every ``*_mlp`` width of the preset times ``ratio`` (DLRM's bottom-MLP output kept when ``keep_last``)."""
    preset_kwargs = importlib.import_module(f"amgp_fx.models.{name}").PRESETS[preset]
    overrides = {}
    for key, widths in preset_kwargs.items():
        if key.endswith("_mlp") and isinstance(widths, (tuple, list)) and widths:
            scaled = [max(1, round(w * ratio)) for w in widths]
            if keep_last and key == "bottom_mlp":
                scaled[-1] = widths[-1]  # the bottom MLP's output width is the embedding dim
            overrides[key] = tuple(scaled)
    return overrides


def cpu_inputs_factory(model) -> Callable[[int], tuple]:
    """``batch_size -> (dense, sparse)`` on the CPU, from the dense model's ``example_inputs``."""
    if not hasattr(model, "example_inputs"):
        raise ValueError(f"{type(model).__name__} has no example_inputs(batch_size)")
    return lambda batch_size: tuple(x.cpu() for x in model.example_inputs(batch_size))


def amgp_pruned(name: str, preset: str, keep_ratio: float, multiple: int = 8) -> torch.nn.Module:
    """The preset pruned by amgp-fx: every prunable hidden group keeps its ``keep_ratio`` most
    important units by L2 magnitude (rounded to a multiple of 8); returns the runnable graph module."""
    torch.manual_seed(0)
    model = models.build_model(name, preset)
    graph = amgp_fx.analyze(model, model.example_inputs(8))
    keep = {}
    for group_id, scores in amgp_fx.score(graph, "l2", groups=graph.prunable_groups(("hidden",))).items():
        count = max(multiple, int(round(len(scores) * keep_ratio / multiple)) * multiple)
        keep[group_id] = scores.argsort(descending=True)[: min(count, len(scores))].sort().values.tolist()
    amgp_fx.shrink_(graph, keep)
    return graph.module


def amgp_embedding_plan(name: str, preset: str, flops_target: float) -> torch.nn.Module:
    """The preset pruned to ``flops_target`` x its FLOPs by a plan over hidden AND embedding groups
    (:func:`amgp_fx.plan_pruning`): the embedding dim shrinks with the MLPs, and with it the gathers
    and the interaction that hidden-only pruning leaves at full size."""
    torch.manual_seed(0)
    model = models.build_model(name, preset)
    graph = amgp_fx.analyze(model, model.example_inputs(8))
    plan = amgp_fx.plan_pruning(graph, flops_target=flops_target, kinds=("hidden", "embedding"))
    if not any(group.kind == "embedding" for group in plan.groups):
        raise ValueError(f"the plan for {name}:{preset} prunes no embedding group")
    amgp_fx.apply_plan(graph, plan)
    return graph.module


def plan_config(config: str, args, compact_paths: dict, dense_model: torch.nn.Module) -> list[Variant]:
    """The variants of one ``model:preset`` config, the dense model first; all but dense are built by the
    first step that needs them, so a run cut short by its budget builds only what it times."""
    name, preset = config.split(":")
    factory = cpu_inputs_factory(dense_model)
    dense = Variant(config, "dense", dense_model, factory, {}, core=True)
    variants = [dense]

    def add(label: str, make: Callable[[], torch.nn.Module], core: bool) -> Variant:
        variants.append(Variant(config, label, None, factory, {}, core=core, make=make))
        return variants[-1]

    pruned = {}
    for keep_ratio in args.pruned_ratios:
        pruned[keep_ratio] = add(f"amgp-pruned-{keep_ratio:g}",
                                 lambda r=keep_ratio: amgp_pruned(name, preset, r), core=True)
    for ratio in args.width_ratios:
        add(f"width-scaled-{ratio:g}", lambda r=ratio: width_scaled_model(name, preset, r), core=False)
    if config in compact_paths:
        path = Path(compact_paths[config])
        add(f"amgp-{path.stem}", lambda: torch.export.load(str(path)).module(), core="pruned" in path.stem)
    if args.embedding_variants:
        for keep_ratio, source in pruned.items():
            add(f"amgp-emb-{keep_ratio:g}", lambda v=source: embedding_plan_model(name, preset, dense, v, factory),
                core=False)
    if args.fused_embeddings:
        variants.append(Variant(config, "dense-fused-emb", dense_model, factory, {}, core=False, onnx_only=True,
                                passes=default_passes().with_pass(FUSE_EMBEDDINGS_PASS)))
    if args.pair_gather:
        variants.append(Variant(config, "dense-pair-gather", dense_model, factory, {}, core=False, onnx_only=True,
                                passes=default_passes().with_pass(PAIR_GATHER_PASS)))
    return variants


def width_scaled_model(name: str, preset: str, ratio: float) -> torch.nn.Module:
    try:
        return models.build_model(name, preset, **width_scaled_overrides(name, preset, ratio, False))
    except ValueError:
        return models.build_model(name, preset, **width_scaled_overrides(name, preset, ratio, True))


def embedding_plan_model(name: str, preset: str, dense: Variant, pruned: Variant, factory) -> torch.nn.Module:
    """``amgp-emb-R``: hidden and embedding groups pruned to the FLOPs of ``amgp-pruned-R`` (at batch 8)."""
    pruned_model = pruned.model if pruned.model is not None else pruned.make()
    target = count_forward_flops(pruned_model, factory(8)) / count_forward_flops(dense.model, factory(8))
    return amgp_embedding_plan(name, preset, target)


def export_fp32(variant: Variant, workdir: Path) -> dict:
    """The parity-checked fp32 export; returns its parity record."""
    path = workdir / f"{variant.config.replace(':', '-')}-{variant.label}.onnx"
    started = time.monotonic()
    report = export_onnx(variant.model, variant.factory(8), path, parity_provider="auto", passes=variant.passes)
    variant.onnx["fp32"] = Path(report.path)
    say(f"{variant.config} {variant.label}: exported {report.onnx_bytes / 1e6:.1f} MB "
        f"(+{report.external_data_bytes / 1e6:.1f} MB external) in {time.monotonic() - started:.1f}s, "
        f"passes {report.passes_applied}, parity max abs diff {report.max_abs_diff:.2e} on {report.parity_provider}")
    return {"model": variant.config, "variant": variant.label, "precision": "fp32",
            "max_abs_diff": report.max_abs_diff, "atol": report.atol, "rtol": report.rtol,
            "provider": report.parity_provider, "reference": "fp32 PyTorch", "converter": report.exporter}


def convert_variant(variant: Variant, precision: str) -> dict:
    """``precision``'s copy of the fp32 export, parity-checked against fp32 torch; returns its report."""
    converted = convert_precision(variant.onnx["fp32"], precision, variant.model, variant.factory(64), provider="auto")
    variant.onnx[precision] = Path(converted.path)
    say(f"{variant.config} {variant.label} {precision}: max abs diff {converted.max_abs_diff:.2e} vs fp32 torch "
        f"(tolerance {converted.atol:g} + {converted.rtol:g}|x|), fp32 ops kept {list(converted.kept_fp32_ops)}")
    return {"model": variant.config, "variant": variant.label, **converted.to_dict()}


# ---------------------------------------------------------------------------------------- time model


def device_constants(args, device: torch.device, runtimes) -> DeviceConstants:
    if args.constants:
        return DeviceConstants.from_dict(json.loads(Path(args.constants).read_text(encoding="utf-8")))
    ort_provider = None
    if any(r.startswith("ort-cuda") for r in runtimes):
        ort_provider = "cuda"
    elif "ort-cpu" in runtimes:
        ort_provider = "cpu"
    if device.type == "cuda":
        return calibrate(str(device), ort_provider=ort_provider, tf32=args.tf32)
    return calibrate("cpu", ort_provider=ort_provider, **QUICK_CPU_CALIBRATION)


def predictions(variant: Variant, precision: str, batch_sizes, constants: DeviceConstants) -> list[dict]:
    """The time model's latency of ``variant``'s ``precision`` file at every batch size."""
    import onnx

    graph = onnx.load(str(variant.onnx[precision]), load_external_data=False)  # read once, predicted at every size
    rows = []
    for batch_size in batch_sizes:
        prediction = predict_latency(graph, batch_size, constants)
        rows.append({"model": variant.config, "variant": variant.name(precision), "precision": precision,
                     "batch_size": batch_size, "predicted_ms": prediction.ms,
                     "ms_by_class": {k: v * 1e3 for k, v in prediction.seconds_by_class.items()},
                     "gemm_flops": prediction.flops, "bytes": prediction.bytes, "kernels": prediction.kernels})
    return rows


# --------------------------------------------------------------------------------------------- summary


def _precision_of(variant: str) -> tuple[str, str]:
    for precision in PRECISIONS[1:]:
        if variant.endswith(f"-{precision}"):
            return variant[: -len(precision) - 1], precision
    return variant, "fp32"


def summary_rows(records, predicted: list[dict]) -> list[dict]:
    """One row per compact record: measured speedup over dense (same model, precision, runtime, batch),
    the time model's predicted speedup and the share reached, the FLOPs ratio and the share of it,
    and the record's latency against torch eager (same variant, precision and batch)."""
    by_key = {(r.model, r.variant, r.runtime, r.batch_size): r for r in records}
    predicted_ms = {(p["model"], p["variant"], p["batch_size"]): p["predicted_ms"] for p in predicted}
    rows = []
    for r in records:
        base_label, precision = _precision_of(r.variant)
        dense_name = "dense" if precision == "fp32" else f"dense-{precision}"
        dense = by_key.get((r.model, dense_name, r.runtime, r.batch_size))
        eager = by_key.get((r.model, r.variant, "torch-eager", r.batch_size))
        row = {"model": r.model, "variant": base_label, "precision": precision, "runtime": r.runtime,
               "batch": r.batch_size, "p50_ms": r.p50_ms,
               "vs_torch_eager": eager.p50_ms / r.p50_ms if eager and r.runtime != "torch-eager" else None}
        if dense is not None and r.variant != dense_name:
            measured = dense.p50_ms / r.p50_ms
            row.update(dense_p50_ms=dense.p50_ms, speedup=measured)
            dense_predicted = predicted_ms.get((r.model, dense_name, r.batch_size))
            own_predicted = predicted_ms.get((r.model, r.variant, r.batch_size))
            if dense_predicted and own_predicted:
                row.update(predicted_speedup=dense_predicted / own_predicted,
                           share_of_predicted=measured / (dense_predicted / own_predicted))
            if dense.flops and r.flops:
                row.update(flops_ratio=dense.flops / r.flops, share_of_flops_ratio=measured / (dense.flops / r.flops))
        rows.append(row)
    return rows


def _x(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def render_table(rows: list[dict], metadata: dict) -> str:
    """Markdown: compact vs dense (speedup, predicted, share) and every runtime vs torch eager."""
    lines = ["| model | precision | runtime | variant | batch | dense p50 (ms) | p50 (ms) | speedup | predicted "
             "speedup | share of predicted | FLOPs ratio | share of FLOPs ratio |", "|" + "---|" * 12]
    compact = [r for r in rows if "speedup" in r]
    for r in sorted(compact, key=lambda r: (r["model"], r["precision"], r["runtime"], r["variant"], r["batch"])):
        lines.append(f"| {r['model']} | {r['precision']} | {r['runtime']} | {r['variant']} | {r['batch']} | "
                     f"{r['dense_p50_ms']:.3f} | {r['p50_ms']:.3f} | {_x(r['speedup'])} | "
                     f"{_x(r.get('predicted_speedup'))} | {_pct(r.get('share_of_predicted'))} | "
                     f"{_x(r.get('flops_ratio'))} | {_pct(r.get('share_of_flops_ratio'))} |")
    lines += ["", "Each runtime against torch eager (same variant, precision and batch; > 1: faster than eager):", "",
              "| model | precision | variant | batch | " + " | ".join(f"{rt} p50 (ms)" for rt in RUNTIME_ORDER)
              + " | best ORT vs eager | torch.compile vs eager |", "|" + "---|" * (6 + len(RUNTIME_ORDER))]
    cells = {}
    for r in rows:
        cells.setdefault((r["model"], r["precision"], r["variant"], r["batch"]), {})[r["runtime"]] = r["p50_ms"]
    for (model, precision, variant, batch), times in sorted(cells.items()):
        eager = times.get("torch-eager")
        ort = [times[rt] for rt in ("ort-cuda", "ort-cuda-graph", "ort-cpu") if rt in times]
        best_ort = eager / min(ort) if eager and ort else None
        compiled = eager / times["torch-compile"] if eager and "torch-compile" in times else None
        lines.append(f"| {model} | {precision} | {variant} | {batch} | "
                     + " | ".join(f"{times[rt]:.3f}" if rt in times else "-" for rt in RUNTIME_ORDER)
                     + f" | {_x(best_ort)} | {_x(compiled)} |")
    constants = metadata.get("device_constants") or {}
    if constants:
        rates = ", ".join(f"{k} {v / 1e12:.3g} TFLOP/s" for k, v in constants["gemm_flops_per_s"].items())
        lines += ["", f"Time model constants ({constants['device']}): GEMM {rates}; copy "
                      f"{constants['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s, gather "
                      f"{constants['gather_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s, launch "
                      f"{constants['launch_s'] * 1e6:.1f} us per kernel and {constants.get('call_s', 0) * 1e6:.1f} "
                      f"us per call ({constants['source']})."]
    parity = [p for p in metadata.get("precision_reports", []) if p.get("precision") != "fp32"]
    if parity:
        lines += ["", "| model | variant | precision | max abs diff vs fp32 torch | tolerance (atol + rtol x |y|) "
                      "| ops kept fp32 | provider |", "|---|---|---|---|---|---|---|"]
        for p in parity:
            lines.append(f"| {p['model']} | {p['variant']} | {p['precision']} | {p['max_abs_diff']:.2e} | "
                         f"{p['atol']:g} + {p['rtol']:g} | {', '.join(p.get('kept_fp32_ops') or []) or '-'} | "
                         f"{p['provider']} |")
    if metadata.get("failures"):
        lines += ["", "Failures and skipped steps: " + "; ".join(metadata["failures"])]
    if metadata.get("complete") is False:
        lines += ["", "Partial run: it stopped before its end (killed or crashed); these are the steps it finished."]
    return "\n".join(lines)


def splice_docs(path: Path, table: str, command: str) -> None:
    text = path.read_text(encoding="utf-8")
    if DOCS_START not in text or DOCS_END not in text:
        raise SystemExit(f"{path} has no {DOCS_START} ... {DOCS_END} markers; add them where the table goes")
    head, rest = text.split(DOCS_START, 1)
    _, tail = rest.split(DOCS_END, 1)
    path.write_text(f"{head}{DOCS_START}\nGenerated by `{command}`.\n\n{table}\n{DOCS_END}{tail}", encoding="utf-8")


# ----------------------------------------------------------------------------------------------- steps


def step_order(variants, precisions, runtimes) -> list[tuple[Variant, str, str]]:
    """(variant, precision, runtime), most important first: fp32 core variants on every runtime, then
    the other precisions (torch.compile last among them), then the extra variants."""
    steps = []
    for variant in variants:
        for precision in precisions:
            for runtime in runtimes:
                ort = runtime.startswith("ort-")
                if variant.onnx_only and not ort:
                    continue
                if variant.core:
                    priority = 0 if precision == "fp32" else (1 if runtime != "torch-compile" else 3)
                else:
                    priority = 2 if precision == "fp32" else 4
                steps.append((priority, precisions.index(precision), RUNTIME_ORDER.index(runtime),
                              variants.index(variant), (variant, precision, runtime)))
    return [step[-1] for step in sorted(steps, key=lambda s: s[:4])]


def cuda_graph_records(variant: Variant, precision: str, args, common) -> list:
    """ORT CUDA graphs on the dynamic export with the batch dim fixed per session; when ONNX Runtime
    refuses that (nodes left on the CPU), on one static-batch export per batch size instead (fp32,
    converted to ``precision`` as the dynamic one was)."""
    try:
        return benchmark_onnx(variant.onnx[precision], variant.factory, args.batch_sizes, provider="cuda",
                              cuda_graph=True, **common)
    except Exception as error:  # noqa: BLE001
        say(f"{variant.config} {variant.name(precision)}: CUDA graph with a fixed batch dim failed "
            f"({type(error).__name__}: {error}); retrying on static-batch exports")
    variant.model.cpu()
    base = variant.onnx["fp32"]
    static, written = {}, []
    try:
        for batch_size in args.batch_sizes:
            path = base.with_name(f"{base.stem}-b{batch_size}.onnx")
            export_onnx(variant.model, variant.factory(batch_size), path, dynamic_batch=False, parity=False)
            written.append(path)
            if precision != "fp32":
                path = Path(convert_precision(path, precision, variant.model, variant.factory(batch_size),
                                              provider="auto").path)
                written.append(path)
            static[batch_size] = path
        return benchmark_onnx(static, variant.factory, args.batch_sizes, provider="cuda", cuda_graph=True, **common)
    finally:
        for path in written:
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".data").unlink(missing_ok=True)


def run_step(variant: Variant, precision: str, runtime: str, args, device, command) -> list:
    common = dict(warmup=args.warmup, iters=args.iters, variant=variant.name(precision), flops=variant.flops,
                  command=command)
    if runtime.startswith("ort-"):
        common.update(model=variant.config, use_tf32=args.tf32, opt_level=args.ort_opt_level)
        if runtime == "ort-cuda-graph":
            return cuda_graph_records(variant, precision, args, common)
        provider = "cpu" if runtime == "ort-cpu" else "cuda"
        return benchmark_onnx(variant.onnx[precision], variant.factory, args.batch_sizes, provider=provider, **common)
    compile_options = {"mode": args.compile_mode, **({} if args.compile_static else {"dynamic": True})}
    records = benchmark_torch(cast_module(variant.model, precision), variant.factory, args.batch_sizes,
                              mode=runtime.removeprefix("torch-"), device=device, model_name=variant.config,
                              compile_options=compile_options, tf32=args.tf32, **common)
    variant.model.cpu()  # benchmark_torch moved the fp32 model; exports and later steps use the CPU
    return records


class Budget:
    """``--time-budget-s``, and how long each kind of work took so far: a step starts only when the
    estimate of what it needs still fits. The estimate of a kind of work is the longest one of that kind
    in the same config; from another config, scaled by the dense models' parameter bytes; for a kind not
    seen yet, the longest piece of work seen at all (nothing seen: it starts)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.clock, self.start = seconds, clock, clock()
        self.seen: list[tuple[str, str, float]] = []  # (kind, config, seconds)
        self.sizes: dict[str, float] = {}  # config -> dense parameter bytes

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def estimate(self, kind: str, config: str) -> float:
        same = [t for k, c, t in self.seen if k == kind and c == config]
        if same:
            return max(same)
        size = self.sizes.get(config)
        other = [t * (size / self.sizes[c] if size and self.sizes.get(c) else 1.0)
                 for k, c, t in self.seen if k == kind]
        if other:
            return max(other)
        return max((t for _, _, t in self.seen), default=0.0)

    def needs(self, work: list[tuple[str, str]]) -> float:
        return sum(self.estimate(kind, config) for kind, config in work)

    def fits(self, work: list[tuple[str, str]]) -> bool:
        return self.elapsed() + self.needs(work) <= self.seconds

    @contextlib.contextmanager
    def timed(self, kind: str, config: str):
        started = self.clock()
        try:
            yield
        finally:
            self.seen.append((kind, config, self.clock() - started))


SKIPPED_FOR_TIME = "skipped for time"


class Run:
    """One benchmark run: the variants' models, files, parity reports, predictions and records, built
    step by step within the budget, and written to ``out`` (atomically) after every piece of work, so a
    run killed from outside still leaves all it measured; ``--from-json`` renders it."""

    def __init__(self, args, runtimes, device, command, constants, metadata, out: Path, table_path: Path,
                 workdir: Path, budget: Budget) -> None:
        self.args, self.runtimes, self.device, self.command, self.constants = args, runtimes, device, command, constants
        self.metadata, self.out, self.table_path, self.workdir, self.budget = metadata, out, table_path, workdir, budget
        self.records, self.failures, self.reports, self.predicted = [], [], [], []
        self.variants: list[Variant] = []

    # ------------------------------------------------------------------ durable results
    def save(self, complete: bool = False) -> str:
        metadata = {**self.metadata, "precision_reports": self.reports, "failures": self.failures,
                    "complete": complete, "seconds": self.budget.elapsed()}
        return write_outputs(self.records, metadata, self.predicted, self.out, self.table_path)

    def fail(self, what: str, error: BaseException) -> None:
        self.failures.append(f"{what}: {type(error).__name__}: {error}")
        say(f"FAILED {self.failures[-1]}")

    def skip(self, what: str, work) -> None:
        self.failures.append(f"{what}: {SKIPPED_FOR_TIME} (needs ~{self.budget.needs(work):.0f}s, "
                             f"{max(self.budget.left(), 0):.0f}s of the budget left)")

    # ------------------------------------------------------------------ work
    def add_config(self, config: str, compact_paths: dict) -> None:
        work = [("build", config)]
        if not self.budget.fits(work):
            self.skip(f"{config}", work)
            return
        name, preset = config.split(":")
        try:
            with self.budget.timed("build", config):
                torch.manual_seed(0)
                dense = models.build_model(name, preset)
                variants = plan_config(config, self.args, compact_paths, dense)
                self.budget.sizes[config] = float(sum(p.numel() * p.element_size() for p in dense.parameters()))
                self._count_flops(variants[0])
        except Exception as error:  # noqa: BLE001 - the other configs still run
            self.fail(f"{config} build", error)
            return
        for variant in variants[1:]:
            if variant.model is not None:
                variant.flops = variants[0].flops  # dense-fused-emb: the dense model
        self.variants += variants

    def _count_flops(self, variant: Variant) -> None:
        variant.flops = {b: count_forward_flops(variant.model, variant.factory(b)) for b in self.args.batch_sizes}

    def work_for(self, variant: Variant, precision: str, runtime: str) -> list[tuple[str, str]] | None:
        """What the step still needs done, in budget kinds; None when an earlier failure rules it out."""
        ort = runtime.startswith("ort-")
        needed = ["model"] + (["fp32"] + ([precision] if precision != "fp32" else []) if ort else [])
        if any(part in variant.broken for part in needed):
            return None
        work = []
        if variant.model is None:
            work.append(("build", variant.config))
        if ort and "fp32" not in variant.onnx:
            work.append(("export", variant.config))
        if ort and precision != "fp32" and precision not in variant.onnx:
            work.append((f"convert-{precision}", variant.config))
        return work + [(f"time-{runtime}", variant.config)]

    def step(self, variant: Variant, precision: str, runtime: str) -> None:
        step = f"{variant.config} {variant.name(precision)} {runtime}"
        work = self.work_for(variant, precision, runtime)
        if work is None:
            return  # its model or file failed, and that failure is recorded once
        if not self.budget.fits(work):
            self.skip(step, work)
            return
        if variant.model is None and not self._build(variant):
            return
        if runtime.startswith("ort-"):
            if "fp32" not in variant.onnx and not self._export(variant):
                return
            if precision != "fp32" and precision not in variant.onnx and not self._convert(variant, precision):
                return
        started = time.monotonic()
        try:
            with self.budget.timed(f"time-{runtime}", variant.config):
                new = run_step(variant, precision, runtime, self.args, self.device, self.command)
        except Exception as error:  # noqa: BLE001 - one failing step must not end the sweep
            self.fail(step, error)
            return
        say(f"{step}: {time.monotonic() - started:.1f}s")
        self.records.extend(new)
        print(format_table(new), flush=True)
        self.save()
        gc.collect()

    def _build(self, variant: Variant) -> bool:
        try:
            with self.budget.timed("build", variant.config):
                variant.model = variant.make()
                self._count_flops(variant)  # fake tensors: cheap
        except Exception as error:  # noqa: BLE001 - e.g. a model without embedding groups: the rest still runs
            variant.broken["model"] = str(error)
            self.fail(f"{variant.config} {variant.label} build", error)
            return False
        return True

    def _export(self, variant: Variant) -> bool:
        try:
            with self.budget.timed("export", variant.config):
                self.reports.append(export_fp32(variant, self.workdir))
                self.predicted += predictions(variant, "fp32", self.args.batch_sizes, self.constants)
        except Exception as error:  # noqa: BLE001 - the torch runtimes can still run
            variant.broken["fp32"] = str(error)
            self.fail(f"{variant.config} {variant.label} export", error)
            return False
        finally:
            self.save()
        return True

    def _convert(self, variant: Variant, precision: str) -> bool:
        try:
            with self.budget.timed(f"convert-{precision}", variant.config):
                self.reports.append(convert_variant(variant, precision))
                self.predicted += predictions(variant, precision, self.args.batch_sizes, self.constants)
        except Exception as error:  # noqa: BLE001 - recorded; the other precisions still run
            variant.broken[precision] = str(error)
            self.fail(f"{variant.config} {variant.label} {precision} ONNX", error)
            return False
        finally:
            self.save()
        return True


def write_outputs(records, metadata, predicted, out: Path, table_path: Path) -> str:
    """The JSON (records, metadata, predictions, summary) and the markdown table, each written atomically."""
    rows = summary_rows(records, predicted)
    save_records(records, out, {**metadata, "predictions": predicted, "summary": rows})
    table = render_table(rows, metadata)
    atomic_write_text(table_path, table + "\n")
    return table


def render_only(args, command: str) -> int:
    """The table of a results file (complete or not); ``--table``/``--plot`` also write the markdown and
    the plot, so a run killed before its end can still be reported."""
    path = Path(args.from_json)
    payload = json.loads(path.read_text(encoding="utf-8"))
    records = load_records(path)
    metadata = payload.get("metadata", {})
    table = render_table(summary_rows(records, metadata.get("predictions", [])), metadata)
    print(table)
    if args.table:
        atomic_write_text(args.table, table + "\n")
        say(f"table -> {args.table}")
    if args.plot and records:
        plot_latency(records, args.plot)
        say(f"plot -> {args.plot}")
    if args.docs:
        splice_docs(Path(args.docs), table, metadata.get("command", command))
        say(f"table -> {args.docs}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    command = shlex.join(["python3", "tools/bench_onnx.py", *argv])
    if args.from_json:
        return render_only(args, command)
    budget = Budget(args.time_budget_s)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = args.runtimes or (GPU_RUNTIMES if device.type == "cuda" else CPU_RUNTIMES)
    runtimes = [runtime for runtime in RUNTIME_ORDER if runtime in chosen]
    if any(r.startswith("ort-cuda") for r in runtimes) and not cuda_provider_available():
        say("onnxruntime has no CUDA provider here (install onnxruntime-gpu, docs/onnx.md): dropping "
            "ort-cuda runtimes rather than timing the CPU provider at GPU batch sizes")
        runtimes = [r for r in runtimes if not r.startswith("ort-cuda")]
    compact_paths = dict(item.split("=", 1) for item in args.compact_from)
    out = Path(args.out)
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    table_path = Path(args.table) if args.table else out.with_suffix(".md")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_onnx."))
    workdir.mkdir(parents=True, exist_ok=True)
    import onnxruntime

    say(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), torch "
        f"{torch.__version__}, onnxruntime {onnxruntime.__version__}, runtimes {runtimes}, precisions "
        f"{args.precisions}, batch sizes {args.batch_sizes}, TF32 {args.tf32}, ORT opt level {args.ort_opt_level}, "
        f"time budget {args.time_budget_s:g}s")
    constants = device_constants(args, device, runtimes)
    say(f"time model constants: {constants}")
    metadata = {"command": command, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                "tf32": args.tf32, "ort_opt_level": args.ort_opt_level, "compile_mode": args.compile_mode,
                "precisions": args.precisions, "device_constants": constants.to_dict(), "tensorrt": TENSORRT_NOTE,
                "time_budget_s": args.time_budget_s,
                "note": "amgp-emb-R: hidden and embedding groups pruned to amgp-pruned-R's FLOPs; width-scaled-* are "
                        "stand-ins (MLP widths scaled), not pruned models"}
    run = Run(args, runtimes, device, command, constants, metadata, out, table_path, workdir, budget)
    run.save()
    try:
        for config in args.configs:
            run.add_config(config, compact_paths)
        run.save()
        for variant, precision, runtime in step_order(run.variants, args.precisions, runtimes):
            run.step(variant, precision, runtime)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    skipped = [f for f in run.failures if SKIPPED_FOR_TIME in f]
    if skipped:
        say(f"{len(skipped)} steps skipped for time (first: {skipped[0]})")
    table = run.save(complete=True)
    if run.records:
        plot_latency(run.records, plot)
    print(table, flush=True)
    say(f"{len(run.records)} records -> {out}, table -> {table_path}, plot -> {plot}, {len(run.failures)} "
        f"failures/skips, {budget.elapsed():.0f}s of a {args.time_budget_s:g}s budget")
    return 0 if run.records else 1


if __name__ == "__main__":
    raise SystemExit(main())

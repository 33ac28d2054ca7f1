#!/usr/bin/env python3
"""Latency of dense vs compact recommendation models: ONNX Runtime (CUDA, CUDA graphs) vs PyTorch.

For each ``model:preset`` config it builds the dense model and its compact variants and exports each
to ONNX once (dynamic batch, parity-checked against PyTorch on the CUDA provider when present). Then it
sweeps the batch sizes runtime by runtime, cheapest and most important first (ort-cuda, torch-eager,
ort-cuda-graph, ort-cpu, torch-compile), so a run that reaches ``--time-budget-s`` loses only the
last runtimes. After every step it prints a table with the measured speedup next to the FLOPs ratio
and rewrites the JSON records; the PNG plot is redrawn after every runtime.

Variants:
- ``dense``: the preset as built.
- ``width-scaled-R``: a STAND-IN for an AMGP-compacted model: the same class with every MLP width
  times R (widths tied to the embedding dim kept). Replace with ``--compact-from``.
- ``amgp-NAME``: ``--compact-from dlrm:default=NAME.pt2``, a pruned model saved with ``torch.export.save``.
- ``dense-fused-emb``: the dense model exported with the ``fuse_embedding_lookups`` pass (ONNX
  runtimes only): one Gather instead of one per feature.

GPU run (H200, well under 8 minutes; the ort-cuda runtimes need onnxruntime-gpu, see docs/onnx.md;
on the device machine write under $OUT so the files come back, then copy them to docs/results/):
    PYTHONUNBUFFERED=1 python3 tools/bench_onnx.py --out $OUT/onnx_latency.json
CPU smoke run:
    python3 tools/bench_onnx.py --configs dlrm:small --batch-sizes 8 32 --iters 5 --out /tmp/latency.json
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
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

from amgp_fx import models  # noqa: E402
from amgp_fx.bench import RUNTIMES, benchmark_onnx, benchmark_torch, count_forward_flops  # noqa: E402
from amgp_fx.bench import cuda_provider_available  # noqa: E402
from amgp_fx.export import export_onnx  # noqa: E402
from amgp_fx.latency_report import format_table, plot_latency, save_records  # noqa: E402
from amgp_fx.passes import default_passes  # noqa: E402
from amgp_fx.passes.fuse_embeddings import FUSE_EMBEDDINGS_PASS  # noqa: E402

RUNTIME_ORDER = ("ort-cuda", "torch-eager", "ort-cuda-graph", "ort-cpu", "torch-compile")
GPU_RUNTIMES = ("ort-cuda", "torch-eager", "ort-cuda-graph", "torch-compile")
CPU_RUNTIMES = ("ort-cpu", "torch-eager")


@dataclasses.dataclass
class Variant:
    config: str  # "dlrm:default"
    label: str  # "dense", "width-scaled-0.5", ...
    model: torch.nn.Module
    factory: Callable[[int], tuple]  # batch size -> CPU inputs
    flops: dict[int, int]
    onnx_path: Path | None = None
    onnx_only: bool = False


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["dlrm:default", "dlrm:mlperf", "dcn_v2:default"],
                        help="model:preset pairs (models.build_model)")
    parser.add_argument("--pruned-ratios", nargs="*", type=float, default=[0.5, 0.25],
                        help="keep ratios of the amgp-fx pruned variants (hidden units kept per group)")
    parser.add_argument("--width-ratios", nargs="*", type=float, default=[],
                        help="stand-in compact variants: MLP widths scaled by these ratios")
    parser.add_argument("--compact-from", nargs="*", default=[], metavar="CONFIG=PATH",
                        help="compact model per config, saved with torch.export.save (.pt2)")
    parser.add_argument("--no-fused-embeddings", dest="fused_embeddings", action="store_false",
                        help="skip the dense-fused-emb ONNX variant")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[256, 1024, 4096, 16384, 65536])
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=None,
                        help=f"default: {' '.join(GPU_RUNTIMES)} with a GPU, else {' '.join(CPU_RUNTIMES)}")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--tf32", action="store_true", help="TF32 matmuls in both PyTorch and ONNX Runtime")
    parser.add_argument("--out", default="docs/results/onnx_latency.json")
    parser.add_argument("--plot", default=None, help="PNG path (default: --out with .png)")
    parser.add_argument("--workdir", default=None, help="where the .onnx files go (default: a temp folder)")
    parser.add_argument("--compile-static", action="store_true",
                        help="torch.compile with automatic dynamic shapes (two compiles) instead of dynamic=True")
    parser.add_argument("--time-budget-s", type=float, default=330.0,
                        help="start no new step after this many seconds (keeps the run under ~8 min)")
    return parser.parse_args(argv)


def say(message: str) -> None:
    print(f"[bench_onnx {time.strftime('%H:%M:%S')}] {message}", flush=True)


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
    import amgp_fx

    torch.manual_seed(0)
    model = models.build_model(name, preset)
    graph = amgp_fx.analyze(model, model.example_inputs(8))
    keep = {}
    for group_id, scores in amgp_fx.score(graph, "l2", groups=graph.prunable_groups(("hidden",))).items():
        count = max(multiple, int(round(len(scores) * keep_ratio / multiple)) * multiple)
        keep[group_id] = scores.argsort(descending=True)[: min(count, len(scores))].sort().values.tolist()
    amgp_fx.shrink_(graph, keep)
    return graph.module


def build_models(config: str, ratios, compact_paths: dict, pruned_ratios=()) -> list[tuple[str, torch.nn.Module]]:
    """[(label, model)] for one ``model:preset`` config, the dense model first."""
    name, preset = config.split(":")
    torch.manual_seed(0)
    built = [("dense", models.build_model(name, preset))]
    for keep_ratio in pruned_ratios:
        built.append((f"amgp-pruned-{keep_ratio:g}", amgp_pruned(name, preset, keep_ratio)))
    for ratio in ratios:
        try:
            model = models.build_model(name, preset, **width_scaled_overrides(name, preset, ratio, False))
        except ValueError:
            model = models.build_model(name, preset, **width_scaled_overrides(name, preset, ratio, True))
        built.append((f"width-scaled-{ratio:g}", model))
    if config in compact_paths:
        path = Path(compact_paths[config])
        built.append((f"amgp-{path.stem}", torch.export.load(str(path)).module()))
    return built


def export_variant(variant: Variant, workdir: Path, passes=None) -> None:
    path = workdir / f"{variant.config.replace(':', '-')}-{variant.label}.onnx"
    started = time.monotonic()
    report = export_onnx(variant.model, variant.factory(8), path, parity_provider="auto", passes=passes)
    variant.onnx_path = Path(report.path)
    say(f"{variant.config} {variant.label}: exported {report.onnx_bytes / 1e6:.1f} MB "
        f"(+{report.external_data_bytes / 1e6:.1f} MB external) in {time.monotonic() - started:.1f}s, "
        f"passes {report.passes_applied}, parity max abs diff {report.max_abs_diff:.2e} on {report.parity_provider}")


def prepare(config, args, runtimes, compact_paths, workdir, failures) -> list[Variant]:
    built = build_models(config, args.width_ratios, compact_paths, args.pruned_ratios)
    factory = cpu_inputs_factory(built[0][1])
    variants = []
    for label, model in built:
        flops = {b: count_forward_flops(model, factory(b)) for b in args.batch_sizes}  # fake tensors: cheap
        variants.append(Variant(config, label, model, factory, flops))
    if args.fused_embeddings:
        dense = variants[0]
        variants.append(Variant(config, "dense-fused-emb", dense.model, factory, dense.flops, onnx_only=True))
    if any(runtime.startswith("ort-") for runtime in runtimes):
        for variant in variants:
            passes = default_passes().with_pass(FUSE_EMBEDDINGS_PASS) if variant.label.endswith("fused-emb") else None
            try:
                export_variant(variant, workdir, passes)
            except Exception as error:  # noqa: BLE001 - the torch runtimes can still run
                failures.append(f"{config} {variant.label} export: {type(error).__name__}: {error}")
                say(f"FAILED {failures[-1]}")
    return variants


def cuda_graph_records(variant: Variant, args, common) -> list:
    """ORT CUDA graphs on the dynamic export with the batch dim fixed per session; when ONNX Runtime
    refuses that (nodes left on the CPU), on one static-batch export per batch size instead."""
    try:
        return benchmark_onnx(variant.onnx_path, variant.factory, args.batch_sizes, provider="cuda",
                              cuda_graph=True, **common)
    except Exception as error:  # noqa: BLE001
        say(f"{variant.config} {variant.label}: CUDA graph with a fixed batch dim failed "
            f"({type(error).__name__}: {error}); retrying on static-batch exports")
    variant.model.cpu()
    static = {}
    try:
        for batch_size in args.batch_sizes:
            path = variant.onnx_path.with_name(f"{variant.onnx_path.stem}-b{batch_size}.onnx")
            export_onnx(variant.model, variant.factory(batch_size), path, dynamic_batch=False, parity=False)
            static[batch_size] = path
        return benchmark_onnx(static, variant.factory, args.batch_sizes, provider="cuda", cuda_graph=True, **common)
    finally:
        for path in static.values():
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".data").unlink(missing_ok=True)


def run_step(variant: Variant, runtime: str, args, device, command) -> list:
    common = dict(warmup=args.warmup, iters=args.iters, variant=variant.label, flops=variant.flops, command=command)
    if runtime.startswith("ort-"):
        common.update(model=variant.config, use_tf32=args.tf32)
        if runtime == "ort-cuda-graph":
            return cuda_graph_records(variant, args, common)
        provider = "cpu" if runtime == "ort-cpu" else "cuda"
        return benchmark_onnx(variant.onnx_path, variant.factory, args.batch_sizes, provider=provider, **common)
    return benchmark_torch(variant.model, variant.factory, args.batch_sizes, mode=runtime.removeprefix("torch-"),
                           device=device, model_name=variant.config,
                           compile_options=None if args.compile_static else {"dynamic": True}, **common)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    command = shlex.join(["python3", "tools/bench_onnx.py", *argv])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = args.runtimes or (GPU_RUNTIMES if device.type == "cuda" else CPU_RUNTIMES)
    runtimes = [runtime for runtime in RUNTIME_ORDER if runtime in chosen]
    if any(r.startswith("ort-cuda") for r in runtimes) and not cuda_provider_available():
        say("onnxruntime has no CUDA provider here (install onnxruntime-gpu, docs/onnx.md): dropping "
            "ort-cuda runtimes rather than timing the CPU provider at GPU batch sizes")
        runtimes = [r for r in runtimes if not r.startswith("ort-cuda")]
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    compact_paths = dict(item.split("=", 1) for item in args.compact_from)
    out = Path(args.out)
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_onnx."))
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    say(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), torch "
        f"{torch.__version__}, runtimes {runtimes}, "
        f"batch sizes {args.batch_sizes}, TF32 {args.tf32}")
    metadata = {"command": command, "torch": torch.__version__, "tf32": args.tf32,
                "note": "width-scaled-* variants are stand-ins (MLP widths scaled), not AMGP-pruned models"}
    records, failures, variants = [], [], []
    try:
        for config in args.configs:
            if time.monotonic() - start > args.time_budget_s:
                failures.append(f"{config}: skipped, time budget spent")
                continue
            variants += prepare(config, args, runtimes, compact_paths, workdir, failures)
        for runtime in runtimes:
            for variant in variants:
                if variant.onnx_only and not runtime.startswith("ort-"):
                    continue
                if runtime.startswith("ort-") and variant.onnx_path is None:
                    continue
                if time.monotonic() - start > args.time_budget_s:
                    failures.append(f"{variant.config} {variant.label} {runtime}: skipped, time budget spent")
                    say(failures[-1])
                    continue
                started = time.monotonic()
                try:
                    new = run_step(variant, runtime, args, device, command)
                except Exception as error:  # noqa: BLE001 - one failing step must not end the sweep
                    failures.append(f"{variant.config} {variant.label} {runtime}: {type(error).__name__}: {error}")
                    say(f"FAILED {failures[-1]}")
                    continue
                say(f"{variant.config} {variant.label} {runtime}: {time.monotonic() - started:.1f}s")
                records.extend(new)
                print(format_table(new), flush=True)
                save_records(records, out, {**metadata, "failures": failures})
            if records:
                plot_latency(records, plot)  # after each runtime: a run cut short still has a plot
            gc.collect()
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    save_records(records, out, {**metadata, "failures": failures, "seconds": time.monotonic() - start})
    if records:
        plot_latency(records, plot)
        ordered = sorted(records, key=lambda r: (r.model, r.runtime, r.batch_size, r.variant != "dense", r.variant))
        print(format_table(ordered), flush=True)
    say(f"{len(records)} records -> {out}, plot -> {plot}, {len(failures)} failures/skips, "
        f"{time.monotonic() - start:.0f}s")
    return 0 if records else 1


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Latency of dense vs compact recommendation models: ONNX Runtime (CUDA, CUDA graphs) vs PyTorch.

For each ``model:preset`` config it builds the dense model and its compact variants, exports each to
ONNX once (dynamic batch, parity-checked), sweeps the batch sizes on every runtime, prints a table
with the measured speedup next to the FLOPs ratio, and rewrites the JSON records and the PNG plot
after every step, so a run cut short still leaves its results.

Compact variants: ``--compact-from dlrm:default=path.pt2`` loads a pruned model saved with
``torch.export.save`` (what amgp-fx produces); until those exist, ``--width-ratios 0.5`` builds the
same class with every MLP width scaled by 0.5 (keeping widths tied to the embedding dim), a stand-in
labelled ``width-scaled-0.5``.

GPU run (H200, about 5 minutes; needs onnxruntime-gpu for the ort-cuda runtimes):
    PYTHONUNBUFFERED=1 python3 tools/bench_onnx.py --out docs/results/onnx_latency.json
CPU smoke run:
    python3 tools/bench_onnx.py --configs dlrm:small --batch-sizes 8 32 --iters 5 --runtimes ort-cpu torch-eager
"""
from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import models  # noqa: E402
from amgp_fx.bench import RUNTIMES, benchmark_onnx, benchmark_torch, count_forward_flops  # noqa: E402
from amgp_fx.export import cuda_provider_available, export_onnx  # noqa: E402
from amgp_fx.latency_report import format_table, plot_latency, save_records  # noqa: E402

GPU_RUNTIMES = ("ort-cuda", "ort-cuda-graph", "torch-eager", "torch-compile")
CPU_RUNTIMES = ("ort-cpu", "torch-eager")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["dlrm:default", "dlrm:mlperf", "dcn_v2:default"],
                        help="model:preset pairs (models.build_model)")
    parser.add_argument("--width-ratios", nargs="*", type=float, default=[0.5],
                        help="stand-in compact variants: MLP widths scaled by these ratios")
    parser.add_argument("--compact-from", nargs="*", default=[], metavar="CONFIG=PATH",
                        help="compact model per config, saved with torch.export.save (.pt2)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[256, 1024, 4096, 16384, 65536])
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=None,
                        help=f"default: {' '.join(GPU_RUNTIMES)} with a GPU, else {' '.join(CPU_RUNTIMES)}")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--tf32", action="store_true", help="TF32 matmuls in both PyTorch and ONNX Runtime")
    parser.add_argument("--out", default="docs/results/onnx_latency.json")
    parser.add_argument("--plot", default=None, help="PNG path (default: --out with .png)")
    parser.add_argument("--workdir", default=None, help="where the .onnx files go (default: a temp folder)")
    parser.add_argument("--time-budget-s", type=float, default=420.0,
                        help="start no new step after this many seconds (the run stays under ~8 min)")
    return parser.parse_args(argv)


def say(message: str) -> None:
    print(f"[bench_onnx {time.strftime('%H:%M:%S')}] {message}", flush=True)


def width_scaled_overrides(name: str, preset: str, ratio: float, keep_last: bool) -> dict:
    """Every ``*_mlp`` width of the preset times ``ratio`` (the last one kept when ``keep_last``)."""
    preset_kwargs = importlib.import_module(f"models.{name}").PRESETS[preset]
    overrides = {}
    for key, widths in preset_kwargs.items():
        if key.endswith("_mlp") and isinstance(widths, (tuple, list)) and widths:
            scaled = [max(1, round(w * ratio)) for w in widths]
            if keep_last and key == "bottom_mlp":
                scaled[-1] = widths[-1]  # DLRM: the bottom MLP's output width is the embedding dim
            overrides[key] = tuple(scaled)
    return overrides


def build_variants(config: str, ratios, compact_paths: dict):
    """[(variant label, model)] for one ``model:preset`` config; the dense model first."""
    name, preset = config.split(":")
    torch.manual_seed(0)
    variants = [("dense", models.build_model(name, preset))]
    for ratio in ratios:
        try:
            model = models.build_model(name, preset, **width_scaled_overrides(name, preset, ratio, False))
        except ValueError:
            model = models.build_model(name, preset, **width_scaled_overrides(name, preset, ratio, True))
        variants.append((f"width-scaled-{ratio:g}", model))
    if config in compact_paths:
        path = Path(compact_paths[config])
        variants.append((f"amgp-{path.stem}", torch.export.load(str(path)).module()))
    return name, preset, variants


def cpu_inputs_factory(model):
    """``batch_size -> (dense, sparse)`` on the CPU, from the dense model's ``example_inputs``."""
    if not hasattr(model, "example_inputs"):
        raise ValueError(f"{type(model).__name__} has no example_inputs(batch_size)")
    return lambda batch_size: tuple(x.cpu() for x in model.example_inputs(batch_size))


def run_variant(label, model, factory, config, args, runtimes, device, workdir, expired, failures, command):
    """All runtimes for one model variant; yields lists of records as they finish."""
    path = workdir / f"{config.replace(':', '-')}-{label}.onnx"
    started = time.monotonic()
    report = export_onnx(model, factory(8), path, parity_provider="auto", use_tf32=False)
    say(f"{config} {label}: exported {report.onnx_bytes / 1e6:.1f} MB + {report.external_data_bytes / 1e6:.1f} MB "
        f"external in {time.monotonic() - started:.1f}s, passes {report.passes_applied}, "
        f"parity max abs diff {report.max_abs_diff:.2e} on {report.parity_provider}")
    model.to(device)
    flops = {b: count_forward_flops(model, tuple(x.to(device) for x in factory(b))) for b in args.batch_sizes}
    common = dict(warmup=args.warmup, iters=args.iters, variant=label, flops=flops, command=command)
    for runtime in runtimes:
        if expired():
            say(f"time budget spent: skipping {config} {label} {runtime}")
            continue
        started = time.monotonic()
        try:
            if runtime.startswith("ort-"):
                records = benchmark_onnx(path, factory, args.batch_sizes, model=config,
                                         provider="cpu" if runtime == "ort-cpu" else "cuda",
                                         cuda_graph=runtime == "ort-cuda-graph", use_tf32=args.tf32, **common)
            else:
                records = benchmark_torch(model, factory, args.batch_sizes, mode=runtime.removeprefix("torch-"),
                                          device=device, model_name=config, **common)
        except Exception as error:  # noqa: BLE001 - one failing runtime must not end the sweep
            failures.append(f"{config} {label} {runtime}: {type(error).__name__}: {error}")
            say(f"FAILED {failures[-1]}")
            continue
        say(f"{config} {label} {runtime}: {len(records)} batch sizes in {time.monotonic() - started:.1f}s")
        yield records
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".data").unlink(missing_ok=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    command = shlex.join(["python3", "tools/bench_onnx.py", *argv])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runtimes = args.runtimes or (GPU_RUNTIMES if device.type == "cuda" else CPU_RUNTIMES)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    compact_paths = dict(item.split("=", 1) for item in args.compact_from)
    out = Path(args.out)
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_onnx."))
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    expired = lambda: time.monotonic() - start > args.time_budget_s  # noqa: E731
    say(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), torch "
        f"{torch.__version__}, onnxruntime CUDA provider: {cuda_provider_available()}, runtimes {runtimes}, "
        f"batch sizes {args.batch_sizes}")
    metadata = {"command": command, "torch": torch.__version__, "tf32": args.tf32,
                "note": "width-scaled-* variants are stand-ins (MLP widths scaled), not AMGP-pruned models"}
    records, failures = [], []
    try:
        for config in args.configs:
            if expired():
                say(f"time budget spent: skipping {config}")
                continue
            name, preset, variants = build_variants(config, args.width_ratios, compact_paths)
            factory = cpu_inputs_factory(variants[0][1])
            for label, model in variants:
                if expired():
                    say(f"time budget spent: skipping {config} {label}")
                    continue
                try:
                    for new in run_variant(label, model, factory, config, args, runtimes, device, workdir,
                                           expired, failures, command):
                        records.extend(new)
                        print(format_table(new), flush=True)
                        save_records(records, out, {**metadata, "failures": failures})
                except Exception as error:  # noqa: BLE001 - keep going with the next variant
                    failures.append(f"{config} {label}: {type(error).__name__}: {error}")
                    say(f"FAILED {failures[-1]}")
                del model
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    save_records(records, out, {**metadata, "failures": failures, "seconds": time.monotonic() - start})
    if records:
        plot_latency(records, plot)
        print(format_table(records), flush=True)
    say(f"{len(records)} records -> {out}, plot -> {plot}, {len(failures)} failures, "
        f"{time.monotonic() - start:.0f}s")
    return 0 if records else 1


if __name__ == "__main__":
    raise SystemExit(main())

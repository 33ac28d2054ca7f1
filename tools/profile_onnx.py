"""Where does a served model's time go? ONNX Runtime's per-node profile next to torch's per-op profile.

``tools/bench_onnx.py`` says how long a whole call takes; when ORT is slower than torch eager on the
same model (issue 16: DLRM at batch 65536 on the GPU), this says which op types take the difference.
One model, one batch size, one device: the model is exported with a static batch, ORT's profiler
records every node of the timed runs (the warm-up runs are left out), and torch's profiler records
every kernel (GPU) or op (CPU) of the same number of eager calls.

Example:
    python tools/profile_onnx.py --config dlrm:default --variant dense --batch-size 65536 --out /tmp/profile.json
    python tools/profile_onnx.py --config dlrm:small --batch-size 256 --device cpu --iters 5 --out /tmp/p.json  # CPU
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from amgp_fx import models  # noqa: E402
from amgp_fx.bench import OPT_LEVELS, make_ort_session, ort_feeds, tf32_matmuls  # noqa: E402
from amgp_fx.export import export_onnx  # noqa: E402
from amgp_fx.passes import default_passes  # noqa: E402
from amgp_fx.passes.pair_gather import PAIR_GATHER_PASS  # noqa: E402
from amgp_fx.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from bench_onnx import amgp_pruned  # noqa: E402


def build_variant(config: str, variant: str) -> torch.nn.Module:
    """``dense`` or ``pruned-R`` (bench_onnx's ``amgp-pruned-R``: R of every hidden group kept by L2)."""
    name, preset = config.split(":")
    if variant == "dense":
        torch.manual_seed(0)
        return models.build_model(name, preset)
    if variant.startswith("pruned-"):
        return amgp_pruned(name, preset, float(variant.removeprefix("pruned-")))
    raise SystemExit(f"profile_onnx: error: unknown variant {variant!r}. Use dense or pruned-R (e.g. pruned-0.5)")


def node_times_by_op(trace: list[dict], skip_runs: int) -> tuple[dict[str, float], list[tuple[str, str, float]], int]:
    """Microseconds per op type and per node, summed over the runs after the first ``skip_runs``,
    from an ORT profile (Chrome trace): node events fall inside their ``model_run`` event."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("name") == "model_run")[skip_runs:]
    by_op: dict[str, float] = collections.defaultdict(float)
    by_node: dict[tuple[str, str], float] = collections.defaultdict(float)
    for event in trace:
        op = event.get("args", {}).get("op_name")
        if event.get("cat") != "Node" or not op or not event.get("name", "").endswith("_kernel_time"):
            continue
        if any(start <= event["ts"] <= end for start, end in runs):
            by_op[op] += event["dur"]
            by_node[(event["name"].removesuffix("_kernel_time"), op)] += event["dur"]
    nodes = sorted(((name, op, us) for (name, op), us in by_node.items()), key=lambda n: -n[2])
    return dict(by_op), nodes, len(runs)


def profile_ort(path: Path, inputs, provider: str, warmup: int, iters: int, opt_level: str, workdir: Path,
                tunable_ops: bool = False) -> dict:
    session = make_ort_session(path, provider, opt_level=opt_level, profile_prefix=workdir / "ort",
                               tunable_ops=tunable_ops and provider == "cuda")
    feeds = ort_feeds(session, inputs)
    for _ in range(warmup + iters):
        session.run(None, feeds)
    trace = json.loads(Path(session.end_profiling()).read_text())
    by_op, nodes, runs = node_times_by_op(trace, warmup)
    if runs != iters:
        raise RuntimeError(f"the ORT profile holds {runs} timed runs, expected {iters}")
    per_run = {op: us / runs / 1000 for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])}
    return {"provider": provider, "tunable_ops": tunable_ops and provider == "cuda", "ms_by_op_type": per_run, "node_ms": sum(per_run.values()),
            "top_nodes": [{"node": n, "op_type": op, "ms": us / runs / 1000} for n, op, us in nodes[:25]]}


def profile_torch(model: torch.nn.Module, inputs, device: torch.device, warmup: int, iters: int) -> dict:
    """Per-op (CPU) or per-kernel (CUDA) self time of ``iters`` eager calls, in ms per call."""
    model = model.to(device).eval()
    inputs = tuple(x.to(device) for x in inputs)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.no_grad():
        for _ in range(warmup):
            model(*inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        with torch.profiler.profile(activities=activities) as profiler:
            for _ in range(iters):
                model(*inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    kernels = []
    for event in profiler.key_averages():
        if device.type == "cuda":
            us = getattr(event, "self_device_time_total", None)
            us = getattr(event, "self_cuda_time_total", 0) if us is None else us
        else:
            us = event.self_cpu_time_total
        if us > 0:
            kernels.append({"name": event.key, "ms": us / iters / 1000, "calls": event.count // iters})
    kernels.sort(key=lambda k: -k["ms"])
    return {"device": str(device), "self_ms": sum(k["ms"] for k in kernels), "top": kernels[:25]}


def markdown(result: dict) -> str:
    ort_rows = "\n".join(f"| {op} | {ms:.3f} | {ms / result['ort']['node_ms']:.0%} |"
                         for op, ms in result["ort"]["ms_by_op_type"].items())
    torch_rows = "\n".join(f"| `{k['name'][:90]}` | {k['calls']} | {k['ms']:.3f} |" for k in result["torch"]["top"][:15])
    return (f"Profile of {result['config']} {result['variant']} at batch {result['batch_size']} on {result['device']} "
            f"(`{result['command']}`)\n\n"
            f"ONNX Runtime ({result['ort']['provider']}), node time per run {result['ort']['node_ms']:.3f} ms:\n\n"
            f"| op type | ms per run | share |\n|---|---|---|\n{ort_rows}\n\n"
            f"torch eager, self time per call {result['torch']['self_ms']:.3f} ms (top 15):\n\n"
            f"| kernel or op | calls per run | ms per run |\n|---|---|---|\n{torch_rows}\n")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="dlrm:default", help="model:preset (amgp_fx.models)")
    parser.add_argument("--variant", default="dense", help="dense or pruned-R, e.g. pruned-0.5")
    parser.add_argument("--batch-size", type=int, default=65536)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--ort-opt-level", choices=tuple(OPT_LEVELS), default="all")
    parser.add_argument("--ort-tunable-ops", action="store_true",
                        help="CUDA: ORT's TunableOp picks each GEMM's kernel by timing (during the warm-up runs)")
    parser.add_argument("--pair-gather", action="store_true",
                        help="export with the opt-in pass gather_pairs_from_flat (interaction pairs as one Gather)")
    parser.add_argument("--out", required=True, help="JSON result; the markdown table goes beside it (.md)")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.iters < 1 or args.warmup < 0:
        parser.error("--batch-size and --iters must be positive, --warmup not negative")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    model = build_variant(args.config, args.variant).eval()
    inputs = tuple(x.cpu() for x in model.example_inputs(args.batch_size))
    with tempfile.TemporaryDirectory() as tmp, tf32_matmuls(False):
        path = Path(tmp) / "model.onnx"
        passes = default_passes().with_pass(PAIR_GATHER_PASS) if args.pair_gather else None
        export_onnx(model, inputs, path, dynamic_batch=False, parity=False, passes=passes)
        ort_result = profile_ort(path, inputs, device.type, args.warmup, args.iters, args.ort_opt_level, Path(tmp),
                                 args.ort_tunable_ops)
        torch_result = profile_torch(model, inputs, device, args.warmup, args.iters)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"config": args.config, "variant": args.variant, "batch_size": args.batch_size, "device": name,
              "torch": torch_result, "ort": ort_result, "iters": args.iters, "warmup": args.warmup,
              "pair_gather": args.pair_gather,
              "command": "python tools/profile_onnx.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    out = Path(args.out)
    atomic_write_json(out, result)
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()

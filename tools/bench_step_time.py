"""Where a training step's time goes: full-size vs AMGP-pruned model, per sparse optimizer and batch.

AMGP saves wall-clock only when the parts it shrinks (MLP hidden units) dominate the step. This
benchmark times one training step (forward, backward, optimizer) of the benchmark models of
``tools/bench_amgp.py`` at full width and after ``amgp_fx.shrink_`` removes ``--ratio`` of every
hidden group, side by side in one process, for each embedding optimizer and batch size; the
ratio pruned/full is the best wall-clock saving an AMGP pruned phase can give. ``--profile``
adds a torch.profiler table of the top CUDA kernels of one configuration.

Output: a table and a JSON list with model, batch_size, sparse_optimizer, dense_optimizer,
width, ms_per_step (median of --iters), forward_backward_ms, optimizer_ms, device, command.

Example:
    python tools/bench_step_time.py --tiny                       # CPU smoke check
    python tools/bench_step_time.py --out docs/results/step_time.json   # GPU
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import amgp_fx  # noqa: E402
from amgp_fx.amgp import plan_keep, select_groups  # noqa: E402
from amgp_fx.config import SyntheticConfig, TrainConfig  # noqa: E402
from amgp_fx.data import SyntheticCriteo  # noqa: E402
from amgp_fx.fileio import atomic_write_json  # noqa: E402
from amgp_fx.importance import score  # noqa: E402
from amgp_fx.schedule import AmgpConfig, AmgpSchedule  # noqa: E402
from amgp_fx.train import _loss, build_optimizers  # noqa: E402
from bench_amgp import GPU_TABLES, MODEL_SPECS, TINY_SPECS, build  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(module, optimizers, batches, iters: int, device: torch.device) -> dict[str, float]:
    """Median ms of whole steps, and of their forward+backward and optimizer parts (synchronised)."""
    whole, fwd_bwd, opt = [], [], []
    for index in range(iters):
        batch = batches[index % len(batches)]
        _sync(device)
        t0 = time.perf_counter()
        optimizers.zero_grad(set_to_none=True)
        loss = _loss(module(batch.dense, batch.sparse), batch.label)
        loss.backward()
        _sync(device)
        t1 = time.perf_counter()
        optimizers.step()
        _sync(device)
        t2 = time.perf_counter()
        fwd_bwd.append(t1 - t0)
        opt.append(t2 - t1)
    for index in range(iters):  # unsynchronised steps: what training sees
        batch = batches[index % len(batches)]
        _sync(device)
        t0 = time.perf_counter()
        optimizers.zero_grad(set_to_none=True)
        _loss(module(batch.dense, batch.sparse), batch.label).backward()
        optimizers.step()
        _sync(device)
        whole.append(time.perf_counter() - t0)
    return {"ms_per_step": 1e3 * statistics.median(whole), "forward_backward_ms": 1e3 * statistics.median(fwd_bwd),
            "optimizer_ms": 1e3 * statistics.median(opt)}


def measure(name: str, spec: dict, batch_size: int, sparse_optimizer: str, dense_optimizer: str, args,
            rows, device: torch.device) -> list[dict]:
    """Full width, then pruned by --ratio, of one model/optimizer/batch configuration."""
    torch.manual_seed(0)
    with device:
        model = build(spec)
    graph = amgp_fx.analyze(model, model.example_inputs(4))
    fused = dense_optimizer.endswith("_fused")  # torch's single-kernel Adam (CUDA only)
    config = TrainConfig(optimizer=dense_optimizer.removesuffix("_fused"), sparse_optimizer=sparse_optimizer, lr=1e-3,
                         batch_size=batch_size, device=str(device))
    optimizers = build_optimizers(model, config)
    if fused:
        optimizers.optimizers[0].param_groups[0].update(fused=True, foreach=False)
    batches = [rows[i * batch_size:(i + 1) * batch_size].to(device) for i in range(max(1, rows.num_rows // batch_size))]
    results = []
    amgp = AmgpConfig(AmgpSchedule(10, 0, 1, 10), ratio=args.ratio)
    groups = select_groups(graph, (), ("hidden",))
    for width in ("full", "pruned"):
        if width == "pruned":
            keep = plan_keep(graph, groups, amgp, 1.0, score(graph, "l2", groups=groups))
            amgp_fx.shrink_(graph, keep, list(optimizers))
        time_steps(graph.module, optimizers, batches, args.warmup, device)
        timing = time_steps(graph.module, optimizers, batches, args.iters, device)
        share = sum(g.size for g in groups) / sum(g.full_size for g in groups)
        results.append({"model": name, "batch_size": batch_size, "sparse_optimizer": sparse_optimizer,
                        "dense_optimizer": dense_optimizer, "width": width, "hidden_share": share, **timing})
        if args.profile and width == "full" and not args.profiled:
            profile(graph.module, optimizers, batches, device)
            args.profiled = True
    del model, graph, optimizers, batches
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def profile(module, optimizers, batches, device: torch.device) -> None:
    """Print the top kernels of a few steps (self device time)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for batch in batches[:3]:
            optimizers.zero_grad(set_to_none=True)
            _loss(module(batch.dense, batch.sparse), batch.label).backward()
            optimizers.step()
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60), flush=True)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke check with small models")
    parser.add_argument("--models", nargs="+", default=["dlrm", "dcn_v2"], choices=sorted(MODEL_SPECS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 16384 65536 (tiny 256)")
    parser.add_argument("--sparse-optimizers", nargs="+",
                        default=["sparse_adam", "rowwise_adagrad", "adagrad", "sgd"])
    parser.add_argument("--dense-optimizers", nargs="+", default=["adam"],
                        help="adam, adamw, sgd, adagrad; a _fused suffix uses torch's fused kernel (CUDA)")
    parser.add_argument("--ratio", type=float, default=0.5, help="share of hidden units removed")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="print a kernel table for the first configuration")
    parser.add_argument("--out", default=None, help="JSON output")
    args = parser.parse_args(argv)
    args.profiled = False
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    specs = TINY_SPECS if args.tiny else MODEL_SPECS
    batch_sizes = args.batch_sizes or ([256] if args.tiny else [16384, 65536])
    rows_for = {}
    for name in args.models:  # rows shaped like each model's inputs (ids within its smallest table)
        with torch.device("meta"):
            model = build(specs[name])
        example = model.example_inputs(1)
        smallest = min(m.num_embeddings for m in model.modules() if isinstance(m, torch.nn.Embedding))
        data = SyntheticConfig.from_preset("default", num_dense=example[0].shape[1],
                                           table_sizes=(smallest,) * example[1].shape[1])
        rows_for[name] = SyntheticCriteo(data).rows(0, 2 * max(batch_sizes))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    command = "python tools/bench_step_time.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    records = []
    for name in args.models:
        for batch_size in batch_sizes:
            for dense_optimizer in args.dense_optimizers:
                for sparse_optimizer in args.sparse_optimizers:
                    for record in measure(name, specs[name], batch_size, sparse_optimizer, dense_optimizer, args,
                                          rows_for[name], device):
                        record.update(device=f"{device_name} (torch {torch.__version__})", command=command)
                        records.append(record)
                        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in record.items()
                                          if k not in ("device", "command")}), flush=True)
                    full, pruned = records[-2]["ms_per_step"], records[-1]["ms_per_step"]
                    print(f"  {name} B={batch_size} {dense_optimizer}/{sparse_optimizer}: pruned/full = "
                          f"{pruned / full:.3f}", flush=True)
    if args.out:
        atomic_write_json(Path(args.out), records)
    return records


if __name__ == "__main__":
    main()

"""Benchmark: dependency analysis time (amgp-fx vs torch-pruning's DependencyGraph) and the time of
one shrink/grow cycle on the largest reference model.

    python tools/bench_analysis.py --out docs/results/analysis.json

torch-pruning runs in a child process with a time limit, because on DLRM-style models its
autograd walk may not finish.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import sys
import time

import torch

import amgp_fx
from amgp_fx import models

CASES = [("dlrm", "default"), ("dcn_v2", "default"), ("deepfm", "default"), ("wide_deep", "default"),
         ("autoint", "default"), ("mmoe", "default"), ("dlrm", "industrial")]


def _torch_pruning_worker(name: str, preset: str, queue) -> None:
    import torch_pruning as tp

    torch.manual_seed(0)
    model = models.build_model(name, preset, **({"sparse_grads": False} if name == "dlrm" else {}))
    args = model.example_inputs(4)
    start = time.perf_counter()
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=args)
        groups = sum(1 for _ in graph.get_all_groups())
        queue.put({"seconds": time.perf_counter() - start, "groups": groups, "error": None})
    except Exception as e:  # noqa: BLE001 - we report whatever it raises
        queue.put({"seconds": time.perf_counter() - start, "groups": None, "error": f"{type(e).__name__}: {e}"[:200]})


def time_torch_pruning(name: str, preset: str, limit_s: float) -> dict:
    queue = mp.get_context("spawn").Queue()
    process = mp.get_context("spawn").Process(target=_torch_pruning_worker, args=(name, preset, queue))
    process.start()
    process.join(limit_s)
    if process.is_alive():
        process.kill()
        return {"seconds": None, "groups": None, "error": f"did not finish within {limit_s:.0f} s"}
    return queue.get() if not queue.empty() else {"seconds": None, "groups": None, "error": "crashed"}


def time_amgp(name: str, preset: str) -> dict:
    torch.manual_seed(0)
    model = models.build_model(name, preset)
    args = model.example_inputs(4)
    start = time.perf_counter()
    traced = amgp_fx.trace(model, args)
    traced_s = time.perf_counter() - start
    graph = amgp_fx.analyze(model, args, traced=traced)
    total_s = time.perf_counter() - start
    return {"trace_s": traced_s, "analyze_s": total_s - traced_s, "groups": len(graph.groups),
            "prunable": len(graph.prunable_groups()), "unknown_ops": len(graph.unknown_ops), "graph": graph,
            "model": model, "args": args}


def time_surgery(result: dict) -> dict:
    graph = result["graph"]
    optimizer = torch.optim.Adagrad(p for p in result["model"].parameters() if p.dim() == 2 and p.shape[0] < 100_000)
    graph.module(*result["args"]).sum().backward()
    optimizer.step()
    keep = {g.id: list(range(0, g.size, 2)) for g in graph.prunable_groups(("hidden",))}
    start = time.perf_counter()
    record = amgp_fx.shrink_(graph, keep, optimizer)
    shrink_s = time.perf_counter() - start
    start = time.perf_counter()
    amgp_fx.grow_(graph, record, optimizer)
    grow_s = time.perf_counter() - start
    return {"shrink_s": shrink_s, "grow_s": grow_s, "snapshot_mb": record.nbytes / 2**20, "groups_pruned": len(keep)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="write the records as JSON here")
    parser.add_argument("--tp-limit", type=float, default=120.0, help="seconds allowed to torch-pruning per model")
    parser.add_argument("--skip-industrial", action="store_true")
    args = parser.parse_args(argv)
    records = []
    cpu = platform.processor() or platform.machine()
    for name, preset in CASES:
        if args.skip_industrial and preset == "industrial":
            continue
        ours = time_amgp(name, preset)
        theirs = time_torch_pruning(name, preset, args.tp_limit)
        record = {"model": name, "preset": preset, "amgp_trace_s": round(ours["trace_s"], 3),
                  "amgp_analyze_s": round(ours["analyze_s"], 3), "amgp_groups": ours["groups"],
                  "amgp_prunable": ours["prunable"], "tp_seconds": theirs["seconds"] and round(theirs["seconds"], 3),
                  "tp_groups": theirs["groups"], "tp_error": theirs["error"], "device": f"cpu ({cpu}, {torch.get_num_threads()} threads)",
                  "torch": torch.__version__, "command": "python " + " ".join(sys.argv)}
        if preset == "industrial":
            record.update(time_surgery(ours))
        records.append(record)
        print(json.dumps(record), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(records, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What one AMGP shrink + grow costs, with the removed slices kept on the host or on the device.

An AMGP run of ``amgp-half`` makes six surgeries; on the H200 DLRM benchmark each took 0.12-0.22 s
(docs/benchmarks.md) while a pruned step takes ~15 ms, so surgery time is part of the wall-clock
comparison. This times ``shrink_`` (half of every hidden group, with Adam state) and ``grow_``
back, side by side for ``saved_device="cpu"`` and ``None`` (the parameters' device).

Example:
    python tools/bench_surgery.py --out docs/results/surgery_time.json     # GPU: DLRM industrial
    python tools/bench_surgery.py --tiny                                  # CPU smoke run
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_amgp  # noqa: E402

import amgp_fx  # noqa: E402
from amgp_fx.config import TrainConfig  # noqa: E402
from amgp_fx.fileio import atomic_write_json  # noqa: E402
from amgp_fx.train import build_optimizers  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_surgery(graph, optimizer, device: torch.device, saved_device, repeats: int) -> dict:
    """Median seconds of a shrink to half width and of the grow back (model, gradients, Adam state)."""
    keep = {g.id: list(range(0, g.size, 2)) for g in graph.prunable_groups(("hidden",))}
    shrink, grow, nbytes = [], [], 0
    for _ in range(repeats):
        _sync(device)
        began = time.perf_counter()
        record = amgp_fx.shrink_(graph, keep, optimizer, saved_device=saved_device)
        _sync(device)
        middle = time.perf_counter()
        amgp_fx.grow_(graph, record, optimizer)
        _sync(device)
        shrink.append(middle - began)
        grow.append(time.perf_counter() - middle)
        nbytes = record.nbytes
    return {"saved_device": str(saved_device) if saved_device is not None else "parameters' device",
            "shrink_s": statistics.median(shrink), "grow_s": statistics.median(grow), "saved_bytes": nbytes,
            "repeats": repeats}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dlrm", choices=sorted(bench_amgp.MODEL_SPECS))
    parser.add_argument("--tiny", action="store_true", help="small model on the CPU")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    spec = (bench_amgp.TINY_SPECS if args.tiny else bench_amgp.MODEL_SPECS)[args.model]
    with device:
        model = bench_amgp.build(spec)
    inputs = tuple(t.to(device) for t in model.example_inputs(4))
    graph = amgp_fx.analyze(model, inputs)
    # the benchmark's optimizers: Adam for the dense parameters, row-wise Adagrad for the sparse tables
    optimizer = build_optimizers(model, TrainConfig(optimizer="adam", lr=1e-4, sparse_optimizer="rowwise_adagrad",
                                                    sparse_lr=0.02))
    graph.module(*inputs).sum().backward()
    optimizer.step()  # Adam moments exist, so surgery slices them too
    records = [time_surgery(graph, optimizer, device, saved, args.repeats) for saved in ("cpu", None)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    for record in records:
        record.update(model=args.model, device=f"{name} (torch {torch.__version__})",
                      command="python tools/bench_surgery.py " + " ".join(sys.argv[1:] if argv is None else argv))
        print(json.dumps(record), flush=True)
    if args.out:
        atomic_write_json(Path(args.out), records)
    return records


if __name__ == "__main__":
    main()

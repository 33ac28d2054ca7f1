"""Dense DLRM training throughput and AUC on synthetic Criteo-like data (issue 2's GPU check).

    PYTHONPATH=. python3 tools/bench_train_throughput.py --out docs/results/dense_throughput.json

Produced docs/results/dense_throughput.json on one H200 (torch 2.11, TF32 on).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from amgp_fx import models
from amgp_fx.config import SyntheticConfig, TrainConfig
from amgp_fx.data import SyntheticCriteo
from amgp_fx.train import train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--test-rows", type=int, default=200_000)
    parser.add_argument("--presets", nargs="+", default=["default", "mlperf"])
    parser.add_argument("--batch-size", type=int, default=16384)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = True
    started = time.time()
    data = SyntheticCriteo(SyntheticConfig.from_preset("default"))
    train_rows, test_rows = data.rows(0, args.rows), data.rows(10**9, 10**9 + args.test_rows)
    print(f"data ready in {time.time() - started:.1f}s", flush=True)
    records = []
    for preset in args.presets:
        torch.manual_seed(0)
        model = models.build_model("dlrm", preset, **data.spec.model_kwargs()).to(args.device)
        config = TrainConfig(optimizer="adam", lr=1e-3, batch_size=args.batch_size, epochs=1, device=args.device,
                             data_on_device=args.device != "cpu", log_every=0)
        result = train(model, train_rows, test_rows, config, progress=False)
        device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        record = dict(model="dlrm", preset=preset, batch_size=args.batch_size, samples=args.rows,
                      samples_per_s=result.samples_per_s, auc=result.metrics["auc"], logloss=result.metrics["logloss"],
                      wall_clock_s=result.wall_clock_s, device=device, torch=torch.__version__,
                      command="python3 " + " ".join(sys.argv))
        print(json.dumps(record), flush=True)
        records.append(record)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(records, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

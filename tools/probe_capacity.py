"""Does width pay off? Dense vs small-dense AUC gap for a list of synthetic teachers (issue 4).

Issue 4's comparison says nothing unless the dense model beats the small dense model (every
hidden MLP width times ``--width-scale``, 0.74: the width whose FLOPs equal AMGP's average step)
by at least 0.003 AUC. For each teacher variant this tool generates the training and held-out rows
once (``bench_amgp.make_rows``), trains the dense and the small-dense model of each ``--models``
spec with the same rows, steps, optimizers and seeds (``amgp_fx.train.train``, no hooks, sparse
embedding gradients as ``bench_amgp.build`` sets them), for each dense learning rate of ``--lrs``,
and reports per variant, model and lr: AUC dense, AUC small, the gap (mean and per seed), the
teacher's Bayes AUC (its noise-free logits on the held-out rows), the label rate and the seconds
per run. The learning rate matters as much as the teacher: in standard parametrisation the best
Adam lr falls with width, so at a single lr that suits the narrow model the wide one may lose.

Teachers (``--teachers``): a SyntheticConfig preset name (``capacity``), or a JSON object of
field overrides with an optional ``"preset"`` key (``'{"preset": "capacity", "zipf_exponent": 1.4}'``).
Table sizes: the models' (26 x 200k, or the proxy's with ``--tiny``) unless the teacher JSON sets
``table_sizes``, in which case the models are built with the teacher's tables.

Modes:
    default  GPU (one H200): bench_amgp's full-size models (``MODEL_SPECS``), 4M rows per run.
    --tiny   CPU proxy: the same model shapes with every MLP width / 8, embedding dim 16 and
             26 x 10k tables, 256k rows of batch 1024 (the GPU's 256 steps), 1 thread; about 2.5
             minutes per teacher and model. Its gaps did not carry over to the H200 (it favoured
             width at lr 1e-3 where the full-size models did not): use it to check the code and
             to rank teachers, not to decide.

Output: a JSON list of records (written after every run) and a table on stdout.

Example:
    python tools/probe_capacity.py --tiny --teachers capacity wide_teacher --models dlrm
    python tools/probe_capacity.py --teachers capacity wide_teacher --models dlrm dcn_v2 \
        --samples 4194304 --seeds 2 --lrs 1e-3 1e-4 --budget-s 300 --out /tmp/probe.json
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_amgp import GPU_TABLES, MODEL_SPECS, build, make_rows, scaled_overrides  # noqa: E402

from amgp_fx.config import SyntheticConfig, TrainConfig  # noqa: E402
from amgp_fx.metrics import auc  # noqa: E402
from amgp_fx.data import SyntheticCriteo  # noqa: E402
from amgp_fx.fileio import atomic_write_json  # noqa: E402
from amgp_fx.train import train  # noqa: E402

PROXY_TABLES = (10_000,) * 26
# CPU proxies of MODEL_SPECS: the same shapes, every MLP width / 8, embedding dim 16, 10k-row tables
PROXY_SPECS: dict[str, dict[str, Any]] = {
    "dlrm": dict(model="dlrm", preset="industrial",
                 overrides=dict(table_sizes=PROXY_TABLES, embedding_dim=16, bottom_mlp=(256, 128, 64, 16),
                                top_mlp=(512, 512, 256, 128))),
    "dcn_v2": dict(model="dcn_v2", preset="default",
                   overrides=dict(table_sizes=PROXY_TABLES, deep_mlp=(256, 128, 64), dropout=0.0)),
}


def parse_teacher(text: str) -> tuple[str, SyntheticConfig, dict[str, Any]]:
    """A preset name or a JSON object of overrides (optional "preset" key) -> (label, config, overrides)."""
    text = text.strip()
    if text.startswith("{"):
        overrides = json.loads(text)
        preset = overrides.pop("preset", "default")
        label = preset + "+" + ",".join(f"{k}={v}" for k, v in overrides.items()) if overrides else preset
    else:
        preset, overrides, label = text, {}, text
    return label, SyntheticConfig.from_preset(preset, **overrides), overrides


def for_teacher(spec: dict[str, Any], config: SyntheticConfig) -> dict[str, Any]:
    """The model spec with the teacher's input layout (table sizes, number of dense features)."""
    return {**spec, "overrides": {**spec["overrides"], "table_sizes": tuple(config.table_sizes),
                                  "num_dense": config.num_dense}}


def run_one(spec: dict[str, Any], overrides: dict[str, Any] | None, seed: int, data, args, steps: int,
            lr: float) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(seed)
    with device:
        model = build(spec, overrides)
    config = TrainConfig(optimizer=args.optimizer, lr=lr, sparse_optimizer=args.sparse_optimizer,
                         sparse_lr=args.sparse_lr, batch_size=args.batch_size, steps=steps,
                         eval_batch_size=args.eval_batch_size, log_every=0, eval_every=0,
                         device=str(device), seed=seed, data_on_device=True)
    began = time.perf_counter()
    result = train(model, data[0], data[1], config, hooks=[], progress=False)
    record = {"seed": seed, "auc": result.metrics["auc"], "logloss": result.metrics["logloss"],
              "train_s": result.wall_clock_s, "run_s": time.perf_counter() - began,
              "parameters": sum(p.numel() for p in model.parameters())}
    del model, result
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return record


def bayes_auc(config: SyntheticConfig, start: int, count: int) -> float:
    """AUC of the teacher's noise-free logits against its labels on rows [start, start + count)."""
    batch, logits = SyntheticCriteo(config).rows_with_logits(start, start + count)
    label = batch.label.numpy() if batch.label.dim() == 1 else batch.label[:, 0].numpy()
    return auc(torch.as_tensor(label), logits[:, 0])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU proxy models (widths / 8, 10k tables)")
    parser.add_argument("--models", nargs="+", default=["dlrm"], choices=sorted(MODEL_SPECS))
    parser.add_argument("--teachers", nargs="+", default=["capacity", "wide_teacher"],
                        help="preset names or JSON override objects (optional 'preset' key)")
    parser.add_argument("--samples", type=int, default=None, help="training rows per run (default 4M, tiny 256k)")
    parser.add_argument("--test-samples", type=int, default=None, help="held-out rows (default 262144, tiny 65536)")
    parser.add_argument("--bayes-samples", type=int, default=65_536, help="held-out rows for the Bayes AUC")
    parser.add_argument("--batch-size", type=int, default=None, help="default 16384, tiny 1024")
    parser.add_argument("--eval-batch-size", type=int, default=None)
    parser.add_argument("--width-scale", type=float, default=0.74, help="small dense: hidden widths times this")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1)")
    parser.add_argument("--optimizer", default="adam", choices=["sgd", "adam", "adamw", "adagrad"])
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-3],
                        help="dense learning rates; each is a separate dense/small pair on the same rows")
    parser.add_argument("--sparse-optimizer", default="rowwise_adagrad",
                        choices=["rowwise_adagrad", "sparse_adam", "adagrad", "sgd"])
    parser.add_argument("--sparse-lr", type=float, default=0.02)
    parser.add_argument("--device", default=None, help="default cuda if available (tiny: cpu)")
    parser.add_argument("--no-tf32", dest="tf32", action="store_false", help="disable TF32 matmuls on the GPU")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (tiny default 1)")
    parser.add_argument("--workers", type=int, default=None, help="data generation processes (default: cores)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no variant or run that would end past this many seconds")
    parser.add_argument("--out", default="/tmp/probe_capacity.json")
    args = parser.parse_args(argv)
    tiny = args.tiny
    args.samples = args.samples or (262_144 if tiny else 4_194_304)
    args.test_samples = args.test_samples or (65_536 if tiny else 262_144)
    args.batch_size = args.batch_size or (1_024 if tiny else 16_384)
    args.eval_batch_size = args.eval_batch_size or (8_192 if tiny else 65_536)
    args.device = args.device or ("cpu" if tiny or not torch.cuda.is_available() else "cuda")
    args.workers = args.workers or max(1, min(32, os.cpu_count() or 1))
    if args.threads or tiny:
        torch.set_num_threads(args.threads or 1)  # CPU proxy: 2 threads on 2 shared cores contend
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    start = time.perf_counter()
    specs = PROXY_SPECS if args.tiny else MODEL_SPECS
    default_tables = PROXY_TABLES if args.tiny else GPU_TABLES
    steps = max(1, args.samples // args.batch_size)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {message}", flush=True)

    records: list[dict] = []
    longest_variant = 0.0
    for text in args.teachers:
        label, config, overrides = parse_teacher(text)
        if "table_sizes" not in overrides:
            config = SyntheticConfig.from_dict({**config.to_dict(), "table_sizes": list(default_tables)})
        elapsed = time.perf_counter() - start
        if args.budget_s is not None and records and elapsed + longest_variant > args.budget_s:
            say(f"budget: skipping teacher {label} and the rest")
            break
        began = time.perf_counter()
        say(f"teacher {label}: generating {steps * args.batch_size} + {args.test_samples} rows")
        train_rows = make_rows(config, 0, steps * args.batch_size, args.workers)
        test_rows = make_rows(config, 1 << 40, args.test_samples, args.workers)
        bayes = bayes_auc(config, 1 << 40, min(args.bayes_samples, args.test_samples))
        ctr = float(train_rows.label.float().mean())
        data = (train_rows.to(device), test_rows.to(device))
        gen_s = time.perf_counter() - began
        say(f"teacher {label}: data {gen_s:.1f}s, label rate {ctr:.3f}, Bayes AUC {bayes:.4f}")
        for name, lr in [(name, lr) for name in args.models for lr in args.lrs]:
            spec = for_teacher(specs[name], config)
            small = scaled_overrides(spec, args.width_scale)
            runs: dict[str, list[dict]] = {"dense": [], "small_dense": []}
            for seed in range(args.seeds):
                for method in runs:
                    longest = max((r["run_s"] for rs in runs.values() for r in rs), default=0.0)
                    if args.budget_s is not None and time.perf_counter() - start + 1.2 * longest > args.budget_s:
                        say(f"budget: skipping {name}/{method}/seed {seed}")
                        continue
                    run = run_one(spec, small if method == "small_dense" else None, seed, data, args, steps, lr)
                    runs[method].append(run)
                    say(f"{label} {name} lr {lr:g} {method:11s} seed {seed}: auc {run['auc']:.5f} "
                        f"logloss {run['logloss']:.5f} ({run['run_s']:.1f}s)")
            record = {"teacher": label, "teacher_config": {k: v for k, v in config.to_dict().items()
                                                          if k != "table_sizes"},
                      "table_sizes": sorted(set(config.table_sizes)), "model": name, "lr": lr,
                      "bayes_auc": bayes, "label_rate": ctr, "data_s": gen_s, "samples": steps * args.batch_size,
                      "steps": steps, "batch_size": args.batch_size, "width_scale": args.width_scale,
                      "small_overrides": {k: v for k, v in small.items() if k not in ("table_sizes", "num_dense")},
                      "device": str(device), "tiny": bool(args.tiny), "per_seed": runs}
            for method, rs in runs.items():
                record[f"auc_{method}"] = statistics.fmean(r["auc"] for r in rs) if rs else None
                record[f"run_s_{method}"] = statistics.fmean(r["run_s"] for r in rs) if rs else None
            if record["auc_dense"] is not None and record["auc_small_dense"] is not None:
                record["gap"] = record["auc_dense"] - record["auc_small_dense"]
                paired = [d["auc"] - s["auc"] for d, s in zip(runs["dense"], runs["small_dense"])]
                record["gap_per_seed"] = paired
            records.append(record)
            atomic_write_json(Path(args.out), records)
        longest_variant = max(longest_variant, time.perf_counter() - began)
        del data, train_rows, test_rows
        gc.collect()

    print(f"\n{'teacher':48s} {'model':7s} {'lr':>7s} {'bayes':>6s} {'dense':>8s} {'small':>8s} {'gap':>8s} {'s/run':>6s}")
    for r in records:
        gap = r.get("gap")
        flag = "" if gap is None or gap >= 0.003 else "  < 0.003"
        print(f"{r['teacher'][:48]:48s} {r['model']:7s} {r['lr']:7.1e} {r['bayes_auc']:6.4f} "
              f"{(r['auc_dense'] or float('nan')):8.5f} {(r['auc_small_dense'] or float('nan')):8.5f} "
              f"{(gap if gap is not None else float('nan')):+8.5f} {(r['run_s_dense'] or float('nan')):6.1f}{flag}")
    say(f"wrote {args.out}")
    return records


if __name__ == "__main__":
    main()

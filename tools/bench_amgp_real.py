"""AMGP on real data (issue 4): dense vs AMGP vs prune-only vs small dense on MovieLens-100k / Adult CTR.

The synthetic benchmark (``tools/bench_amgp.py``) could not tell the methods apart because its
teacher barely rewards width; this repeats the same comparison on the real datasets of
``tools/fetch_real_data.py``. It reuses bench_amgp's pieces by import (model building, width
scaling, FLOPs matching, one run, aggregation), so both benchmarks share one recipe: ``amgp-half``
at ratio 0.5, prune-only matched to AMGP's predicted training FLOPs with ``match_prune_only``, and
a small dense model whose width scale ``flops.width_scale_for_flops`` matches AMGP's average step.

Every method trains the same fixed training split (``train_eval_split(rows, 0.2, seed=0)``) for the
same number of epochs (reshuffled per seed) and is scored on the same held-out 20%. Dense layers
train with Adam, embedding tables with row-wise Adagrad (bench_amgp's default). The two learning
rates and the epochs per (dataset, model) were tuned once for the dense model (best held-out
AUC/logloss); see docs/benchmarks.md. ``--lr-grid`` instead runs every method at each of
several dense rates and reports each at its own best mean AUC, with AMGP's paired per-seed
differences (95% interval) to every other method, as ``tools/bench_amgp.py`` does on the GPU.
Wall-clock is the AMGP hook's per-phase training time on this machine: on a CPU it is only
meaningful as a ratio to the dense run of the same invocation.

Needs the .npy datasets: ``python tools/fetch_real_data.py --cache data/cache --out data``.

``--recurring-share S`` adds the recurring-training stage on real time (MovieLens has timestamps,
Adult has none): the newest share S of the rows is held back; the methods train and are scored as
above on the older rows only, then each final model (full-size for AMGP and dense, compact for
prune-only, small for small dense) keeps training for ``--recurring-epochs`` on the older half of
the held-back rows and is scored on the newer half: trained on the past, tested on the future.

Example:
    python tools/bench_amgp_real.py --dataset movielens          # -> docs/results/amgp_train_movielens.json
    python tools/bench_amgp_real.py --dataset adult
    python tools/bench_amgp_real.py --tiny --data-dir /tmp/fake --out /tmp/amgp_{dataset}.json
    python tools/bench_amgp_real.py --dataset movielens --recurring-share 0.2 --out /tmp/amgp_{dataset}_recurring.json
    python tools/bench_amgp_real.py --dataset adult --lr-grid 1e-4 3e-4 1e-3 --seeds 5 --out /tmp/amgp_{dataset}_grid.json
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_amgp  # noqa: E402
from fetch_real_data import TIME_FILE  # noqa: E402  (written where the source has timestamps)
from amgp_fx.data import Batch, DatasetSpec, load_npy_dataset, train_eval_split  # noqa: E402
from amgp_fx.amgp_report import add_paired, best_per_method  # noqa: E402
from amgp_fx.fileio import atomic_write_json  # noqa: E402
from amgp_fx.paired_stats import describe_interval, paired_differences  # noqa: E402

METHODS = bench_amgp.METHODS
DATASETS = {"movielens": "movielens100k_ctr", "adult": "adult_ctr"}
EVAL_FRACTION = 0.2
SPLIT_SEED = 0

# dataset -> model -> architecture (widths for ~100k rows: MLPs wide enough that halving them
# matters) and the training setup tuned once for the dense model
SPECS: dict[str, dict[str, dict[str, Any]]] = {
    "movielens": {
        "dlrm": dict(model="dlrm", preset="default",
                     overrides=dict(embedding_dim=16, bottom_mlp=(512, 256, 16), top_mlp=(512, 256)),
                     lr=1e-4, sparse_lr=0.05, batch_size=1024, epochs=3),
        "dcn_v2": dict(model="dcn_v2", preset="default",
                       overrides=dict(embedding_dim=16, num_cross_layers=3, deep_mlp=(512, 256), dropout=0.0),
                       lr=1e-4, sparse_lr=0.05, batch_size=1024, epochs=4),
    },
    "adult": {
        "dlrm": dict(model="dlrm", preset="default",
                     overrides=dict(embedding_dim=16, bottom_mlp=(512, 256, 16), top_mlp=(512, 256)),
                     lr=3e-4, sparse_lr=0.05, batch_size=1024, epochs=12),
    },
}
# CPU smoke check: narrow, but the top MLP wide enough that 8-unit rounding keeps the baselines'
# FLOPs within a few % of AMGP's
TINY_SPEC = dict(model="dlrm", preset="small",
                 overrides=dict(embedding_dim=8, bottom_mlp=(64, 8), top_mlp=(256, 128)),
                 lr=1e-2, sparse_lr=0.05, batch_size=256, epochs=2)


# -- data ----------------------------------------------------------------------------------------------
def load_split(data_dir: str, dataset: str, max_rows: int | None, recurring_share: float = 0.0
               ) -> tuple[Batch, Batch, DatasetSpec, tuple[Batch, Batch] | None]:
    """The fixed (train, test) split every method and seed shares, so only training differs; with a
    ``recurring_share``, first the newest rows are held back as (recurring train, recurring test), the
    older half of them to train on and the newer half to test on."""
    directory = Path(data_dir) / DATASETS[dataset]
    rows, spec = load_npy_dataset(directory)
    recurring = None
    if recurring_share:
        if not (directory / TIME_FILE).is_file():
            raise SystemExit(f"bench_amgp_real: error: {directory} has no {TIME_FILE}, so it cannot be split by time "
                             "(Adult has no timestamps). Re-run tools/fetch_real_data.py for MovieLens, or drop "
                             "--recurring-share")
        when = np.load(directory / TIME_FILE, allow_pickle=False)
        if when.shape != (rows.num_rows,):
            raise SystemExit(f"bench_amgp_real: error: {directory / TIME_FILE} has {when.shape} entries for "
                             f"{rows.num_rows} rows. Re-run tools/fetch_real_data.py")
        order = torch.from_numpy(np.argsort(when, kind="stable"))  # oldest first; ties keep the file's order
        rows = rows[order]
        held = round(rows.num_rows * recurring_share)
        rows, newest = rows[: rows.num_rows - held], rows[rows.num_rows - held:]
        recurring = (newest[: held // 2], newest[held // 2:])
    if max_rows is not None and rows.num_rows > max_rows:
        rows = rows[:max_rows]
    train_rows, test_rows = train_eval_split(rows, EVAL_FRACTION, seed=SPLIT_SEED)
    return train_rows, test_rows, spec, recurring


def model_spec(entry: dict[str, Any], data_spec: DatasetSpec) -> dict[str, Any]:
    """bench_amgp's spec format, with the dataset's dense count and table sizes filled in."""
    overrides = {**entry["overrides"], "num_dense": data_spec.num_dense, "table_sizes": tuple(data_spec.table_sizes)}
    return {**entry, "overrides": overrides}


# -- one model -----------------------------------------------------------------------------------------
def bench_args(args, entry: dict[str, Any], steps: int, test_rows: int, recurring_steps: int = 0
               ) -> argparse.Namespace:
    """bench_amgp's own argument namespace (so its helpers find every field they read), set to this run."""
    argv = ["--device", "cpu", "--seeds", str(args.seeds), "--optimizer", args.optimizer,
            "--lr", repr(entry["lr"]), "--sparse-optimizer", args.sparse_optimizer,
            "--sparse-lr", repr(entry["sparse_lr"]), "--batch-size", str(entry["batch_size"]),
            "--eval-batch-size", "8192",
            "--samples", str(steps * entry["batch_size"]), "--test-samples", str(test_rows),
            "--recipe", args.recipe, "--ratio", repr(args.ratio), "--eval-every", str(args.eval_every),
            "--criterion", args.criterion, "--grow-init", args.grow_init, "--optimizer-state", args.optimizer_state,
            "--recurring-steps", str(recurring_steps), "--lr-schedule", args.lr_schedule,
            "--lr-warmup", repr(args.lr_warmup)]
    return bench_amgp.parse_args(argv)


def steps_for(entry: dict[str, Any], train_rows: int) -> int:
    """Whole epochs over the training split (the last batch of an epoch may be short)."""
    return entry["epochs"] * -(-train_rows // entry["batch_size"])


def bench_model(name: str, entry: dict[str, Any], data: tuple[Batch, Batch], args, say, write,
                recurring: tuple[Batch, Batch] | None = None) -> list[dict]:
    """Plan once, then run every (seed, method, rate) interleaved, writing the records after each run:
    one record per (method, rate), each method at its best rate picked by ``write``."""
    steps = steps_for(entry, data[0].num_rows)
    recurring_steps = args.recurring_epochs * -(-recurring[0].num_rows // entry["batch_size"]) if recurring else 0
    grid = args.lr_grid or [entry["lr"]]
    bargs = {lr: bench_args(args, {**entry, "lr": lr}, steps, data[1].num_rows, recurring_steps) for lr in grid}
    plan = bench_amgp.make_plan(entry, bargs[grid[0]], steps)
    ratios = ", ".join(f"{m} {plan.predicted[m] / plan.predicted['dense']:.3f}" for m in METHODS)
    say(f"{name}: {steps} steps of {entry['batch_size']} ({entry['epochs']} epochs, lr "
        f"{' '.join(f'{lr:g}' for lr in grid)}, sparse lr {entry['sparse_lr']:g}, {args.lr_schedule} schedule); "
        f"predicted FLOPs vs dense: {ratios}; small-dense scale {plan.small_scale:.3f}")
    device_name = _device_name()
    runs: dict[tuple[str, float], list[dict]] = {(m, lr): [] for m in args.methods for lr in grid}
    records: list[dict] = []
    for seed in range(args.seeds):
        for method in args.methods:
            for lr in grid:
                load_before = _load()
                curve = _curve_path(args, name, method, seed) if lr == grid[0] else None
                run = bench_amgp.run_one(entry, method, seed, plan, data, bargs[lr], steps, curve, recurring)
                run.update(load_before=load_before, load_after=_load())
                runs[(method, lr)].append(run)
                later = f", recurring auc {run['recurring_auc']:.5f}" if recurring else ""
                say(f"{name} {method:11s} lr {lr:g} seed {seed}: auc {run['auc']:.5f} logloss {run['logloss']:.5f} "
                    f"train {run['wall_clock_s']:.2f}s flops {run['train_flops'] / 1e12:.4f}T{later} "
                    f"(load {load_before:.1f} -> {run['load_after']:.1f})")
                records = [finish_record(bench_amgp.aggregate(name, m, rs, plan, bargs[r], steps, device_name),
                                         entry, args, data) for (m, r), rs in runs.items() if rs]
                write(name, records)
    return records


def finish_record(record: dict, entry: dict[str, Any], args, data: tuple[Batch, Batch]) -> dict:
    """bench_amgp's record, re-labelled for real data: dataset, true rows seen, this command."""
    record.pop("teacher", None)  # synthetic data only
    for key in ("drift", "new_id_share"):  # the synthetic teacher's shift; real data shifts by itself, in time
        record.pop(key, None)
    if "recurring_auc_mean" in record:
        record.update(recurring_share=args.recurring_share, recurring_epochs=args.recurring_epochs)
    record.pop("tf32", None)  # GPU only
    architecture = {k: list(v) if isinstance(v, tuple) else v for k, v in entry["overrides"].items()}
    record.update(dataset=DATASETS[args.dataset], command=_command(), samples=entry["epochs"] * data[0].num_rows,
                  epochs=entry["epochs"], train_rows=data[0].num_rows, test_rows=data[1].num_rows,
                  eval_fraction=EVAL_FRACTION, split_seed=SPLIT_SEED, recipe=args.recipe, ratio=args.ratio,
                  architecture=architecture, tiny=bool(args.tiny),
                  wall_clock_min_s=min(r["wall_clock_s"] for r in record["per_seed"]))
    return record


def _curve_path(args, name: str, method: str, seed: int) -> str | None:
    """Seed 0's metrics log (eval AUC every --eval-every steps, AMGP phases), to see when a method falls behind."""
    if not args.curve_dir or seed != 0:
        return None
    Path(args.curve_dir).mkdir(parents=True, exist_ok=True)
    return str(Path(args.curve_dir) / f"amgp_{args.dataset}_{name}_{method}.jsonl")


def _load() -> float:
    """1-minute load average: this run alone adds about its thread count; more means another process
    shared the cores and the wall-clock of that run is inflated."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def add_ratios(records: list[dict]) -> list[dict]:
    """FLOPs and wall-clock relative to the same model's dense run: the only wall-clock reading a CPU allows
    (the min over seeds too, the run least disturbed by other processes on a shared machine)."""
    dense = {r["model"]: r for r in records if r["method"] == "dense"}
    for record in records:
        base = dense.get(record["model"])
        if base:
            record["flops_vs_dense"] = record["train_flops"] / base["train_flops"]
            record["wall_clock_vs_dense"] = record["wall_clock_s"] / base["wall_clock_s"]
            record["wall_clock_min_vs_dense"] = record["wall_clock_min_s"] / base["wall_clock_min_s"]
            record["auc_vs_dense"] = record["auc_mean"] - base["auc_mean"]
    return records


# -- reporting -----------------------------------------------------------------------------------------
def _command() -> str:
    return "python tools/bench_amgp_real.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _device_name() -> str:
    """bench_amgp's CPU description plus the CPU model, since CPU timings depend on it."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip() + ", "
                break
    except OSError:
        pass
    return model + bench_amgp._device_name(torch.device("cpu"))


def print_summary(records: list[dict]) -> None:
    """The comparison table and, per model, the margins the reading in docs/benchmarks.md uses."""
    try:
        from amgp_fx.amgp_report import comparison_table
        print(comparison_table(records), flush=True)
    except ImportError as error:  # tabulate missing: the JSON file has everything
        print(f"(no table: {error})", flush=True)
    for name in dict.fromkeys(r["model"] for r in records):
        by = {r["method"]: r for r in records if r["model"] == name}
        if "dense" in by and "small_dense" in by:
            print(f"{name}: dense - small dense AUC = {by['dense']['auc_mean'] - by['small_dense']['auc_mean']:+.4f}")
        for other, stages in by.get("amgp", {}).get("paired_vs", {}).items():
            for key, paired in stages.items():
                stage = "recurring stage, " if key == "recurring_auc" else ""
                per_seed = ", ".join(f"{d:+.4f}" for d in paired["per_seed"])
                print(f"{name}: {stage}amgp (lr {by['amgp']['lr']:g}) - {other} (lr {by[other]['lr']:g}) AUC "
                      f"{paired['mean']:+.4f} ({describe_interval(paired)}); per seed {per_seed}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="movielens", choices=sorted(DATASETS))
    parser.add_argument("--data-dir", default="data", help="where tools/fetch_real_data.py wrote the datasets")
    parser.add_argument("--tiny", action="store_true", help="smoke check: small DLRM, few rows, 2 epochs, 2 seeds")
    parser.add_argument("--models", nargs="+", default=None, help="default: every model of the dataset")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3, tiny 2)")
    parser.add_argument("--epochs", type=int, default=None, help="override the tuned epochs of every model")
    parser.add_argument("--lr", type=float, default=None, help="override the tuned dense lr of every model")
    parser.add_argument("--lr-grid", type=float, nargs="+", default=None,
                        help="run every method at each of these dense learning rates and report each at its best "
                             "mean AUC (every rate's record in <out>.grid.json)")
    parser.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine", "linear"])
    parser.add_argument("--lr-warmup", type=float, default=0.0, help="share of the run for lr warm-up")
    parser.add_argument("--sparse-lr", type=float, default=None, help="override the tuned embedding lr")
    parser.add_argument("--max-rows", type=int, default=None, help="use the first N rows only (tiny: 4096)")
    parser.add_argument("--optimizer", default="adam", choices=["sgd", "adam", "adamw", "adagrad"])
    parser.add_argument("--sparse-optimizer", default="rowwise_adagrad",
                        help="embedding optimizer (bench_amgp's choices); the tuned sparse lr is for row-wise Adagrad")
    parser.add_argument("--recipe", default="amgp-half")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--criterion", default="l2", choices=["l2", "l1", "taylor", "random"])
    parser.add_argument("--grow-init", default="restore", choices=["restore", "fresh", "split", "gradmax"])
    parser.add_argument("--optimizer-state", default="restore", choices=["restore", "reset"])
    parser.add_argument("--eval-every", type=int, default=0,
                        help="evaluate every N steps (wall-clock then includes evaluation; default: at the end only)")
    parser.add_argument("--recurring-share", type=float, default=0.0, metavar="SHARE",
                        help="hold back the newest SHARE of the rows (by timestamp) for the recurring stage: each "
                             "final model trains on their older half and is scored on the newer half (default: off)")
    parser.add_argument("--recurring-epochs", type=int, default=1, help="epochs of the recurring stage (default 1)")
    parser.add_argument("--curve-dir", default=None, help="write seed 0's metrics log per method here")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="docs/results/amgp_train_{dataset}.json",
                        help="output JSON; {dataset} is replaced by the --dataset name")
    args = parser.parse_args(argv)
    args.seeds = args.seeds or (2 if args.tiny else 3)
    args.max_rows = args.max_rows or (4096 if args.tiny else None)
    if args.lr_grid and (min(args.lr_grid) <= 0 or len(set(args.lr_grid)) != len(args.lr_grid)):
        parser.error(f"--lr-grid needs distinct positive rates, got {' '.join(f'{lr:g}' for lr in args.lr_grid)}")
    if not 0.0 <= args.recurring_share < 1.0 or args.recurring_epochs < 1:
        parser.error("--recurring-share must be in [0, 1) and --recurring-epochs at least 1")
    return args


def model_entries(args) -> dict[str, dict[str, Any]]:
    """The (name -> spec) to run, with command-line overrides of the tuned setup."""
    specs = {"dlrm": TINY_SPEC} if args.tiny else SPECS[args.dataset]
    names = args.models or list(specs)
    unknown = sorted(set(names) - set(specs))
    if unknown:
        raise SystemExit(f"no spec for {unknown} on {args.dataset}; choose from {sorted(specs)}")
    overrides = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr), ("sparse_lr", args.sparse_lr))
                 if v is not None}
    return {name: {**specs[name], **overrides} for name in names}


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {message}", flush=True)

    train_rows, test_rows, data_spec, recurring = load_split(args.data_dir, args.dataset, args.max_rows,
                                                             args.recurring_share)
    say(f"{data_spec.name}: {train_rows.num_rows} train / {test_rows.num_rows} test rows, "
        f"click rate {float(train_rows.label.mean()):.3f}, tables {list(data_spec.table_sizes)}"
        + (f"; recurring stage on the newest rows: {recurring[0].num_rows} train / {recurring[1].num_rows} test"
           if recurring else ""))
    out = Path(args.out.format(dataset=args.dataset))
    done: dict[str, list[dict]] = {}

    def best() -> list[dict]:
        """Each (model, method) at its best rate (the only rate without --lr-grid), with ratios to dense."""
        return add_ratios(add_paired(best_per_method([r for rs in done.values() for r in rs])))

    def write(name: str, records: list[dict]) -> None:
        done[name] = records
        if args.lr_grid:
            atomic_write_json(bench_amgp.grid_path(out), [r for rs in done.values() for r in rs])
        atomic_write_json(out, best())

    for name, entry in model_entries(args).items():
        bench_model(name, model_spec(entry, data_spec), (train_rows, test_rows), args, say, write, recurring)
    records = best()
    atomic_write_json(out, records)
    print_summary(records)
    say(f"wrote {out}")
    return records


if __name__ == "__main__":
    main()

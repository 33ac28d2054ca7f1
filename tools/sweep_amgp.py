"""Which AMGP settings cost the AUC? One data set, many variants, side by side (issue 4).

``tools/bench_amgp.py`` compares the four methods at one setting; this runs named variants of
AMGP (and dense at other learning rates) on the same generated data in one process, so that a GPU
call spends its time training instead of regenerating 8M rows per setting. Every variant is a set
of overrides of bench_amgp's arguments (recipe, ratio, criterion, grow-init, optimizer-state, lr,
method); ``fractions`` defines a schedule that is not a named recipe, and ``config`` sets AmgpConfig
fields that bench_amgp has no flag for (both registered as a recipe for this run only).

Example:
    python tools/sweep_amgp.py --model dlrm --out docs/results/amgp_sweep_dlrm.json      # GPU, ~8 min
    python tools/sweep_amgp.py --tiny --variants base fresh --out /tmp/sweep.json        # CPU smoke run
    python tools/sweep_amgp.py --cpu-proxy --seeds 2 --variants dense base lr-x2 --out /tmp/proxy.json  # ~4 min
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_amgp  # noqa: E402
from amgp_fx.fileio import atomic_write_json  # noqa: E402
from amgp_fx.schedule import RECIPES  # noqa: E402

# name -> overrides of bench_amgp's arguments; "method" defaults to amgp
VARIANTS: dict[str, dict[str, Any]] = {
    "dense": dict(method="dense"),
    "small-dense": dict(method="small_dense"),  # widths matched to AMGP's average step FLOPs
    "prune-only": dict(method="prune_only"),  # gradual pruning to AMGP's ratio, FLOPs matched
    "base": dict(),  # amgp-half, l2, restore values and optimizer state
    "fresh": dict(grow_init="fresh"),  # regrown units: random in, zero out (no jump at growth)
    "reset": dict(optimizer_state="reset"),  # regrown units' Adam moments zeroed
    "one-cycle": dict(fractions=dict(warmup=0.1, pruned=0.6, cycles=1, final=0.3)),  # two surgeries, not six
    "grow-late": dict(fractions=dict(warmup=0.0, pruned=0.6, cycles=1, final=0.4), grow_init="fresh"),
    "quarter": dict(recipe="amgp-quarter", ratio=0.25),
    "no-rescale": dict(rescale=False),
    "lr-x2": dict(pruned_lr_scale=2.0),  # dense lr doubled while pruned (AmgpConfig.pruned_lr_scale)
    "lr-x3": dict(pruned_lr_scale=3.0),
    "dense-lr2e-4": dict(method="dense", lr=2e-4),
    "base-lr2e-4": dict(lr=2e-4),
    "small-dense-lr2e-4": dict(method="small_dense", lr=2e-4),
    "small-dense-lr3e-4": dict(method="small_dense", lr=3e-4),
    "dense-lr5e-4": dict(method="dense", lr=5e-4),
    "base-lr5e-4": dict(lr=5e-4),
    "small-dense-lr5e-4": dict(method="small_dense", lr=5e-4),
    "dense-lr3e-4": dict(method="dense", lr=3e-4),
    "base-lr3e-4": dict(lr=3e-4),
    "dense-lr1e-3": dict(method="dense", lr=1e-3),
    "base-lr1e-3": dict(lr=1e-3),
    # switch policies (amgp_fx.switch), shares of a pruned phase
    "fade": dict(fade=0.25),  # units faded out before each shrink: the shrink changes nothing
    "preserve": dict(preserve_growth=True, grow_ramp=0.25),  # growth changes nothing, then ramps back
    "lossless": dict(fade=0.25, preserve_growth=True, grow_ramp=0.25),  # both switches smooth
    "rotate": dict(selection="rotate"),  # disjoint shares of units sit out in turn
    "balanced": dict(selection="balanced"),  # those that sat out least, by importance among equals
    "lossless-balanced": dict(fade=0.25, preserve_growth=True, grow_ramp=0.25, selection="balanced"),
    "lossless-rotate": dict(fade=0.25, preserve_growth=True, grow_ramp=0.25, selection="rotate"),
    "balanced-rewarm": dict(selection="balanced", rewarm=0.1),
    "grow-late-lossless": dict(fractions=dict(warmup=0.0, pruned=0.6, cycles=1, final=0.4), preserve_growth=True,
                               grow_ramp=0.25),  # small first, then full: one function-preserving growth
    "grow-late-fresh-ramp": dict(fractions=dict(warmup=0.0, pruned=0.6, cycles=1, final=0.4), preserve_growth=True,
                                 grow_ramp=0.25, grow_init="fresh"),  # regrown: new random in, zero out
    "grow-late-lossless-no-rescale": dict(fractions=dict(warmup=0.0, pruned=0.6, cycles=1, final=0.4),
                                          preserve_growth=True, grow_ramp=0.25, rescale=False),  # step-0 shrink: init as is
    "grow-late-restore": dict(fractions=dict(warmup=0.0, pruned=0.6, cycles=1, final=0.4)),  # abrupt, x1/s undone
    "grow-late-noramp": dict(fractions=dict(warmup=0.0, pruned=0.6, cycles=1, final=0.4), preserve_growth=True),
    "grow-late-zero-mean": dict(fractions=dict(warmup=0.0, pruned=0.6, cycles=1, final=0.4), preserve_growth=True,
                                optimizer_state="mean"),  # no ramp; regrown units' Adam v from the kept ones
    "grow-late-zero-rewarm": dict(fractions=dict(warmup=0.0, pruned=0.6, cycles=1, final=0.4), preserve_growth=True,
                                  rewarm=0.1),  # no ramp; the dense rate re-warmed over a tenth of the pruned phase
    # control for the recurring-stage edge: dense training with grow-late-zero-rewarm's learning-rate dip at the
    # growth step and nothing removed (ratio 0), so whatever the dip alone does is not credited to AMGP
    "dense-rewarm-dip": dict(fractions=dict(warmup=0.0, pruned=0.6, cycles=1, final=0.4), preserve_growth=True,
                             rewarm=0.1, ratio=0.0),
    "grow-late-gradmax-rewarm": dict(fractions=dict(warmup=0.0, pruned=0.6, cycles=1, final=0.4), preserve_growth=True,
                                     grow_init="gradmax", rewarm=0.1),  # regrown units aimed by GradMax (amgp_fx.gradmax)
    "grow-late-split-rewarm": dict(fractions=dict(warmup=0.0, pruned=0.6, cycles=1, final=0.4), grow_init="split",
                                   rewarm=0.1),  # Net2WiderNet: regrown units are copies of kept ones (amgp_fx.net2wider)
    # the same FLOPs level spent narrower-for-less or wider-for-longer: a milder prune held for more of the run
    # before the one growth (0.6 width for 71% of the steps, 0.7 width for 90%); small dense is the limit of
    # this line (0.73 width all the way, no growth)
    "grow-later-r40": dict(fractions=dict(warmup=0.0, pruned=0.71, cycles=1, final=0.29), ratio=0.4,
                           preserve_growth=True, rewarm=0.1),
    "grow-latest-r30": dict(fractions=dict(warmup=0.0, pruned=0.9, cycles=1, final=0.1), ratio=0.3,
                            preserve_growth=True, rewarm=0.1),
    # the other direction on that line: a harsher prune for less of the run, so the regrown units train from an
    # earlier point of the decaying schedule (0.4 width for 53% of the steps, 0.3 width for 48.5%; FLOPs matched)
    "grow-earlier-r60": dict(fractions=dict(warmup=0.0, pruned=0.53, cycles=1, final=0.47), ratio=0.6,
                             preserve_growth=True, rewarm=0.1),
    "grow-earlier-r70": dict(fractions=dict(warmup=0.0, pruned=0.485, cycles=1, final=0.515), ratio=0.7,
                             preserve_growth=True, rewarm=0.1),
    "grow-late-2step": dict(fractions=dict(warmup=0.0, pruned=0.6, cycles=1, final=0.4), preserve_growth=True,
                            grow_ramp=0.25, rewarm=0.1),
    "grow-late-80": dict(fractions=dict(warmup=0.0, pruned=0.8, cycles=1, final=0.2), preserve_growth=True,
                         grow_ramp=0.25),  # a lower FLOPs level (about 0.48x)
    "small-dense-80": dict(method="small_dense", fractions=dict(warmup=0.0, pruned=0.8, cycles=1, final=0.2)),
    "prune-only-80": dict(method="prune_only", fractions=dict(warmup=0.0, pruned=0.8, cycles=1, final=0.2)),
    "grow-late-warm": dict(fractions=dict(warmup=0.1, pruned=0.6, cycles=1, final=0.3), preserve_growth=True,
                           grow_ramp=0.25, fade=0.25),  # full warm-up, one faded shrink, one preserving growth
    # issue 12: importance that sees outputs, and FLAP's bias compensation at a shrink
    "activation": dict(criterion="activation"),  # E[x^2] |W_out|^2 on the step's batch, not weights alone
    "fold-bias": dict(config=dict(fold_bias=True)),  # the removed units' mean output into the next biases
    "activation-fold-bias": dict(criterion="activation", config=dict(fold_bias=True)),  # variance-scored + fold
    "grow-late-warm-activation-fold": dict(fractions=dict(warmup=0.1, pruned=0.6, cycles=1, final=0.3),
                                           preserve_growth=True, grow_ramp=0.25, fade=0.25, criterion="activation",
                                           config=dict(fold_bias=True)),  # one shrink of trained units, data-aware
    "activation-fold-bias-lossless": dict(criterion="activation", fade=0.25, preserve_growth=True, grow_ramp=0.25,
                                          config=dict(fold_bias=True)),  # cycles with every mechanism on
    "lossless-fold-bias": dict(fade=0.25, preserve_growth=True, grow_ramp=0.25, config=dict(fold_bias=True)),
}
# what a plain run compares: fits one 10-minute call on the H200 with 3 seeds (~35 s per variant + data)
DEFAULT_VARIANTS = ("dense", "small-dense", "base", "fresh", "grow-late", "quarter", "lr-x2", "lr-x3")
ARG_FIELDS = ("recipe", "ratio", "criterion", "grow_init", "optimizer_state", "lr", "rescale", "pruned_lr_scale",
              "fade", "preserve_growth", "grow_ramp", "selection", "rewarm")
# --cpu-proxy: the DLRM benchmark shrunk to run on a 2-core CPU in ~25 s per run (same teacher,
# optimizers and learning rates; 26 tables of 2000 rows, MLPs a quarter to an eighth as wide)
PROXY_TABLES = (2000,) * 26
PROXY_SPEC = dict(model="dlrm", preset="industrial", overrides=dict(
    table_sizes=PROXY_TABLES, embedding_dim=32, bottom_mlp=(256, 128, 32), top_mlp=(512, 512, 256, 128)))


def proxy_spec(mlp_scale: float = 1.0) -> dict[str, Any]:
    """PROXY_SPEC with every hidden MLP width times ``mlp_scale`` (the bottom MLP's last layer stays the
    embedding dim the interaction needs): the GPU benchmark's MLPs are 8x the proxy's."""
    if mlp_scale == 1.0:
        return PROXY_SPEC
    overrides = dict(PROXY_SPEC["overrides"])
    *hidden, last = overrides["bottom_mlp"]
    overrides["bottom_mlp"] = (*(round(w * mlp_scale) for w in hidden), last)
    overrides["top_mlp"] = tuple(round(w * mlp_scale) for w in overrides["top_mlp"])
    return {**PROXY_SPEC, "overrides": overrides}


PROXY_ARGS = ["--device", "cpu", "--samples", "524288", "--batch-size", "2048", "--test-samples", "65536",
              "--eval-batch-size", "16384", "--workers", "1", "--threads", "2"]


def variant_args(base: argparse.Namespace, name: str, overrides: dict[str, Any]) -> argparse.Namespace:
    """bench_amgp's namespace for one variant; a ``fractions`` schedule or ``config`` fields become a
    recipe of its own (the base recipe's, with them)."""
    args = argparse.Namespace(**vars(base))
    for field in ARG_FIELDS:
        if field in overrides:
            setattr(args, field, overrides[field])
    if "fractions" in overrides or "config" in overrides:
        recipe = dict(RECIPES[args.recipe], ratio=args.ratio)
        if "fractions" in overrides:
            recipe = dict(fractions=dict(overrides["fractions"]), ratio=args.ratio)
        args.recipe = f"sweep-{name}"
        RECIPES[args.recipe] = {**recipe, **overrides.get("config", {})}
    return args


def parse_args(argv=None) -> tuple[argparse.Namespace, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dlrm", choices=sorted(bench_amgp.MODEL_SPECS))
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS),
                        help=f"default: {' '.join(DEFAULT_VARIANTS)}")
    parser.add_argument("--out", default="docs/results/amgp_sweep.json")
    parser.add_argument("--cpu-proxy", action="store_true",
                        help="DLRM only: the GPU benchmark shrunk for a CPU (see PROXY_SPEC), ~25 s per run")
    parser.add_argument("--proxy-mlp-scale", type=float, default=1.0,
                        help="with --cpu-proxy: hidden MLP widths times this (the GPU benchmark's are 8x)")
    parser.add_argument("--curve-dir", default=None,
                        help="write each run's metrics log here, per variant and seed (with --eval-every: AUC over training)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="run seeds first-seed .. first-seed + --seeds - 1 (more seeds for an earlier sweep's file)")
    own, rest = parser.parse_known_args(argv)
    if own.first_seed < 0:
        parser.error("--first-seed must be >= 0")
    if own.cpu_proxy and own.model != "dlrm":
        parser.error("--cpu-proxy shrinks the DLRM benchmark; use --model dlrm")
    if own.proxy_mlp_scale != 1.0 and not (own.cpu_proxy and own.proxy_mlp_scale > 0):
        parser.error("--proxy-mlp-scale needs --cpu-proxy and a positive scale")
    proxy = PROXY_ARGS if own.cpu_proxy else []
    # the variants are changes to amgp-half (the former default recipe), whatever bench_amgp's default
    # is now; a --recipe of the user's comes later and wins
    base = bench_amgp.parse_args(proxy + ["--recipe", "amgp-half"] + rest + ["--models", own.model, "--out", own.out])
    return own, base


def main(argv=None) -> list[dict]:
    own, base = parse_args(argv)
    start = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {message}", flush=True)

    spec = (bench_amgp.TINY_SPECS if base.tiny else bench_amgp.MODEL_SPECS)[own.model]
    steps = max(1, base.samples // base.batch_size) * base.passes
    if own.cpu_proxy:
        spec = proxy_spec(own.proxy_mlp_scale)
    data, device = bench_amgp.prepare_data(base, steps, say, PROXY_TABLES if own.cpu_proxy else None)
    recurring = bench_amgp.prepare_recurring(base, say, PROXY_TABLES if own.cpu_proxy else None)
    device_name = bench_amgp._device_name(device)
    command = "python tools/sweep_amgp.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    say(f"data ready on {device_name}; {steps} steps of {base.batch_size}; variants {own.variants}")
    records: list[dict] = []
    for name in own.variants:
        overrides = VARIANTS[name]
        args = variant_args(base, name, overrides)
        method = overrides.get("method", "amgp")
        plan = bench_amgp.make_plan(spec, args, steps)
        if not records:
            bench_amgp.warm_up(spec, plan, data, args, steps)
        runs = []
        for seed in range(own.first_seed, own.first_seed + base.seeds):
            curve = None
            if own.curve_dir:
                Path(own.curve_dir).mkdir(parents=True, exist_ok=True)
                curve = str(Path(own.curve_dir) / f"sweep_{own.model}_{name}{f'_s{seed}' if seed else ''}.jsonl")
            run = bench_amgp.run_one(spec, method, seed, plan, data, args, steps, curve, recurring)
            runs.append(run)
            say(f"{name:14s} seed {seed}: auc {run['auc']:.5f} logloss {run['logloss']:.5f} "
                f"train {run['wall_clock_s']:.2f}s flops {run['train_flops'] / 1e12:.3f}T")
        record = bench_amgp.aggregate(own.model, method, runs, plan, args, steps, device_name)
        record.update(variant=name, overrides=overrides, command=command, cpu_proxy=own.cpu_proxy,
                      proxy_mlp_scale=own.proxy_mlp_scale,
                      architecture={k: list(v) if isinstance(v, tuple) and len(v) < 10 else v
                                    for k, v in spec["overrides"].items() if k != "table_sizes"})
        records.append(record)
        atomic_write_json(Path(own.out), records)
    print_summary(records)
    say(f"wrote {own.out}")
    return records


def print_summary(records: list[dict]) -> None:
    """Each variant against the dense run of the same learning rate (paired by seed where both exist)."""
    dense = {r["lr"]: r for r in records if r["method"] == "dense"}
    for record in records:
        base = dense.get(record["lr"])
        line = f"{record['variant']:14s} lr {record['lr']:g}: auc {record['auc_mean']:.5f} +- {record['auc_std']:.5f}"
        if "recurring_auc_mean" in record:
            line += f" recurring auc {record['recurring_auc_mean']:.5f}"
            if base is not None and base is not record:
                line += f" ({record['recurring_auc_mean'] - base['recurring_auc_mean']:+.5f} vs dense)"
        if base is not None and base is not record:
            paired = [a["auc"] - b["auc"] for a, b in zip(record["per_seed"], base["per_seed"])]
            line += (f"  vs dense {record['auc_mean'] - base['auc_mean']:+.5f} (per seed "
                     f"{', '.join(f'{d:+.4f}' for d in paired)})"
                     f"  flops {record['train_flops'] / base['train_flops']:.2f}"
                     f"  wall {record['wall_clock_s'] / base['wall_clock_s']:.2f}")
        print(line, flush=True)


if __name__ == "__main__":
    main()

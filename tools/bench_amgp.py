"""Training-cost benchmark of AMGP (issue 4): dense vs AMGP vs prune-only vs small dense.

Every method trains the same synthetic Criteo-like rows (a wide teacher, so that capacity
matters), for the same number of samples, with the same optimizer, over several seeds, and is
scored on the same held-out rows. Baselines are matched to AMGP's training FLOPs before any run:
prune-only gets the dense warm-up length whose predicted FLOPs equal AMGP's, and the small dense
model the width scale whose per-step FLOPs equal AMGP's average step.

Embeddings train as production does: sparse gradients (``nn.Embedding(sparse=True)``) with a
sparse-aware optimizer, by default row-wise Adagrad (``amgp_fx.optim``, fbgemm's and torchrec's
default; SparseAdam made the embedding update longer than the MLPs, see
``tools/bench_step_time.py``). Wall-clock is the sum of the AMGP
hook's per-phase wall-clock (CUDA-synchronised at phase boundaries; surgery included, FLOPs
counting and the final evaluation excluded).

Modes:
    --tiny   CPU, small models, a few thousand samples, < 60 s: checks structure and accounting.
    default  GPU (one H200): industrial-width DLRM and a wide DCN-v2, millions of samples per run,
             starts no run that would end past --budget-s (results are written after
             every run, so a cut-short run still leaves a valid JSON file).

Output: a JSON list of records, one per (model, method), with model, method, auc_mean, auc_std,
logloss_mean, logloss_std, train_flops, wall_clock_s, samples, seeds, device, command, and details;
with --lr-grid each at its best rate. Every run of every rate is kept in ``<out>.grid.json``, and
``--resume`` reads it back and runs only what is missing, so a comparison larger than one 10-minute
GPU call is finished by repeating the same command with --resume.

Example:
    python tools/bench_amgp.py --tiny --out /tmp/amgp_tiny.json
    python tools/bench_amgp.py --out docs/results/amgp_train.json --plot-dir docs/results
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import functools
import gc
import hashlib
import json
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import amgp_fx  # noqa: E402
from amgp_fx import models  # noqa: E402
from amgp_fx.amgp import AmgpHook, dense_config, match_prune_only, predict_train_flops  # noqa: E402
from amgp_fx.amgp_report import add_paired, best_per_method, comparison_table, plot_auc_vs_flops, plot_run  # noqa: E402,E501
from amgp_fx.config import SyntheticConfig, TrainConfig  # noqa: E402
from amgp_fx.data import Batch, SyntheticCriteo  # noqa: E402
from amgp_fx.fileio import atomic_write_bytes, atomic_write_json  # noqa: E402
from amgp_fx.flops import count_training_flops, width_scale_for_flops  # noqa: E402
from amgp_fx.paired_stats import describe_interval  # noqa: E402
from amgp_fx.schedule import CRITERIA, AmgpConfig  # noqa: E402
from amgp_fx.train import train  # noqa: E402

METHODS = ("dense", "amgp", "prune_only", "small_dense")
GPU_TABLES = (200_000,) * 26

# name -> (reference model, preset, overrides, width-scaled argument names)
MODEL_SPECS: dict[str, dict[str, Any]] = {
    # issue 4's industrial shape: sparse 26 x 200k x 128 tables, MLPs that dominate the step
    "dlrm": dict(model="dlrm", preset="industrial", overrides=dict(table_sizes=GPU_TABLES)),
    # DCN-v2 with a wide deep tower (the cross network's width is the input's, which is frozen)
    "dcn_v2": dict(model="dcn_v2", preset="default",
                   overrides=dict(table_sizes=GPU_TABLES, deep_mlp=(2048, 1024, 512), dropout=0.0)),
}
TINY_SPECS: dict[str, dict[str, Any]] = {
    "dlrm": dict(model="dlrm", preset="small", overrides=dict(bottom_mlp=(64, 8), top_mlp=(128, 64))),
    "dcn_v2": dict(model="dcn_v2", preset="small", overrides=dict(deep_mlp=(128, 64), dropout=0.0)),
}


def _round8(value: float) -> int:
    return max(8, 8 * int(round(value / 8)))


def scaled_overrides(spec: dict[str, Any], scale: float) -> dict[str, Any]:
    """The spec's constructor arguments with every hidden MLP width times ``scale`` (multiple of 8).

    DLRM's last bottom width is the embedding dim (kept); DCN-v2's cross width is the input's.
    """
    base = {**models._module(spec["model"]).PRESETS[spec["preset"]], **spec["overrides"]}
    if spec["model"] == "dlrm":
        *hidden, last = base["bottom_mlp"]
        return {**spec["overrides"], "bottom_mlp": (*[_round8(w * scale) for w in hidden], last),
                "top_mlp": tuple(_round8(w * scale) for w in base["top_mlp"])}
    if spec["model"] == "dcn_v2":
        return {**spec["overrides"], "deep_mlp": tuple(_round8(w * scale) for w in base["deep_mlp"])}
    raise ValueError(f"no width scaling rule for model {spec['model']!r}")


def build(spec: dict[str, Any], overrides: dict[str, Any] | None = None) -> torch.nn.Module:
    """The reference model with sparse embedding gradients (set before tracing, which records it)."""
    model = models.build_model(spec["model"], spec["preset"], **(overrides or spec["overrides"]))
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            module.sparse = True
    return model


# -- data --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _generator(config_json: str) -> SyntheticCriteo:
    """One generator per config in each worker process: building and calibrating the teacher costs
    as much as ~30k rows, and a worker serves several chunks."""
    return SyntheticCriteo(SyntheticConfig.from_dict(json.loads(config_json)))


def _rows_worker(args: tuple) -> tuple:
    config_json, start, stop = args
    batch = _generator(config_json).rows(start, stop)
    return batch.dense.numpy(), batch.sparse.numpy(), batch.label.numpy()


@contextlib.contextmanager
def _unset_variables_set(**values: str):
    """``os.environ`` with those of ``values`` that are unset, set for the block (then removed)."""
    added = {name: value for name, value in values.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def make_rows(config: SyntheticConfig, start: int, count: int, workers: int) -> Batch:
    """Rows [start, start + count), generated in parallel processes (rows depend only on their index).

    Each worker's OpenBLAS starts a thread per core, and idle threads spin (~0.1 s) between the
    teacher's matrix products, so ``workers`` processes kept workers x cores threads busy: with 2
    workers of 16 threads on 2 cores (a 16-core host's default), 608fc95's generator spent 210 us of
    CPU a row, 60 with ``OPENBLAS_THREAD_TIMEOUT=4`` (idle threads sleep after 16 cycles) and 48 with
    one thread a worker. The timeout keeps the thread count, and so BLAS's rounding: rows and logits
    stay bit for bit (another thread count changes the logits' last bits, and so could flip a label).
    """
    if workers <= 1 or count <= 65_536:
        return SyntheticCriteo(config).rows(start, start + count)
    chunk = 131_072
    config_json = json.dumps(config.to_dict(), sort_keys=True)
    jobs = [(config_json, s, min(s + chunk, start + count)) for s in range(start, start + count, chunk)]
    context = multiprocessing.get_context("spawn")
    with _unset_variables_set(OPENBLAS_THREAD_TIMEOUT="4"), \
            concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:  # workers start here
        parts = list(pool.map(_rows_worker, jobs))
    return Batch(*(torch.from_numpy(np.concatenate([p[i] for p in parts])) for i in range(3)))


def cached_rows(config: SyntheticConfig, start: int, count: int, workers: int, cache_dir: str | None) -> Batch:
    """``make_rows``, kept in ``cache_dir`` (safetensors, no pickle) under a hash of what decides the rows,
    so that calls made back to back on one machine (``--resume``) generate them once."""
    if not cache_dir:
        return make_rows(config, start, count, workers)
    from safetensors.torch import load_file, save

    key = json.dumps({"config": config.to_dict(), "start": start, "count": count}, sort_keys=True)
    path = Path(cache_dir) / f"rows-{hashlib.sha256(key.encode()).hexdigest()[:20]}.safetensors"
    if path.is_file():
        tensors = load_file(str(path))
        return Batch(tensors["dense"], tensors["sparse"], tensors["label"])
    rows = make_rows(config, start, count, workers)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({"dense": rows.dense.contiguous(), "sparse": rows.sparse.contiguous(),
                                   "label": rows.label.contiguous()}))  # killed mid-write: no half file
    return rows


# -- one run ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Plan:
    """Per model: the AMGP config and the FLOPs-matched baselines, decided before any run."""

    amgp: AmgpConfig
    prune_only: AmgpConfig
    dense: AmgpConfig
    small_scale: float
    small_overrides: dict[str, Any]
    predicted: dict[str, int]


def make_plan(spec: dict[str, Any], args, steps: int) -> Plan:
    """Predict FLOPs on a meta-device copy of the model and match the baselines to AMGP."""
    with torch.device("meta"):
        model = build(spec)
    graph = amgp_fx.analyze(model, model.example_inputs(4))
    amgp_config = AmgpConfig.from_recipe_name(args.recipe, steps, ratio=args.ratio, criterion=args.criterion,
                                              grow_init=args.grow_init, optimizer_state=args.optimizer_state,
                                              rescale=args.rescale, pruned_lr_scale=args.pruned_lr_scale,
                                              **switch_options(args, steps))
    dense = dense_config(steps)
    batch = args.batch_size
    predicted = {"dense": predict_train_flops(graph, dense, batch_size=batch),
                 "amgp": predict_train_flops(graph, amgp_config, batch_size=batch)}
    prune_only = match_prune_only(graph, amgp_config, batch_size=batch, target_flops=predicted["amgp"])
    predicted["prune_only"] = predict_train_flops(graph, prune_only, batch_size=batch)

    def build_scaled(scale: float) -> torch.nn.Module:
        return build(spec, scaled_overrides(spec, scale))

    scale = width_scale_for_flops(build_scaled, predicted["amgp"] / steps, lambda m: m.example_inputs(4),
                                  batch_size=batch)
    with torch.device("meta"):
        small = build_scaled(scale)
    predicted["small_dense"] = steps * count_training_flops(small, small.example_inputs(4), batch_size=batch).total
    return Plan(amgp_config, prune_only, dense, scale, scaled_overrides(spec, scale), predicted)


def switch_options(args, steps: int) -> dict[str, Any]:
    """AmgpConfig's switch options from the command line; fades and ramps are given as shares of a
    pruned phase of the recipe (so that they scale with the horizon)."""
    from amgp_fx.schedule import RECIPES

    fractions = RECIPES[args.recipe]["fractions"]
    pruned_phase = max(1, int(round(fractions["pruned"] * steps / fractions["cycles"])))
    options = dict(fade_steps=int(round(args.fade * pruned_phase)), preserve_growth=bool(args.preserve_growth),
                   grow_ramp_steps=int(round(args.grow_ramp * pruned_phase)) if args.preserve_growth else 0,
                   selection=args.selection, rewarm_steps=int(round(args.rewarm * pruned_phase)),
                   fold_bias=bool(getattr(args, "fold_bias", False)))
    unset = dict(fade_steps=0, preserve_growth=False, grow_ramp_steps=0, selection="score", rewarm_steps=0,
                 fold_bias=False)
    return {k: v for k, v in options.items() if v != unset[k]}  # what is not asked for stays as the recipe says


def train_config(args, steps: int, device: torch.device, seed: int, metrics_path: str | None) -> TrainConfig:
    """The run's TrainConfig: the same for every method but its learning rate."""
    return TrainConfig(optimizer=args.optimizer, lr=args.lr, sparse_optimizer=args.sparse_optimizer,
                       sparse_lr=args.sparse_lr, batch_size=args.batch_size, steps=steps,
                       eval_batch_size=args.eval_batch_size, log_every=args.eval_every, eval_every=args.eval_every,
                       device=str(device), seed=seed, data_on_device=True, metrics_path=metrics_path,
                       lr_schedule=args.lr_schedule, lr_warmup_steps=int(round(args.lr_warmup * steps)),
                       lr_final_ratio=args.lr_final_ratio)


def run_one(spec: dict[str, Any], method: str, seed: int, plan: Plan, data: tuple[Batch, Batch], args,
            steps: int, metrics_path: str | None, recurring: tuple[Batch, Batch] | None = None) -> dict[str, Any]:
    device = torch.device(args.device)
    torch.manual_seed(seed)
    with device:
        model = build(spec, plan.small_overrides if method == "small_dense" else None)
    if getattr(args, "init_jitter", 0.0):
        jitter_(model, args.init_jitter, args.jitter_seed)
    graph = amgp_fx.analyze(model, model.example_inputs(4))
    config = {"dense": plan.dense, "small_dense": plan.dense, "amgp": plan.amgp, "prune_only": plan.prune_only}[method]
    probe = data[1][: args.probe_rows] if args.probe_rows else None  # held-out rows: switch jumps
    hook = AmgpHook(graph, config, label=method, probe=probe)
    forward = hook.forward
    if args.compile:
        forward = _compiled_forward(graph.module)

    result = train(model, data[0], data[1], train_config(args, steps, device, seed, metrics_path), hooks=[hook],
                   forward=forward, progress=False)
    summary = hook.summary()
    record = {"seed": seed, "auc": result.metrics["auc"], "logloss": result.metrics["logloss"],
              "train_flops": hook.total_flops, "wall_clock_s": summary["wall_clock_s"],
              "train_call_s": result.wall_clock_s, "width_final": summary["width_final"],
              "parameters": sum(p.numel() for p in model.parameters()),
              "phases": [{k: p[k] for k in ("phase", "cycle", "start", "end", "width", "flops_per_step",
                                            "wall_clock_s", "peak_memory_bytes")} for p in summary["phases"]],
              "switches": [{k: s.get(k) for k in ("step", "action", "loss_before", "loss_after", "overlap", "faded")}
                           for s in summary["surgeries"]]}
    if recurring is not None:
        record.update(recurring_stage(model, graph, recurring, args, device, seed))
    del model, graph, hook, result
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return record


def jitter_(model: torch.nn.Module, eps: float, seed: int) -> None:
    """Multiply each parameter by ``1 + eps * N(0, 1)`` from its own generator (seeded by ``seed``), so
    that the same seed's run differs only by a perturbation of relative size ``eps``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            parameter.mul_((1 + eps * noise).to(parameter.dtype).to(parameter.device))


def recurring_stage(model: torch.nn.Module, graph, data: tuple[Batch, Batch], args, device: torch.device,
                    seed: int) -> dict[str, Any]:
    """The recurring-training stage: the model as offline training left it (full-size for AMGP and
    dense, compact for prune-only, small for small dense) keeps training for ``--recurring-steps`` on
    rows of the drifted teacher, at the same rate and schedule, and is scored on that distribution."""
    steps = args.recurring_steps
    hook = AmgpHook(graph, dense_config(steps), label="recurring")  # runs the graph as it is; counts FLOPs
    result = train(model, data[0], data[1], train_config(args, steps, device, seed + 1000, None), hooks=[hook],
                   forward=hook.forward, progress=False)
    return {"recurring_auc": result.metrics["auc"], "recurring_logloss": result.metrics["logloss"],
            "recurring_flops": hook.total_flops, "recurring_steps": steps}


def prepare_recurring(args, say, table_sizes: tuple[int, ...] | None = None) -> tuple[Batch, Batch] | None:
    """Rows of the drifted teacher (``--drift``, ``--new-id-share``) for the recurring stage, or None."""
    if not args.recurring_steps:
        return None
    shifted = teacher_config(args, table_sizes).drifted(args.drift, args.new_id_share, seed=1)
    say(f"generating {args.recurring_steps * args.batch_size} drifted rows (drift {args.drift}, new ids "
        f"{args.new_id_share}) for the recurring stage")
    device = torch.device(args.device)
    rows = cached_rows(shifted, 1 << 41, args.recurring_steps * args.batch_size, args.workers, args.rows_cache)
    test = cached_rows(shifted, 1 << 42, args.test_samples, args.workers, args.rows_cache)
    return rows.to(device), test.to(device)


def _compiled_forward(module: torch.nn.Module):
    """``train``'s forward through ``torch.compile(module)``, in the eager model's train/eval mode."""
    compiled = torch.compile(module, dynamic=False)

    def forward(model, batch):
        if module.training != model.training:
            module.train(model.training)
        return compiled(batch.dense, batch.sparse)
    return forward


def aggregate_config(plan: Plan, method: str) -> AmgpConfig:
    """The schedule a method's runs follow (dense and small dense: the dense one)."""
    return {"dense": plan.dense, "small_dense": plan.dense, "amgp": plan.amgp, "prune_only": plan.prune_only}[method]


def aggregate(name: str, method: str, runs: list[dict], plan: Plan, args, steps: int, device_name: str) -> dict:
    aucs, loglosses = [r["auc"] for r in runs], [r["logloss"] for r in runs]
    walls = [r["wall_clock_s"] for r in runs]
    config = aggregate_config(plan, method)
    return {
        "model": name, "method": method,
        "auc_mean": statistics.fmean(aucs), "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
        "logloss_mean": statistics.fmean(loglosses),
        "logloss_std": statistics.stdev(loglosses) if len(loglosses) > 1 else 0.0,
        "train_flops": int(statistics.fmean(r["train_flops"] for r in runs)),
        "predicted_train_flops": plan.predicted[method],
        "wall_clock_s": statistics.fmean(walls), "wall_clock_std": statistics.stdev(walls) if len(walls) > 1 else 0.0,
        "samples": steps * args.batch_size, "steps": steps, "batch_size": args.batch_size, "passes": args.passes,
        "seeds": [r["seed"] for r in runs], "device": _devices(runs, device_name), "command": _command(),
        "optimizer": args.optimizer, "lr": args.lr, "sparse_optimizer": args.sparse_optimizer,
        "sparse_lr": args.sparse_lr, "compile": bool(args.compile), "tf32": bool(args.tf32),
        "deterministic": bool(getattr(args, "deterministic", False)),
        "init_jitter": getattr(args, "init_jitter", 0.0), "jitter_seed": getattr(args, "jitter_seed", 0),
        "eval_every": args.eval_every, "teacher": args.teacher, "test_samples": args.test_samples,
        "lr_schedule": args.lr_schedule, "lr_warmup": args.lr_warmup, "lr_final_ratio": args.lr_final_ratio,
        "amgp_config": config.to_dict(), "width_scale": plan.small_scale if method == "small_dense" else None,
        "model_overrides": {k: list(v) if isinstance(v, tuple) and len(v) < 10 else v
                            for k, v in (plan.small_overrides if method == "small_dense" else {}).items()
                            if k != "table_sizes"},
        "parameters": runs[0]["parameters"], "per_seed": runs,
        **({"recurring_auc_mean": statistics.fmean(r["recurring_auc"] for r in runs),
            "recurring_auc_std": statistics.stdev([r["recurring_auc"] for r in runs]) if len(runs) > 1 else 0.0,
            "recurring_steps": runs[0]["recurring_steps"], "drift": args.drift, "new_id_share": args.new_id_share}
           if "recurring_auc" in runs[0] else {}),
    }


def _resumed(run: dict, plan: Plan, method: str, path: Path) -> dict:
    """A finished run, once its schedule is checked against this call's: a file of another recipe's
    AMGP runs (the recipe is not among the settings of the file) must not be mixed in."""
    recorded = run.pop("_amgp_config", None)
    wanted = aggregate_config(plan, method).to_dict()
    if recorded is not None and recorded != wanted:
        raise SystemExit(f"bench_amgp: error: {path} holds {method} runs with another schedule or recipe than this "
                         "call's. Use another --out, or drop --resume to start over.")
    return run


def grid_path(out: Path) -> Path:
    """Where every (model, method, lr) record with all its runs is kept, next to ``out``."""
    return out.with_name(out.stem + ".grid.json")


SETTINGS_THAT_MUST_MATCH = ("steps", "batch_size", "samples", "teacher", "test_samples", "optimizer", "sparse_optimizer",
                            "sparse_lr", "lr_schedule", "lr_warmup", "lr_final_ratio", "tf32", "compile")


def load_finished_runs(path: Path, args, steps: int) -> tuple[list[dict], dict[tuple[str, str, float], list[dict]]]:
    """The records of an earlier call of the same comparison, and their runs by (model, method, lr);
    refuses a file made with other settings, since its runs would not be comparable with the new ones."""
    if not path.is_file():
        return [], {}
    stored = json.loads(path.read_text())
    finished: dict[tuple[str, str, float], list[dict]] = {}
    wanted = {k: getattr(args, k, None) for k in SETTINGS_THAT_MUST_MATCH}  # as aggregate() records them:
    wanted.update(steps=steps, samples=steps * args.batch_size, tf32=bool(args.tf32), compile=bool(args.compile))
    for record in stored:
        differing = [k for k in SETTINGS_THAT_MUST_MATCH if record.get(k) != wanted[k]]
        if record.get("recurring_steps", 0) != args.recurring_steps:
            differing.append("recurring_steps")
        for key, absent in (("init_jitter", 0), ("jitter_seed", 0), ("deterministic", False)):
            if record.get(key, absent) != getattr(args, key, absent):  # absent from files made before the flag
                differing.append(key)
        if differing:
            raise SystemExit(f"bench_amgp: error: {path} was made with other settings ({', '.join(differing)}). "
                             f"Use another --out, or drop --resume to start over.")
        finished[(record["model"], record["method"], record["lr"])] = [
            {**run, "device": run.get("device", record.get("device")), "_amgp_config": record.get("amgp_config")}
            for run in record["per_seed"]]
    return stored, finished


def merge_finished(finished: dict[tuple[str, str, float], list[dict]], more: dict[tuple[str, str, float], list[dict]],
                   path: Path) -> dict[tuple[str, str, float], list[dict]]:
    """The union of two calls' finished runs, by seed: how the parts of one comparison that ran in
    parallel processes (one per method, say) become one grid. A seed both hold must have given the
    same result (deterministic runs do); otherwise one of them is not a re-run of the other."""
    merged = {key: list(runs) for key, runs in finished.items()}
    for key, runs in more.items():
        have = {run["seed"]: run for run in merged.setdefault(key, [])}
        for run in runs:
            if run["seed"] not in have:
                merged[key].append(run)
                have[run["seed"]] = run
            elif (have[run["seed"]]["auc"], have[run["seed"]].get("recurring_auc")) != (run["auc"],
                                                                                      run.get("recurring_auc")):
                model, method, lr = key
                raise SystemExit(f"bench_amgp: error: {path} holds {model}/{method}/lr {lr:g}/seed {run['seed']} with "
                                 f"another result than the runs already read (auc {run['auc']} vs "
                                 f"{have[run['seed']]['auc']}). Merge only parts of one deterministic comparison.")
    return merged


def _aggregate_all(name: str, runs: dict[tuple[str, float], list[dict]], plan: Plan, args, steps: int,
                   device_name: str) -> list[dict]:
    """One record per (method, rate) of ``name`` that has runs, its runs in seed order."""
    return [aggregate(name, method, sorted(done, key=lambda r: r["seed"]), plan,
                      argparse.Namespace(**{**vars(args), "lr": lr}), steps, device_name)
            for (method, lr), done in runs.items() if done]


def _command() -> str:
    return "python tools/bench_amgp.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _devices(runs: list[dict], default: str) -> str:
    """The device of a (method, rate)'s runs: resumed runs keep the one they ran on."""
    return "; ".join(sorted({r.get("device") or default for r in runs}))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__})"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run (< 60 s): small models, few samples")
    parser.add_argument("--models", nargs="+", default=["dlrm", "dcn_v2"], choices=sorted(MODEL_SPECS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1)")
    parser.add_argument("--samples", type=int, default=None, help="training rows per run (default 8M, tiny 12k)")
    parser.add_argument("--passes", type=int, default=1,
                        help="passes over the training rows: a horizon N times longer on the same rows (default 1)")
    parser.add_argument("--test-samples", type=int, default=None, help="held-out rows (default 500k, tiny 4k)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 16384, tiny 256")
    parser.add_argument("--eval-batch-size", type=int, default=None)
    parser.add_argument("--optimizer", default="adam", choices=["sgd", "adam", "adamw", "adagrad"])
    parser.add_argument("--lr-grid", type=float, nargs="+", default=None,
                        help="run every method at each of these dense learning rates and report each at its best "
                             "(paired per-seed differences to dense at dense's best)")
    parser.add_argument("--lr", type=float, default=None,
                        help="dense Adam lr, default 1e-4 (tiny 1e-2): at 1e-3 the 0.74-width model ties dense "
                             "(tools/probe_capacity.py)")
    parser.add_argument("--sparse-optimizer", default="rowwise_adagrad",
                        choices=["rowwise_adagrad", "sparse_adam", "adagrad", "sgd"],
                        help="optimizer of the sparse embedding tables (default: %(default)s)")
    parser.add_argument("--sparse-lr", type=float, default=None, help="embedding learning rate (default 0.02)")
    parser.add_argument("--recipe", default=amgp_fx.DEFAULT_RECIPE,
                        help=f"AMGP recipe (amgp_fx.schedule.RECIPES; default {amgp_fx.DEFAULT_RECIPE}, the CLI's)")
    parser.add_argument("--ratio", type=float, default=0.5, help="share of hidden units removed when pruned")
    parser.add_argument("--criterion", default="l2", choices=list(CRITERIA),
                        help="importance at each shrink (activation: measured on the step's batch)")
    parser.add_argument("--fold-bias", action="store_true",
                        help="fold the removed units' mean output into the consumers' biases (AmgpConfig.fold_bias)")
    parser.add_argument("--grow-init", default="restore", choices=["restore", "fresh", "split", "gradmax"])
    parser.add_argument("--optimizer-state", default="restore", choices=["restore", "reset", "mean"])
    parser.add_argument("--no-rescale", dest="rescale", action="store_false",
                        help="do not compensate the kept units' output scale at a shrink (amgp_fx.rescale)")
    parser.add_argument("--pruned-lr-scale", type=float, default=1.0,
                        help="dense learning-rate multiplier while pruned (AmgpConfig.pruned_lr_scale)")
    parser.add_argument("--fade", type=float, default=0.0,
                        help="fade the units out before each shrink over this share of a pruned phase's length")
    parser.add_argument("--preserve-growth", action="store_true",
                        help="function-preserving growth (regrown units enter with zero outgoing weights)")
    parser.add_argument("--grow-ramp", type=float, default=0.0,
                        help="with --preserve-growth: ramp the regrown units back in over this share of a pruned phase")
    parser.add_argument("--selection", default="score", choices=["score", "sticky", "rotate", "balanced"])
    parser.add_argument("--rewarm", type=float, default=0.0,
                        help="re-warm the dense rate after each growth over this share of a pruned phase")
    parser.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine", "linear"])
    parser.add_argument("--lr-warmup", type=float, default=0.0, help="share of the run for lr warm-up")
    parser.add_argument("--lr-final-ratio", type=float, default=0.0, help="decayed rate at the end / base rate")
    parser.add_argument("--recurring-steps", type=int, default=0,
                        help="after offline training, train every final model this many steps on a drifted teacher "
                             "and score it there (the recurring-training stage; 0: off)")
    parser.add_argument("--drift", type=float, default=0.3, help="teacher drift of the recurring stage, in [0, 1]")
    parser.add_argument("--new-id-share", type=float, default=0.1, help="share of lookups of new ids there")
    parser.add_argument("--probe-rows", type=int, default=8192,
                        help="held-out rows on which every switch's loss jump is measured (0: none)")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="evaluate every N steps for the AUC curve (wall-clock then includes evaluation)")
    parser.add_argument("--teacher", default="wide_teacher",
                        help="SyntheticConfig preset of the teacher (default %(default)s: width pays off there)")
    parser.add_argument("--device", default=None, help="default cuda if available (tiny: cpu)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the graph module (each width change recompiles; off by default)")
    parser.add_argument("--no-tf32", dest="tf32", action="store_false", help="disable TF32 matmuls on the GPU")
    parser.add_argument("--init-jitter", type=float, default=0.0, metavar="EPS",
                        help="multiply every initial parameter by (1 + EPS * N(0, 1)) drawn from --jitter-seed: "
                             "a butterfly test of how much a method amplifies tiny numeric differences")
    parser.add_argument("--jitter-seed", type=int, default=0, help="generator seed of --init-jitter's noise")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic CUDA kernels (torch.use_deterministic_algorithms, warn only): a run then "
                             "reproduces itself on one GPU; the warnings name the ops that had none")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (tiny default 1)")
    parser.add_argument("--workers", type=int, default=None, help="data generation processes (default: cores)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no run that would end past this many seconds (default 560: one 10-minute GPU call)")
    parser.add_argument("--out", default="docs/results/amgp_train.json")
    parser.add_argument("--rows-cache", default=None, metavar="DIR",
                        help="keep the generated rows here (safetensors) and reuse them: GPU calls made back to back "
                             "with --resume then generate them once (e.g. /tmp/amgp-rows)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in <out>.grid.json (same settings) and run only the missing ones")
    parser.add_argument("--plot-dir", default=None, help="write one AMGP-vs-dense PNG per model here")
    parser.add_argument("--merge-from", nargs="+", default=None, metavar="GRID",
                        help="also keep the finished runs of these <out>.grid.json files (same settings; runs of "
                             "--models only): parts of one comparison run in parallel, one per method, become one "
                             "grid; with --budget-s 0 nothing new runs")
    args = parser.parse_args(argv)
    tiny = args.tiny
    args.samples = args.samples or (12_288 if tiny else 8_388_608)
    args.test_samples = args.test_samples or (4_096 if tiny else 524_288)
    args.batch_size = args.batch_size or (256 if tiny else 16_384)
    args.eval_batch_size = args.eval_batch_size or (4_096 if tiny else 65_536)
    args.lr = args.lr or (1e-2 if tiny else 1e-4)
    args.sparse_lr = args.sparse_lr or (0.05 if tiny else 0.02)
    args.device = args.device or ("cpu" if tiny or not torch.cuda.is_available() else "cuda")
    args.workers = args.workers or (1 if tiny else max(1, min(32, os.cpu_count() or 1)))
    if args.threads or tiny:
        torch.set_num_threads(args.threads or 1)  # tiny ops: threads only contend
    if args.budget_s is None and not tiny:
        args.budget_s = 560.0
    return args


def teacher_config(args, table_sizes: tuple[int, ...] | None = None) -> SyntheticConfig:
    """The ``args.teacher`` preset on ``table_sizes`` (default: the GPU tables, or the tiny run's four)."""
    if table_sizes is not None:
        teacher = dict(table_sizes=table_sizes)
    else:
        teacher = dict(num_dense=4, table_sizes=(20, 50, 100, 30)) if args.tiny else dict(table_sizes=GPU_TABLES)
    return SyntheticConfig.from_preset(args.teacher, **teacher)


def prepare_data(args, steps: int, say,
                 table_sizes: tuple[int, ...] | None = None) -> tuple[tuple[Batch, Batch], torch.device]:
    """The (train, test) rows every run of this process shares, on ``args.device`` (TF32 set there):
    ``steps * batch_size`` training rows and ``test_samples`` held-out ones from the ``args.teacher``
    preset, on ``table_sizes`` (default: the GPU tables, or the tiny run's four small ones)."""
    data_config = teacher_config(args, table_sizes)
    rows = steps * args.batch_size // max(1, getattr(args, "passes", 1))  # several passes: fewer distinct rows
    say(f"generating {rows} + {args.test_samples} rows ({args.teacher} teacher, "
        f"{args.workers} workers)" + (f", or reading them from {args.rows_cache}" if args.rows_cache else ""))
    train_rows = cached_rows(data_config, 0, rows, args.workers, args.rows_cache)
    test_rows = cached_rows(data_config, 1 << 40, args.test_samples, args.workers, args.rows_cache)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    if getattr(args, "deterministic", False):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS makes its first handle
        torch.use_deterministic_algorithms(True, warn_only=True)
    return (train_rows.to(device), test_rows.to(device)), device


def warm_up(spec: dict[str, Any], plan: Plan, data: tuple[Batch, Batch], args, steps: int) -> None:
    """An untimed short dense run on a GPU: CUDA context, cuBLAS handles and allocator pools exist
    before the first timed run (no-op on the CPU)."""
    if torch.device(args.device).type == "cuda":
        warm = max(2, min(20, steps // 10))
        run_one(spec, "dense", 0, dataclasses.replace(plan, dense=dense_config(warm)), data, args, warm, None)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    start = time.perf_counter()
    specs = TINY_SPECS if args.tiny else MODEL_SPECS
    steps = max(1, args.samples // args.batch_size) * args.passes

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {message}", flush=True)

    if args.plot_dir:
        Path(args.plot_dir).mkdir(parents=True, exist_ok=True)
    device_name = _device_name(torch.device(args.device))

    @functools.cache
    def rows() -> tuple[tuple[Batch, Batch], tuple[Batch, Batch] | None]:
        """The rows, generated when the first run that is not resumed needs them."""
        data, _ = prepare_data(args, steps, say)
        recurring = prepare_recurring(args, say)
        say(f"data ready on {device_name}; {steps} steps of {args.batch_size} per run")
        return data, recurring

    records: list[dict] = []  # each (model, method) at its best learning rate
    out = Path(args.out)
    stored, finished = load_finished_runs(grid_path(out), args, steps) if args.resume else ([], {})
    for part in args.merge_from or []:
        finished = merge_finished(finished, load_finished_runs(Path(part), args, steps)[1], Path(part))
    # every (model, method, lr); other models' records of a resumed file are kept as they are
    grid_records: list[dict] = [r for r in stored if r["model"] not in args.models]
    if finished:
        sources = ([str(grid_path(out))] if args.resume else []) + (
            [f"{len(args.merge_from)} merged grids"] if args.merge_from else [])
        read = " and ".join(sources)
        say(f"resuming: {sum(len(v) for v in finished.values())} runs already in {read}")
    incomplete = False
    longest = 0.0  # the longest run so far, to decide whether another fits the budget
    for name in args.models:
        spec = specs[name]
        plan = make_plan(spec, args, steps)
        ratios = ", ".join(f"{m} {plan.predicted[m] / plan.predicted['dense']:.3f}" for m in METHODS)
        say(f"{name}: predicted train FLOPs vs dense: {ratios}; small-dense width scale {plan.small_scale:.3f}; "
            f"prune-only warm-up {plan.prune_only.schedule.warmup_steps} steps")
        warmed = False
        grid = args.lr_grid or [args.lr]
        runs: dict[tuple[str, float], list[dict]] = {(m, lr): [] for m in args.methods for lr in grid}
        for (model, method, lr), done in finished.items():  # every finished run stays in the file, including
            if model == name:  # those of methods, rates or seeds this call does not ask for or does not reach
                runs[(method, lr)] = [_resumed(dict(r), plan, method, grid_path(out)) if method in args.methods
                                      else {k: v for k, v in r.items() if k != "_amgp_config"} for r in done]
        for seed in range(args.seeds):
            for method in args.methods:
                for lr in grid:
                    if any(r["seed"] == seed for r in runs[(method, lr)]):
                        continue
                    elapsed = time.perf_counter() - start
                    if args.budget_s is not None and elapsed + 1.2 * longest > args.budget_s:
                        incomplete = True
                        say(f"budget: skipping {name}/{method}/lr {lr:g}/seed {seed} and the rest")
                        break
                    data, recurring = rows()
                    if not warmed:
                        warm_up(spec, plan, data, args, steps)
                        warmed = True
                    began = time.perf_counter()
                    metrics = None
                    if args.plot_dir and seed == 0 and method in ("dense", "amgp") and lr == grid[0]:
                        metrics = str(Path(args.plot_dir) / f"amgp_train_{name}_{method}.jsonl")
                    run_args = argparse.Namespace(**{**vars(args), "lr": lr})
                    run = {**run_one(spec, method, seed, plan, data, run_args, steps, metrics, recurring),
                           "device": device_name}
                    longest = max(longest, time.perf_counter() - began)
                    runs[(method, lr)].append(run)
                    say(f"{name} {method:11s} lr {lr:g} seed {seed}: auc {run['auc']:.5f} logloss "
                        f"{run['logloss']:.5f} train {run['wall_clock_s']:.2f}s flops {run['train_flops'] / 1e12:.3f}T "
                        f"(run {time.perf_counter() - began:.1f}s)")
                    grid_records = [r for r in grid_records if r["model"] != name] + _aggregate_all(
                        name, runs, plan, args, steps, device_name)
                    records = add_paired(best_per_method(grid_records))
                    atomic_write_json(grid_path(out), grid_records)
                    atomic_write_json(out, records)
                if incomplete:
                    break
            if incomplete:
                break
        grid_records = [r for r in grid_records if r["model"] != name] + _aggregate_all(
            name, runs, plan, args, steps, device_name)  # also when every run was resumed
        records = add_paired(best_per_method(grid_records))
        if grid_records:
            atomic_write_json(grid_path(out), grid_records)
        if args.plot_dir and any(rs for (m, _), rs in runs.items() if m == "amgp"):
            try:
                _plot(args.plot_dir, name)
            except ImportError as error:  # matplotlib missing
                say(f"no plot: {error}")
        # a budget cut still goes on to the later models: their finished runs go back into the file
    for record in records:
        record["incomplete"] = incomplete
    atomic_write_json(out, records)
    if args.plot_dir and records:
        for name in args.models:
            try:
                plot_auc_vs_flops([r for r in records if r["model"] == name],
                                  Path(args.plot_dir) / f"amgp_auc_vs_flops_{name}.png", title=f"{name}: AUC vs FLOPs")
            except ImportError as error:
                say(f"no plot: {error}")
    for record in records:
        paired = record.get("paired_vs_dense")
        if paired and paired["mean"] is not None:
            say(f"{record['model']} {record['method']:11s} best lr {record['lr']:g}: paired AUC vs dense (lr "
                f"{paired['dense_lr']:g}) {paired['mean']:+.5f} +- {paired['std']:.5f}, wins {paired['wins']}/"
                f"{paired['seeds']} ({describe_interval(paired)}); per seed {', '.join(f'{d:+.4f}' for d in paired['per_seed'])}")
    for record in (r for r in records if "paired_vs" in r):
        for other, by_key in record["paired_vs"].items():
            for key, paired in by_key.items():
                if paired["mean"] is not None:
                    say(f"{record['model']} amgp vs {other:11s} {key:13s} {paired['mean']:+.5f}, wins {paired['wins']}/"
                        f"{paired['seeds']} ({describe_interval(paired)})")
    try:
        print(comparison_table(records), flush=True)
    except ImportError as error:  # tabulate missing: the JSON file has everything
        print(f"(no table: {error})", flush=True)
    for name in args.models:
        by_method = {r["method"]: r for r in records if r["model"] == name}
        if "dense" in by_method and "small_dense" in by_method:
            gap = by_method["dense"]["auc_mean"] - by_method["small_dense"]["auc_mean"]
            note = "" if gap >= 0.003 else "  (below 0.003: the task does not reward capacity enough)"
            print(f"{name}: dense - small dense AUC = {gap:+.4f}{note}", flush=True)
    say(f"wrote {out}")
    return records


def _plot(plot_dir: str, name: str) -> None:
    """AMGP's and dense's curves from the metrics logs of their seed-0 runs at the grid's first rate;
    nothing when those runs were resumed (their logs stayed with the call that ran them)."""
    paths = [Path(plot_dir) / f"amgp_train_{name}_{m}.jsonl" for m in ("dense", "amgp")]
    if not any(path.exists() for path in paths):
        print(f"no curve plot for {name}: the runs that log it (seed 0 at the first rate) were resumed", flush=True)
        return
    records = []
    for path, label in zip(paths, ("dense", "amgp")):
        if path.exists():
            for line in path.read_text().splitlines():
                record = json.loads(line)
                records.append({**record, "label": record.get("label", label)})
    plot_run(records, Path(plot_dir) / f"amgp_train_{name}.png", title=f"{name}: AMGP vs dense")


if __name__ == "__main__":
    main()

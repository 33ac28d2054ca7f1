"""``amgp-compress train``: train a model (dense or AMGP) and save it; ``--nproc N`` under torchrun.

Also the training step ``run`` shares (:func:`train_model`).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from amgp_fx.cli.common import (check_source, load, metrics_text, model_metadata, note, raise_if_diverged,
                                runtime_devices, save_model)
from amgp_fx.cli.data import data_shape, load_data
from amgp_fx.cli.plots import plot_hint, save_curve
from amgp_fx.cli.output import OutputDir, Progress, keep_resumable, write_json, written_count
from amgp_fx.errors import CliError, TrainingFailure, UsageError

__all__ = ["bind_model_inputs", "command", "positional_view", "saved_map", "static_rows", "train_model",
           "train_summary", "trainable"]


class _SparseTablesView(torch.nn.Module):
    """A graph module plus ``nn.Embedding(sparse=True)`` shells around the parameters its sparse
    ``aten.embedding`` nodes read, so that ``train.build_optimizers`` (which looks for embedding
    modules) gives them the sparse optimizer, as it does for the eager model. Parameters are shared."""

    def __init__(self, graph_module: torch.fx.GraphModule, tables: list[torch.nn.Parameter]) -> None:
        super().__init__()
        self.graph = graph_module
        self.tables = torch.nn.ModuleList()
        for weight in tables:
            shell = torch.nn.Embedding(1, 1, sparse=True)
            shell.weight = weight
            self.tables.append(shell)

    def forward(self, *inputs):
        return self.graph(*inputs)


def trainable(module: torch.nn.Module) -> torch.nn.Module:
    """``module``, or for a GraphModule with sparse embedding lookups a :class:`_SparseTablesView` of it."""
    if not isinstance(module, torch.fx.GraphModule):
        return module
    tables = {}
    for node in module.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.aten.embedding.default and \
                len(node.args) > 4 and node.args[4] and node.args[0].op == "get_attr":
            weight = module.get_parameter(node.args[0].target)
            tables[id(weight)] = weight
    return _SparseTablesView(module, list(tables.values())) if tables else module


class _PositionalView(torch.nn.Module):
    """``forward(dense, sparse)`` of a model taking any inputs: the input map builds its arguments
    from the two (what :func:`amgp_fx.cli.data.data_shape` and the data readers expect)."""

    def __init__(self, module: torch.nn.Module, bound) -> None:
        super().__init__()
        self.inner, self.bound = module, bound
        if getattr(module, "table_sizes", None):
            self.table_sizes = module.table_sizes

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor):
        from amgp_fx.data.batch import Batch

        return self.inner(*self.bound(Batch(dense, sparse, torch.zeros(dense.shape[0]))))


def bind_model_inputs(loaded, args: argparse.Namespace):
    """The input map of ``--input-map`` (or the saved one, or the default) bound to the model's
    example inputs; raises InputSpecError with the model's input paths when it does not fit."""
    from amgp_fx.batch_inputs import InputMapError, bind_inputs
    from amgp_fx.errors import InputSpecError

    try:
        return bind_inputs(loaded.example_inputs, getattr(args, "input_map", None))
    except InputMapError as error:
        raise InputSpecError(str(error).rstrip("."), "") from None


def positional_view(loaded, bound):
    """``loaded`` as a ``(dense, sparse)`` model for :func:`data_shape` (itself when it is one); the
    table sizes are read from its lookups of the map's sparse columns."""
    import dataclasses

    if bound.is_default_positional():
        return loaded
    from amgp_fx.data.model_tables import _eager_lookups, _graph_lookups, _match

    dense, sparse, _ = bound.rows_of(loaded.example_inputs)
    module, meta = loaded.module, dict(loaded.metadata)
    if not (meta.get("data") or {}).get("table_sizes"):
        try:
            calls = (_graph_lookups if isinstance(module, torch.fx.GraphModule) else _eager_lookups)(
                module, loaded.example_inputs)
            sizes = _match(calls, sparse)
        except Exception:  # noqa: BLE001 - lookups that cannot be watched: data_shape falls back
            sizes = None
        if sizes:
            meta["data"] = {**(meta.get("data") or {}), "table_sizes": sizes}
    return dataclasses.replace(loaded, module=_PositionalView(module, bound), example_inputs=(dense, sparse),
                               metadata=meta)


def saved_map(bound) -> str | None:
    """The input map to save with a trained model (None for the default (dense, sparse) one)."""
    return None if bound.is_default_positional() else bound.describe()


def static_rows(data, batch: int | None):
    """Both splits cut to whole batches of a static-batch model (it cannot run a smaller last batch)."""
    if batch is None:
        return data
    return tuple(rows[: rows.num_rows - rows.num_rows % batch] for rows in data)


def _share(args: argparse.Namespace, flag: str) -> float | None:
    """``--flag SHARE`` as a float in [0, 1], or None when not given."""
    value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
    if value is None:
        return None
    if not (0.0 <= value <= 1.0):  # also refuses nan
        raise UsageError(f"{flag} must be a share in [0, 1], got {value}", f"Pass e.g. {flag} 0.25")
    return value


def lr_schedule_options(args: argparse.Namespace, steps: int) -> dict[str, Any]:
    """TrainConfig's learning-rate schedule from ``--lr-schedule`` and ``--lr-warmup`` (a share of
    the steps, so that it scales with the run)."""
    warmup = _share(args, "--lr-warmup") or 0.0
    return {"lr_schedule": getattr(args, "lr_schedule", "constant"), "lr_warmup_steps": int(round(warmup * steps))}


def switch_overrides(args: argparse.Namespace, recipe) -> dict[str, Any]:
    """AmgpConfig fields from the switch flags (``--preserve-growth``, ``--grow-ramp``, ``--fade``,
    ``--rewarm``, ``--selection``, ``--grow-init``, ``--fold-bias``) for ``recipe`` (the named recipe's AmgpConfig); shares are of
    one pruned phase, as in the recipes. Flags not given keep the recipe's values."""
    overrides: dict[str, Any] = {}
    schedule = recipe.schedule
    ramp, fade, rewarm = _share(args, "--grow-ramp"), _share(args, "--fade"), _share(args, "--rewarm")
    if getattr(args, "preserve_growth", False):
        overrides["preserve_growth"] = True
    if ramp is not None:
        if not (overrides.get("preserve_growth") or recipe.preserve_growth):
            raise UsageError("--grow-ramp ramps a function-preserving growth", "Add --preserve-growth")
        overrides["grow_ramp_steps"] = int(round(ramp * schedule.pruned_steps))
    if fade is not None:
        overrides["fade_steps"] = int(round(fade * schedule.pruned_steps))
        if fade > 0 and schedule.warmup_steps == 0 and schedule.cycles == 1:
            raise UsageError(f"--fade has nothing to fade: recipe {args.amgp_recipe} shrinks once, at step 0",
                             "Drop --fade, or choose a recipe with a warm-up (e.g. --amgp-recipe amgp-half)")
    if rewarm is not None:
        overrides["rewarm_steps"] = int(round(rewarm * schedule.pruned_steps))
    if getattr(args, "selection", None):
        overrides["selection"] = args.selection
    grow_init = getattr(args, "grow_init", None)
    if grow_init:
        preserving = overrides.get("preserve_growth") or recipe.preserve_growth
        ramped = overrides.get("grow_ramp_steps", recipe.grow_ramp_steps if preserving else 0)
        if grow_init == "gradmax" and not preserving:
            raise UsageError("--grow-init gradmax aims units that enter with zero outgoing weights",
                             "Add --preserve-growth, or use a recipe that has it (the default does)")
        if grow_init in ("split", "gradmax") and ramped:
            raise UsageError(f"--grow-init {grow_init} leaves nothing to ramp: the regrown units are set at once",
                             "Add --grow-ramp 0, or choose another --grow-init")
        overrides["grow_init"] = grow_init
    if getattr(args, "fold_bias", False):
        if schedule.warmup_steps == 0 and schedule.cycles == 1:  # folds the means of an untrained model, once
            raise UsageError(f"--fold-bias has nothing to fold: recipe {args.amgp_recipe} shrinks once, at step 0",
                             "Drop --fold-bias, or choose a recipe with a warm-up (e.g. --amgp-recipe amgp-half)")
        overrides["fold_bias"] = True
    return overrides


def amgp_config(args: argparse.Namespace, steps: int):
    """The AmgpConfig of ``--amgp-recipe`` for ``steps``, with the switch flags applied."""
    from amgp_fx.schedule import AmgpConfig

    recipe = AmgpConfig.from_recipe_name(args.amgp_recipe, total_steps=steps)
    return dataclasses.replace(recipe, **switch_overrides(args, recipe))


def check_switch_flags(args: argparse.Namespace) -> None:
    """Refuse switch and schedule flags that would do nothing or are out of range, before any work:
    the switch flags shape AMGP's shrinks and growths, so they need ``--amgp``."""
    for flag in ("--grow-ramp", "--fade", "--rewarm", "--lr-warmup"):
        _share(args, flag)
    given = [flag for flag, value in (("--preserve-growth", getattr(args, "preserve_growth", False)),
                                      ("--grow-ramp", getattr(args, "grow_ramp", None)),
                                      ("--fade", getattr(args, "fade", None)),
                                      ("--rewarm", getattr(args, "rewarm", None)),
                                      ("--selection", getattr(args, "selection", None)),
                                      ("--grow-init", getattr(args, "grow_init", None)),
                                      ("--fold-bias", getattr(args, "fold_bias", False))) if value not in (None, False)]
    if given and not getattr(args, "amgp", False):
        raise UsageError(f"{', '.join(given)}: switch options of AMGP training", "Add --amgp, or drop them")


def train_model(module, data, args: argparse.Namespace, steps: int, *, amgp: bool, inputs: tuple,
                metrics_path: Path | None = None, checkpoint_dir: Path | None = None, bound=None,
                static_batch: int | None = None, progress: Progress | None = None):
    """Train ``module`` (dense, or AMGP with ``args.amgp_recipe``) on ``args.train_device`` (``train``;
    ``run`` picks it from its ``--device``), feeding it the inputs ``bound`` (a
    :class:`amgp_fx.batch_inputs.BatchInputs`; default ``(batch.dense, batch.sparse)``) makes of each
    batch; a static-batch model trains and evaluates at its batch; ``progress`` gets a bar of the
    steps with the latest loss and eval. Returns (trained module, back on the CPU, result); an AMGP
    run's result carries ``amgp`` (:func:`_amgp_summary`: the training FLOPs it saved)."""
    from amgp_fx.config import TrainConfig
    from amgp_fx.train import train

    device = getattr(args, "train_device", None) or runtime_devices(getattr(args, "device", "cpu"))[1]
    check_switch_flags(args)
    batch = static_batch or args.train_batch
    if static_batch and args.train_batch != static_batch and not getattr(args, "_train_batch_noted", False):
        note(args, f"training with batch {static_batch}, the model's static batch (not --train-batch {args.train_batch})")
        args._train_batch_noted = True
    config = TrainConfig(batch_size=batch, steps=steps, seed=args.seed, log_every=max(1, steps // 10),
                         eval_every=_eval_every(steps, batch, data[1]),
                         device=device, **({"eval_batch_size": static_batch} if static_batch else {}),
                         **({"lr": args.lr} if args.lr else {}), **lr_schedule_options(args, steps),
                         metrics_path=str(metrics_path) if metrics_path else None,
                         checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None,
                         checkpoint_every=getattr(args, "checkpoint_every", 0) if checkpoint_dir else 0,
                         resume=bool(getattr(args, "resume", False)))
    hooks, meter = [], None
    if amgp:
        from amgp_fx.amgp import AmgpHook
        from amgp_fx.amgp_report import FlopsMeter
        from amgp_fx.groups.analyze import analyze

        graph = analyze(module, inputs)
        try:
            recipe = amgp_config(args, steps)
        except ValueError as error:
            raise UsageError(f"AMGP recipe {args.amgp_recipe!r} does not fit {steps} steps: {error}",
                             "Train for more steps or choose another --amgp-recipe") from error
        hooks = [AmgpHook(graph, recipe)]
        hooks[0].input_map = saved_map(bound) if bound is not None else None  # its batches -> inputs, as trained
        meter = FlopsMeter(hooks[0])
        hooks.insert(0, meter)  # before the AmgpHook: it counts each step at the width the step ran
        module = graph.module
    forward = None if bound is None or bound.is_default_positional() else (lambda model, rows: model(*bound(rows)))
    try:
        bar = (progress or Progress(1, quiet=True)).bar(steps)
        result = train(trainable(module), data[0], data[1], config, hooks=[*hooks, _ProgressHook(bar)],
                       progress=False, forward=forward)
    except Exception as error:  # noqa: BLE001 - NaN weights fail the evaluation (AUC) with a ValueError
        if not (isinstance(error, ValueError) and str(error).startswith("cannot resume")):
            raise_if_diverged(module)
            raise
        raise UsageError(str(error), "Resume with the same options, or start afresh in a new -o folder") from error
    finally:
        bar.close()
    if meter is not None:
        result.amgp = _amgp_summary(meter, args.amgp_recipe)
    module.to("cpu")  # saving, export and pruning run on the CPU, with the CPU example inputs
    raise_if_diverged(module, result)
    return module, result


def _eval_every(steps: int, batch: int, eval_rows) -> int:
    """Evaluate about ten times along the run, for the training curve, when those evaluations (a
    forward pass only, about a third of a training step's work per row) cost no more than the
    training; else only at the end (0)."""
    rows = getattr(eval_rows, "num_rows", None)
    every = max(1, steps // 10)
    return every if rows is not None and rows * (steps // every) <= 3 * steps * batch else 0


class _ProgressHook:
    """Moves a progress bar one step per optimizer step, showing the latest logged loss and eval."""

    def __init__(self, bar) -> None:
        self.bar, self._seen, self._status = bar, 0, ""

    def on_train_start(self, ctx) -> None:
        self.bar.start_at(ctx.step)  # a resumed run starts where it stopped

    def on_step_end(self, ctx) -> None:
        records = ctx.logger.records
        if len(records) != self._seen:  # only read the log when it grew
            self._seen, self._status = len(records), progress_status(records)
        self.bar.update(1, self._status)


def progress_status(records) -> str:
    """``loss 0.4512, eval auc 0.7012 (step 40)``: the latest training loss and evaluation of a log."""
    train = next((r for r in reversed(records) if r.get("kind") == "train"), None)
    evaluation = next((r for r in reversed(records) if r.get("kind") == "eval"), None)
    parts = [f"loss {train['loss']:.4f}"] if train and train.get("loss") is not None else []
    if evaluation and evaluation.get("auc") is not None:
        parts.append(f"eval auc {evaluation['auc']:.4f} (step {evaluation['step']})")
    return ", ".join(parts)


def _amgp_summary(meter, recipe: str) -> dict[str, Any]:
    """What AMGP did: the recipe and the config it resolved to with the switch flags (``--rewarm``,
    ``--fade``, ... as steps), the size the model ends at, and its training FLOPs next to the same
    steps at full width (``flops_vs_full_width``: 0.65 = 0.65x of dense)."""
    hook = meter.hook
    return {"recipe": recipe, "config": hook.config.to_dict(), "method": hook.schedule.method.value,
            "final": hook.schedule.final.value, "width_final": hook.width(), **meter.summary()}


def train_summary(result) -> dict[str, Any]:
    """JSON-ready: steps, loss, held-out metrics, speed, and for AMGP the FLOPs it saved."""
    amgp = getattr(result, "amgp", None)
    return {"steps": result.step, "train_loss": result.train_loss, "eval": result.metrics,
            "wall_clock_s": result.wall_clock_s, "samples_per_s": result.samples_per_s,
            **({"amgp": amgp} if amgp else {})}


def command(args: argparse.Namespace) -> int:
    """``train``: in this process, or with ``--nproc N`` in N data-parallel processes under torchrun
    (this process launches them; their rank 0 writes the output files, staged as usual)."""
    if args.steps < 1:
        raise UsageError(f"--steps {args.steps} must be at least 1", "Pass e.g. --steps 500")
    check_switch_flags(args)
    started = time.time()
    check_source(args)
    nproc = getattr(args, "nproc", 1)
    from amgp_fx import distributed
    from amgp_fx.devices import resolve_device

    # the GPUs are checked before any process starts or any file is written; a worker checks again
    # against the processes torchrun started on its machine
    local_processes = _env_processes() if distributed.launched_by_torchrun() else nproc
    args.train_device = resolve_device(getattr(args, "device", "cpu"), local_processes)
    if nproc > 1 and not distributed.launched_by_torchrun():
        return launch_workers(args)
    env = _join_process_group(args) if distributed.launched_by_torchrun() else None
    args.world_size = env.world_size if env is not None else 1
    if env is not None:
        args.train_device = str(env.device)  # cuda:LOCAL_RANK on GPUs
    try:
        if env is None or env.is_main:
            with OutputDir(Path(args.output_dir)) as out, keep_resumable(out.path):
                _train_and_save(args, out, Progress(3, args.quiet))
            written_count(out, args.quiet, _written_directly(out.path, started))
        else:
            _train_and_save(args, None, Progress(3, quiet=True))
    finally:
        distributed.shutdown()
    return 0


def _train_and_save(args: argparse.Namespace, out: OutputDir | None, progress: Progress) -> None:
    """Load, train and (with ``out``: rank 0 or a single process) save the trained model."""
    out_path = Path(args.output_dir)
    progress.stage("loading the model and the data")
    torch.manual_seed(args.seed)  # a factory's fresh weights are the same in a resumed run
    loaded = load(args)
    bound = bind_model_inputs(loaded, args)
    shape = data_shape(positional_view(loaded, bound))
    data = static_rows(load_data(args, shape), loaded.static_batch)
    progress.done(f"{data[0].num_rows:,} training rows")
    workers = f" in {args.world_size} processes" if getattr(args, "world_size", 1) > 1 else ""
    where = "" if args.train_device == "cpu" else f" on {'GPUs' if workers else args.train_device}"
    progress.stage(f"training {'with AMGP' if args.amgp else 'dense'} for {args.steps} steps{workers}{where}")
    module, result = train_model(loaded.module, data, args, args.steps, amgp=args.amgp,
                                 inputs=loaded.example_inputs, metrics_path=out_path / "train_metrics.jsonl",
                                 checkpoint_dir=out_path / "checkpoints", bound=bound,
                                 static_batch=loaded.static_batch, progress=progress)
    progress.done(f"loss {result.train_loss:.4f}, eval {metrics_text(result.metrics)}{_flops_text(result)}")
    if out is None:
        return
    progress.stage("saving")
    save_model(out, "trained", module, loaded.example_inputs,
               {**model_metadata(loaded, input_map=saved_map(bound)), "data": shape}, loaded.static_batch)
    curve = save_curve(out, "train_curve.png", result.history, f"{loaded.description}: training")
    write_json(out.file("train_summary.json"), {"version": 1, "model": loaded.description,
                                                 "device": args.train_device, **train_summary(result),
                                                 "plots": [curve] if curve else []})
    progress.done(f"training curve: {out.path / curve}" if curve else plot_hint())


def _flops_text(result) -> str:
    """``, training FLOPs 0.65x of dense`` for an AMGP run ('' otherwise)."""
    from amgp_fx.report_format import of_dense

    fraction = (getattr(result, "amgp", None) or {}).get("flops_vs_full_width")
    return f", training FLOPs {of_dense(fraction)} of dense" if fraction is not None else ""


def _written_directly(folder: Path, since: float) -> tuple[Path, ...]:
    """The files training wrote straight into ``folder`` (not staged): the metrics log and the
    checkpoints, those written since ``since`` (a resumed run's older checkpoints are not counted)."""
    candidates = [folder / "train_metrics.jsonl", *sorted((folder / "checkpoints").glob("*"))]
    return tuple(p for p in candidates if p.is_file() and p.stat().st_mtime >= since - 1)


def _join_process_group(args: argparse.Namespace):
    """This worker's `DistEnv`: gloo on the CPU; on CUDA, NCCL and the GPU ``cuda:LOCAL_RANK``."""
    from amgp_fx import distributed

    env = distributed.init_from_env(device=args.train_device)
    if args.train_batch % env.world_size:
        raise UsageError(f"--train-batch {args.train_batch} does not split evenly over {env.world_size} processes",
                         f"Pass a --train-batch divisible by {env.world_size}")
    return env


def _env_processes() -> int:
    """Processes torchrun started on this machine (LOCAL_WORLD_SIZE, else WORLD_SIZE)."""
    for name in ("LOCAL_WORLD_SIZE", "WORLD_SIZE"):
        text = os.environ.get(name, "")
        if text.isascii() and text.isdigit() and int(text) > 0:
            return int(text)
    return 1


_ERROR_LINE = re.compile(r"^amgp-compress: error: (.*)$")


_EXIT_CODE = re.compile(r"exitcode\s*:\s*(-?\d+)")


def _worker_argv(argv: list[str], device: str) -> list[str]:
    """``argv`` less ``--nproc N``, with ``--device`` set to the checked ``device``: the workers learn
    the world size from torchrun (whose own parser would refuse ``--nproc`` as an ambiguous
    abbreviation of its ``--nproc-per-node``), and ``auto`` was resolved once, here."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in ("--nproc", "--device"):
            skip = True
        elif not token.startswith(("--nproc=", "--device=")):
            kept.append(token)
    return [*kept, "--device", device]


def launch_workers(args: argparse.Namespace) -> int:
    """Re-run this command line under ``python -m torch.distributed.run --standalone`` with
    ``--nproc`` processes and wait for them.

    Their stderr is collected (shown live with --verbose): on failure the workers' one-line
    error, and the exit code of the first failing worker, become this process's.

    Raises:
        CliError: a worker failed (its message and exit code), or TrainingFailure: torchrun failed
            before a worker could say why.
    """
    if getattr(args, "argv", None) is None:
        raise UsageError("--nproc needs the command line to re-run", "Run it as amgp-compress train ... --nproc N")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
               "-m", "amgp_fx", *_worker_argv(args.argv, args.train_device)]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the workers import this very amgp_fx (its models included)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    lines: list[str] = []
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, errors="replace") as process:
        try:
            for line in process.stderr:
                lines.append(line)
                if args.verbose:
                    sys.stderr.write(line)
                    sys.stderr.flush()
        except KeyboardInterrupt:  # SIGINT/SIGTERM here: torchrun passes SIGTERM on, each worker cleans up
            process.terminate()
            raise
    if process.returncode == 0:
        return 0
    output = "".join(lines)
    errors = list(dict.fromkeys(m.group(1) for m in map(_ERROR_LINE.match, lines) if m))
    cause = output[output.find("Root Cause"):] if "Root Cause" in output else output
    code = _EXIT_CODE.search(cause)
    if not errors:
        last = next((line.strip() for line in reversed(lines) if line.strip()), "no output")
        raise TrainingFailure(f"the {args.nproc} training processes failed (torchrun exit code {process.returncode}; "
                              f"last output: {last[:200]})", "Rerun with --verbose to see their output")
    error = CliError(errors[0])
    error.exit_code = int(code.group(1)) if code and int(code.group(1)) > 0 else process.returncode
    raise error

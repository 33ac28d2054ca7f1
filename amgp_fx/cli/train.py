"""The ``train``, ``bench`` and ``run`` subcommands of ``amgp-compress`` (see :mod:`amgp_fx.cli`).

``run`` is the whole pipeline on one model: load or build it, train it (dense or AMGP) on synthetic
or Criteo TSV data, export and time the dense model, prune it one-shot to a ratio or FLOPs target,
fine-tune, export and time the compact model, and write both models, the plan, the metrics, the
ONNX files and the reports into one folder. The dense model is exported and timed before pruning
because pruning slices the tensors it shares with the compact model.

Dim letters: B batch, F sparse fields.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from amgp_fx.cli import parse_batch_sizes
from amgp_fx.cli_commands import (OutputDir, Progress, check_source, export_model, load, metrics_text, model_label,
                                  model_metadata, prune_graph, prune_request, run_report, save_model, stats_line,
                                  write_json)
from amgp_fx.errors import CliError, DataError, TrainingFailure, UsageError
from amgp_fx.model_inputs import make_inputs, resize_batch

__all__ = ["run_benchmarks", "run_pipeline", "run_training"]

log = logging.getLogger(__name__)

_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
                "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}


# -- data and training ------------------------------------------------------------------------------------
def data_shape(loaded) -> dict[str, Any]:
    """``{"num_dense", "table_sizes", "num_tasks"}`` of the data the model takes. Table sizes come
    from the model's ``table_sizes`` attribute, the saved metadata, the model's embedding tables
    (:func:`amgp_fx.data.model_tables.model_table_sizes`), and only failing those from the example
    inputs (ids seen + 1 per field, which an 8-row batch underestimates)."""
    from amgp_fx.data.model_tables import model_table_sizes

    module, inputs = loaded.module, loaded.example_inputs
    if len(inputs) != 2 or inputs[0].is_floating_point() is False or inputs[1].dtype != torch.int64 \
            or inputs[0].dim() != 2 or inputs[1].dim() != 2:
        raise UsageError("training needs a model taking (dense (B, D) float32, sparse (B, F) int64), got "
                         f"{len(inputs)} inputs", "Train it from Python with amgp_fx.train.train")
    with torch.no_grad():
        output = module(*inputs)
    tasks = 1 if output.dim() == 1 else int(output.shape[1])
    known = loaded.metadata.get("data") or {}
    table_sizes = getattr(module, "table_sizes", None) or known.get("table_sizes") or \
        model_table_sizes(module, inputs) or [max(2, int(c) + 1) for c in inputs[1].max(dim=0).values.tolist()]
    return {"num_dense": int(inputs[0].shape[1]), "table_sizes": [int(s) for s in table_sizes], "num_tasks": tasks}


def load_data(args: argparse.Namespace, shape: dict[str, Any]):
    """(train rows, eval rows), 10% held out: synthetic data shaped like the model, a CSV/TSV/Parquet
    file read with the column spec of ``--columns``/``--label``/``--dense``/``--categorical`` (the
    spec is then recorded in ``shape["columns"]``, which is saved with the model), or a Criteo TSV."""
    from amgp_fx.data import (ColumnSpecError, SyntheticCriteo, column_spec_from_options, read_criteo_tsv,
                              read_table_file, table_file_format, train_eval_split)

    try:
        spec = column_spec_from_options(getattr(args, "columns", None), label=getattr(args, "label", None),
                                        dense=getattr(args, "dense", None),
                                        categorical=getattr(args, "categorical", None),
                                        encoding=getattr(args, "encoding", None))
    except ColumnSpecError as error:
        raise UsageError(str(error), "Fix the column spec; docs/data.md#your-own-data shows the format") from None
    if args.data == "synthetic":
        if spec is not None:
            raise UsageError("--columns, --label, --dense, --categorical and --encoding describe a data file, but "
                             "--data is synthetic", "Pass --data FILE, or leave the column options out")
        from amgp_fx.config import SyntheticConfig

        config = SyntheticConfig(num_dense=shape["num_dense"], table_sizes=tuple(shape["table_sizes"]),
                                 num_tasks=shape["num_tasks"], seed=args.seed)
        rows = SyntheticCriteo(config).rows(0, args.rows)
    else:
        path = Path(args.data)
        if not path.is_file():
            raise DataError(f"data file {path} does not exist", "Pass --data synthetic, a Criteo TSV file, or a "
                            "CSV/TSV/Parquet file with --columns")
        if spec is not None:
            if table_file_format(path) is None:
                raise DataError(f"{path} is not a CSV, TSV or Parquet file (by its name)",
                                "Name it .csv, .tsv, .txt (optionally .gz), .parquet or .pq")
            wanted = (shape["num_dense"], len(shape["table_sizes"]), shape["num_tasks"])
            if (len(spec.dense), len(spec.categorical), spec.num_tasks) != wanted:
                raise DataError(f"the column spec has {len(spec.dense)} dense, {len(spec.categorical)} categorical "
                                f"and {spec.num_tasks} label columns but the model takes {wanted[0]} dense and "
                                f"{wanted[1]} sparse inputs and has {wanted[2]} outputs",
                                "Declare one dense column per dense input, one categorical column per embedding "
                                "table and one label column per output, in the model's order")
            rows, stats = read_table_file(path, spec, shape["table_sizes"], max_rows=args.rows,
                                          skip_malformed=args.skip_malformed)
            shape["columns"] = spec.to_dict()
        elif table_file_format(path) == "parquet" or path.name.lower().endswith((".csv", ".csv.gz")):
            raise UsageError(f"{path} needs a column spec", "Pass --columns spec.toml, or --label, --dense and "
                             "--categorical (docs/data.md#your-own-data)")
        else:
            if shape["num_dense"] != 13 or len(shape["table_sizes"]) != 26:
                raise DataError(f"{path} is read as Criteo TSV data (13 dense, 26 categorical columns) but the model "
                                f"takes {shape['num_dense']} dense and {len(shape['table_sizes'])} sparse inputs",
                                "Use a model built for Criteo (e.g. --model dlrm --preset default), or describe "
                                "your own columns with --columns or --label/--dense/--categorical")
            rows, stats = read_criteo_tsv(path, shape["table_sizes"], max_rows=args.rows,
                                          skip_malformed=args.skip_malformed)
        if stats.skipped:
            log.warning("%s: skipped %d malformed rows (first: %s)", path, stats.skipped,
                        "; ".join(stats.first_errors))
    if rows.num_rows < 20:
        raise DataError(f"the data has {rows.num_rows} usable rows, too few to train and evaluate",
                        "Pass a file with at least 20 rows")
    bad = ~torch.isfinite(rows.dense).all(dim=1) | ~torch.isfinite(rows.label.reshape(rows.num_rows, -1)).all(dim=1)
    if bool(bad.any()):
        raise DataError(f"the data has NaN or infinite values in {int(bad.sum())} rows (first: row "
                        f"{int(bad.nonzero()[0])})", "Clean or drop those rows")
    return train_eval_split(rows, 0.1, seed=args.seed)


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


def train_model(module, data, args: argparse.Namespace, steps: int, *, amgp: bool, inputs: tuple,
                metrics_path: Path | None = None, checkpoint_dir: Path | None = None):
    """Train ``module`` (dense, or AMGP with ``args.amgp_recipe``) on ``args.train_device`` (``train``;
    ``run`` picks it from its ``--device``); returns (trained module, back on the CPU, result)."""
    from amgp_fx.config import TrainConfig
    from amgp_fx.train import train

    device = getattr(args, "train_device", None) or _devices(getattr(args, "device", "cpu"))[1]
    config = TrainConfig(batch_size=args.train_batch, steps=steps, seed=args.seed, log_every=max(1, steps // 10),
                         device=device,
                         **({"lr": args.lr} if args.lr else {}),
                         metrics_path=str(metrics_path) if metrics_path else None,
                         checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None,
                         checkpoint_every=getattr(args, "checkpoint_every", 0) if checkpoint_dir else 0,
                         resume=bool(getattr(args, "resume", False)))
    hooks = []
    if amgp:
        from amgp_fx.amgp import AmgpHook
        from amgp_fx.groups.analyze import analyze
        from amgp_fx.schedule import AmgpConfig

        graph = analyze(module, inputs)
        try:
            recipe = AmgpConfig.from_recipe_name(args.amgp_recipe, total_steps=steps)
        except ValueError as error:
            raise UsageError(f"AMGP recipe {args.amgp_recipe!r} does not fit {steps} steps: {error}",
                             "Train for more steps or choose another --amgp-recipe") from error
        hooks = [AmgpHook(graph, recipe)]
        module = graph.module
    try:
        result = train(trainable(module), data[0], data[1], config, hooks=hooks, progress=False)
    except ValueError as error:
        if not str(error).startswith("cannot resume"):
            raise
        raise UsageError(str(error), "Resume with the same options, or start afresh in a new -o folder") from error
    module.to("cpu")  # saving, export and pruning run on the CPU, with the CPU example inputs
    if not math.isfinite(result.train_loss):
        raise TrainingFailure(f"training diverged: the loss is {result.train_loss} at step {result.step}",
                              "Lower --lr or check the data")
    return module, result


def _train_summary(result) -> dict[str, Any]:
    return {"steps": result.step, "train_loss": result.train_loss, "eval": result.metrics,
            "wall_clock_s": result.wall_clock_s, "samples_per_s": result.samples_per_s}


def run_training(args: argparse.Namespace) -> int:
    """``train``: in this process, or with ``--nproc N`` in N data-parallel processes under torchrun
    (this process launches them; their rank 0 writes the output files, staged as usual)."""
    if args.steps < 1:
        raise UsageError(f"--steps {args.steps} must be at least 1", "Pass e.g. --steps 500")
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
            with OutputDir(Path(args.output_dir)) as out:
                _train_and_save(args, out, Progress(3, args.quiet))
            _written(out, args.quiet)
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
    shape = data_shape(loaded)
    data = load_data(args, shape)
    progress.done(f"{data[0].num_rows:,} training rows")
    workers = f" in {args.world_size} processes" if getattr(args, "world_size", 1) > 1 else ""
    where = "" if args.train_device == "cpu" else f" on {'GPUs' if workers else args.train_device}"
    progress.stage(f"training {'with AMGP' if args.amgp else 'dense'} for {args.steps} steps{workers}{where}")
    module, result = train_model(loaded.module, data, args, args.steps, amgp=args.amgp,
                                 inputs=loaded.example_inputs, metrics_path=out_path / "train_metrics.jsonl",
                                 checkpoint_dir=out_path / "checkpoints")
    progress.done(f"loss {result.train_loss:.4f}, eval {metrics_text(result.metrics)}")
    if out is None:
        return
    progress.stage("saving")
    save_model(out, "trained", module, loaded.example_inputs, {**model_metadata(loaded), "data": shape})
    write_json(out.file("train_summary.json"), {"version": 1, "model": loaded.description,
                                                 "device": args.train_device, **_train_summary(result)})
    progress.done()


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
    root = str(Path(__file__).resolve().parents[1])  # the workers import this very amgp_fx (and models/)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    lines: list[str] = []
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, errors="replace") as process:
        for line in process.stderr:
            lines.append(line)
            if args.verbose:
                sys.stderr.write(line)
                sys.stderr.flush()
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


def _written(out: OutputDir, quiet: bool) -> None:
    if not quiet:
        print(f"wrote {len(out.written)} files to {out.path.resolve()}")


# -- benchmarks ---------------------------------------------------------------------------------------------
def _onnx_specs(path: str):
    from amgp_fx.bench import make_ort_session
    from amgp_fx.model_inputs import TensorSpec

    specs = []
    for node in make_ort_session(path, "cpu").get_inputs():
        dtype = _ONNX_DTYPES.get(node.type)
        dims = [d if isinstance(d, int) else None for d in node.shape[1:]]
        if dtype is None or None in dims:
            raise UsageError(f"{path}: cannot make inputs for {node.name} ({node.type}, {node.shape})",
                             "Pass --input-shape or --example-inputs")
        specs.append(TensorSpec(dtype, ("B", *dims)))
    return specs


def _devices(device: str) -> tuple[str, str]:
    """(ORT provider, torch device) for --device (``devices.resolve_device`` decides the torch one)."""
    from amgp_fx.bench import cuda_provider_available
    from amgp_fx.devices import resolve_device

    torch_device = resolve_device(device)
    if torch_device == "cpu":
        return "cpu", "cpu"
    return ("cuda" if cuda_provider_available() else "cpu"), torch_device


def bench_variant(onnx_path, module, inputs, name: str, variant: str, args, runtimes) -> list:
    """Latency records of one model: ORT on ``onnx_path`` and/or PyTorch on ``module``."""
    from amgp_fx.bench import benchmark_onnx, benchmark_torch, count_forward_flops

    sizes = parse_batch_sizes(args.batch_sizes)
    provider, device = _devices(args.device)
    if inputs is not None:
        def factory(b):
            return resize_batch(inputs, b)
    else:
        specs = _onnx_specs(onnx_path) if not args.input_shape else None
        from amgp_fx.model_inputs import parse_input_spec

        specs = specs or parse_input_spec(args.input_shape)

        def factory(b):
            return make_inputs(specs, b)
    flops = (lambda b: count_forward_flops(module, factory(b))) if module is not None else None
    records = []
    home = next(module.parameters(), torch.empty(0)).device if module is not None else None
    for mode in ("eager", "compile"):  # before ONNX Runtime, whose spinning threads slow torch down for a while
        if module is not None and f"torch-{mode}" in runtimes:
            records += benchmark_torch(module, factory, sizes, mode=mode, device=device, warmup=args.warmup,
                                       iters=args.iters, model_name=name, variant=variant, flops=flops)
    if module is not None:
        module.to(home)  # benchmark_torch moved it to the timing device; analysis and saving use the CPU inputs
    if onnx_path is not None and "ort" in runtimes:
        records += benchmark_onnx(onnx_path, factory, sizes, provider=provider, warmup=args.warmup, iters=args.iters,
                                  model=name, variant=variant, flops=flops)
    return records


def _runtimes(text: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if text is None:
        return default
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [r for r in chosen if r not in ("ort", "torch-eager", "torch-compile")]
    if unknown or not chosen:
        raise UsageError(f"unknown runtime {', '.join(unknown) or text!r}",
                         "Choose from ort, torch-eager, torch-compile")
    return chosen


def _save_latency(out: OutputDir, records, baseline: str) -> str:
    from amgp_fx.latency_report import format_table, save_records

    save_records(records, out.file("latency.json"))
    table = format_table(records, baseline_variant=baseline)
    out.file("latency.md").write_text(table + "\n", encoding="utf-8")
    return table


def run_benchmarks(args: argparse.Namespace) -> int:
    parse_batch_sizes(args.batch_sizes)
    model_file = args.model_file
    onnx_files = list(args.onnx) + ([model_file] if model_file and model_file.endswith(".onnx") else [])
    has_model = bool((model_file and not model_file.endswith(".onnx")) or args.model_name or args.factory)
    if not onnx_files and not has_model:
        raise UsageError("nothing to benchmark", "Pass a model (e.g. model.pt2 or --model dlrm) or --onnx FILE")
    runtimes = _runtimes(args.runtimes, ("ort", "torch-eager") if has_model else ("ort",))
    for path in onnx_files:
        if not Path(path).is_file():
            raise UsageError(f"ONNX file {path} does not exist", "Check the path")
    records = []
    with OutputDir(args.output_dir) as out, tempfile.TemporaryDirectory() as scratch:
        loaded = None
        if has_model:
            args.model_file = None if model_file in onnx_files else model_file
            loaded = load(args)
            if "ort" in runtimes and not onnx_files:
                # a scratch file to time (checked, not parity-tested: `export` is for files you keep)
                onnx_files = [str(export_model(loaded.module, loaded.example_inputs, Path(scratch) / "model.onnx",
                                          args_for_export(no_parity=True)).path)]
        name = model_label(loaded) if loaded else Path(onnx_files[0]).stem
        for index, path in enumerate(onnx_files or [None]):
            variant = args.variant or (Path(path).stem if path and len(onnx_files) > 1 else "model")
            module = loaded.module if loaded is not None and index == 0 else None
            inputs = loaded.example_inputs if loaded is not None else None
            records += bench_variant(path, module, inputs, name, variant, args, runtimes)
        table = _save_latency(out, records, records[0].variant)
    print(table)
    _written(out, args.quiet)
    return 0


def args_for_export(**overrides) -> argparse.Namespace:
    """Export options with the CLI defaults (for exports inside bench and run)."""
    return argparse.Namespace(**{"static_batch": False, "opset": 18, "no_parity": False, "atol": None,
                                 "rtol": None, **overrides})


# -- the whole pipeline ------------------------------------------------------------------------------------
def run_pipeline(args: argparse.Namespace) -> int:
    from amgp_fx.groups.analyze import analyze
    from amgp_fx.pruning_plan import count_parameters

    request = prune_request(args)
    parse_batch_sizes(args.batch_sizes)
    if args.steps < 0 or args.finetune_steps < 0:
        raise UsageError("--steps and --finetune-steps must be >= 0", "Pass 0 to skip training")
    progress = Progress(7, args.quiet)
    started = time.perf_counter()
    summary: dict[str, Any] = {"version": 1}
    with OutputDir(args.output_dir) as out:
        progress.stage("loading the model")
        torch.manual_seed(args.seed)
        loaded = load(args, default_model="dlrm")
        module, inputs = loaded.module, loaded.example_inputs
        summary["model"] = loaded.description
        progress.done(f"{loaded.description}, {count_parameters(module):,} parameters")
        training = bool(args.steps or args.finetune_steps)
        args.train_device = _devices(args.device)[1] if training else "cpu"  # resolved once, for both trainings
        where = "" if args.train_device == "cpu" else f" on {args.train_device}"
        progress.stage(f"training {'with AMGP' if args.amgp else 'dense'} for {args.steps} steps{where}")
        summary["train_device"] = args.train_device
        shape = data_shape(loaded) if training else None
        data = load_data(args, shape) if training else None
        if args.steps:
            module, result = train_model(module, data, args, args.steps, amgp=args.amgp, inputs=inputs)
            summary["dense_training"] = _train_summary(result)
            progress.done(f"eval {metrics_text(result.metrics)}")
        else:
            progress.done("skipped")
        metadata = {**model_metadata(loaded), **({"data": shape} if shape else {})}
        progress.stage("saving, exporting and timing the dense model")
        save_model(out, "dense", module, inputs, metadata)
        dense_export = export_model(module, inputs, out.file("dense.onnx"), args)
        records = bench_variant(out.file("dense.onnx"), module, inputs, model_label(loaded), "dense", args,
                                ("ort", "torch-eager"))
        progress.done(f"parity {dense_export.max_abs_diff:.1e}" if dense_export.max_abs_diff is not None else "")
        progress.stage("analysing and pruning")
        graph = analyze(module, inputs)
        write_json(out.file("groups.json"), {"version": 1, "groups": graph.table()})
        plan = prune_graph(graph, request, None)
        progress.done(stats_line(plan.stats))
        progress.stage(f"fine-tuning the compact model for {args.finetune_steps} steps")
        compact = graph.module
        if args.finetune_steps:
            compact, result = train_model(compact, data, args, args.finetune_steps, amgp=False, inputs=inputs)
            summary["compact_training"] = _train_summary(result)
            progress.done(f"eval {metrics_text(result.metrics)}")
        else:
            progress.done("skipped")
        progress.stage("saving, exporting and timing the compact model")
        save_model(out, "compact", compact, inputs, {**metadata, "plan": plan.to_dict()})
        plan.save(out.file("plan.json"))
        compact_export = export_model(compact, inputs, out.file("compact.onnx"), args)
        records += bench_variant(out.file("compact.onnx"), compact, inputs, model_label(loaded), "compact", args,
                                 ("ort", "torch-eager"))
        progress.done()
        progress.stage("writing reports")
        table = _save_latency(out, records, "dense")
        summary.update(pruning=plan.stats, plan_groups=len(plan.groups), exports={
            "dense": dense_export.to_dict(), "compact": compact_export.to_dict()},
            seconds=time.perf_counter() - started)
        write_json(out.file("summary.json"), summary)
        out.file("report.md").write_text(run_report(summary, plan, table), encoding="utf-8")
        progress.done()
    if not args.quiet:
        print(table)
        print(f"done in {time.perf_counter() - started:.0f} s; {len(out.written)} files in {out.path.resolve()}:")
        print("  " + "  ".join(p.name for p in out.written))
        print(f"  start with {out.path / 'report.md'}")
    return 0

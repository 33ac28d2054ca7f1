"""What each ``amgp-compress`` subcommand does, on arguments parsed by :mod:`amgp_fx.cli`.

Each command validates its numeric options first (fast failures), opens an :class:`OutputDir`
(which refuses an unwritable folder before any work), calls the library, and writes its files into
the staging folder; they move into place only when the command succeeds.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from amgp_fx.cli import parse_batch_sizes, parse_factory_kwargs, parse_group_ratio, parse_ratio
from amgp_fx.devices import parse_device
from amgp_fx.errors import ModelFileError, OutputPathError, PruneRequestError, UsageError

__all__ = ["COMMANDS", "OutputDir"]

RUNTIMES = ("ort", "torch-eager", "torch-compile")
_UMASK = os.umask(0)
os.umask(_UMASK)


class OutputDir:
    """Stage a command's output files, then move them all into ``path`` only if the command succeeds.

    Files go to a hidden staging folder inside ``path`` (same filesystem, so each move is an atomic
    ``os.replace``); on an exception the staging folder, and the folders this created if left empty,
    are removed, so a failed command leaves no output files.

    Raises:
        OutputPathError: ``path`` is a file, or cannot be created or written.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.written: list[Path] = []
        self._created: list[Path] = []
        self._staging: Path | None = None

    def __enter__(self) -> OutputDir:
        fix = "Pass a writable folder with --output-dir"
        check_output_path(self.path)
        missing = [p for p in [self.path, *self.path.parents] if not p.exists()]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._created = missing
            self._staging = Path(tempfile.mkdtemp(prefix=".amgp-staging-", dir=self.path))
        except OSError as error:
            self._remove_created()
            raise OutputPathError(f"cannot write to {self.path}: {error.strerror or error}", fix) from error
        return self

    def file(self, name: str) -> Path:
        """Where to write output ``name`` now (inside the staging folder)."""
        target = self._staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                for staged in sorted(p for p in self._staging.rglob("*") if p.is_file()):
                    target = self.path / staged.relative_to(self._staging)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staged, target)
                    os.chmod(target, 0o666 & ~_UMASK)  # temporary files are created 0600
                    self.written.append(target)
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)
            if exc_type is not None:
                self._remove_created()

    def _remove_created(self) -> None:
        for folder in self._created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break


def check_output_path(path: Path) -> None:
    """Refuse, without creating anything, an output folder that cannot be made or written.

    Raises:
        OutputPathError: ``path`` or an ancestor is a file, or the nearest existing folder is read-only.
    """
    fix = "Pass a writable folder with --output-dir"
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"output path {path} is a file, not a folder", fix)
    existing = next(p for p in [path, *path.parents, Path(".")] if p.exists())
    if not existing.is_dir():
        raise OutputPathError(f"cannot write to {path}: Not a directory ({existing} is a file)", fix)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write to {path}: Permission denied ({existing} is read-only)", fix)


class Progress:
    """``[2/6] pruning ... 42% of the FLOPs (1.2 s)`` lines on stdout (silenced by --quiet)."""

    _open_line = False  # a stage line waits for its end; `interrupted` closes it when a stage fails

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet, self.step, self.started = total, quiet, 0, time.perf_counter()

    def stage(self, text: str) -> Progress:
        self.step += 1
        self._began = time.perf_counter()
        self.say(f"[{self.step}/{self.total}] {text} ...", end="")
        Progress._open_line = not self.quiet
        return self

    def done(self, detail: str = "") -> None:
        self.say(f" {detail + ' ' if detail else ''}({time.perf_counter() - self._began:.1f} s)")
        Progress._open_line = False

    @classmethod
    def interrupted(cls) -> None:
        if cls._open_line:
            print(" failed", flush=True)
            cls._open_line = False

    def say(self, text: str, end: str = "\n") -> None:
        if not self.quiet:
            print(text, end=end, flush=True)


# -- shared steps ----------------------------------------------------------------------------------------
def _source(args: argparse.Namespace, default_model: str | None = None) -> tuple[str | None, dict]:
    if args.model_name and args.factory:
        raise UsageError("--model and --factory both name the model's code", "Pass only one of them")
    if args.factory_kwargs and not args.factory:
        raise UsageError("--factory-kwargs needs --factory", "Add --factory package.module:function")
    name = args.model_name or (default_model if not args.factory and not args.model_file else None)
    if name:
        return "models:build_model", {"name": name, "preset": args.preset}
    return args.factory, parse_factory_kwargs(args.factory_kwargs)


def check_source(args: argparse.Namespace, default_model: str | None = None) -> None:
    """Fail fast, before any work, when the model options are missing or contradict each other."""
    factory, _ = _source(args, default_model)
    if args.model_file is None and factory is None:
        raise UsageError("no model given", "Pass a .pt2 file, a state dict with --factory, or --model dlrm")


def load(args: argparse.Namespace, default_model: str | None = None):
    from amgp_fx.model_io import load_model
    from amgp_fx.pruning_plan import PruningPlan

    check_source(args, default_model)
    factory, kwargs = _source(args, default_model)
    plan = PruningPlan.load(args.plan).to_dict() if args.plan else None
    return load_model(args.model_file, factory=factory, factory_kwargs=kwargs if factory else None, plan=plan,
                      trust_pickle=args.trust_pickle, input_shape=args.input_shape,
                      example_inputs=args.example_inputs, batch_size=args.batch_size)


def write_json(path: Path, value: Any) -> None:
    from amgp_fx.fileio import atomic_write_json

    try:
        atomic_write_json(path, value)
    except OSError as error:
        raise OutputPathError(f"cannot write {path}: {error.strerror or error}", "Pass a writable path") from error


def prune_request(args: argparse.Namespace) -> dict[str, Any]:
    """Validated pruning options (before any heavy import)."""
    cap = float(args.max_layer_ratio) if _is_number(args.max_layer_ratio) else -1.0
    if not 0.0 < cap <= 1.0:
        raise PruneRequestError(f"--max-layer-ratio {args.max_layer_ratio!r} is outside (0, 1]",
                                "Pass a fraction such as 0.9")
    flops_target = parse_ratio(args.flops_target, "FLOPs target") if args.flops_target is not None else None
    request = dict(ratio=parse_ratio(args.ratio) if args.ratio is not None and flops_target is None else None,
                   flops_target=flops_target,
                   group_ratios=dict(parse_group_ratio(t) for t in args.group_ratio) or None,
                   groups=_split(args.groups), kinds=_split(args.kinds), criterion=args.criterion,
                   multiple=args.multiple, max_layer_ratio=cap)
    if request["ratio"] is None and request["flops_target"] is None and not request["group_ratios"] \
            and not getattr(args, "apply_plan", None):
        raise UsageError("nothing to prune", "Pass --ratio, --flops-target, --group-ratio or --apply-plan")
    return request


def _is_number(text: Any) -> bool:
    try:
        return float(text) == float(text)
    except (TypeError, ValueError):
        return False


def _split(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] or None if text else None


def model_metadata(loaded, plan=None) -> dict:
    meta = {key: loaded.metadata[key] for key in ("factory", "factory_kwargs") if key in loaded.metadata}
    return {**meta, "source": loaded.description, **({"plan": plan.to_dict()} if plan is not None else {})}


def save_model(out: OutputDir, stem: str, module, inputs, metadata: dict) -> None:
    from amgp_fx.model_io import save_pt2, save_state_dict

    save_pt2(module, inputs, out.file(f"{stem}.pt2"), metadata)
    save_state_dict(module, out.file(f"{stem}.safetensors"), metadata)


def prune_graph(graph, request: dict, plan_file: str | None):
    from amgp_fx.pruning_plan import PruningPlan, apply_plan, count_parameters, prune_

    if plan_file:
        plan = PruningPlan.load(plan_file)
        before = count_parameters(graph.module)
        apply_plan(graph, plan)
        return PruningPlan(plan.groups, plan.criterion, plan.ratio, plan.flops_target, plan.multiple,
                           plan.max_layer_ratio, {"params_before": before,
                                                  "params_after": count_parameters(graph.module)})
    options = {k: v for k, v in request.items() if k != "ratio"}
    return prune_(graph, request["ratio"], **options)[0]


def plan_rows(plan) -> list[list]:
    return [[g.id, g.name, g.kind, g.full_size, len(g.keep)] for g in plan.groups]


def stats_line(stats: dict) -> str:
    parts = []
    for key, label in (("params", "parameters"), ("flops", "forward FLOPs")):
        if f"{key}_before" in stats and f"{key}_after" in stats and stats[f"{key}_before"]:
            ratio = stats[f"{key}_after"] / stats[f"{key}_before"]
            parts.append(f"{label} {stats[f'{key}_before']:,} -> {stats[f'{key}_after']:,} ({ratio:.1%})")
    return "; ".join(parts)


def render_table(rows, headers) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def report_written(out: OutputDir, quiet: bool) -> None:
    if not quiet:
        print(f"wrote {len(out.written)} files to {out.path.resolve()}:")
        for path in out.written:
            print(f"  {path}")


def precheck(args: argparse.Namespace) -> None:
    """Checks that need no torch, run before it is imported so that these mistakes fail at once:
    the model options, the model file, the numeric options and the output folder."""
    if args.command == "bench":
        for path in args.onnx:
            if not Path(path).is_file():
                raise UsageError(f"ONNX file {path} does not exist", "Check the path")
    elif args.command in ("prune", "run"):
        prune_request(args)
    if args.command in ("bench", "run"):
        parse_batch_sizes(args.batch_sizes)
    if args.command == "train":
        check_nproc(args.nproc, args.train_batch)
        args.device = parse_device(args.device)  # the syntax only: the GPUs are checked once torch is loaded
    if args.command != "bench" or args.model_name or args.factory or args.model_file:
        check_source(args, default_model="dlrm" if args.command == "run" else None)
    if args.model_file and not Path(args.model_file).exists():
        raise ModelFileError(f"model file {args.model_file} does not exist", "Check the path")
    if getattr(args, "output_dir", None):
        check_output_path(Path(args.output_dir))
    if getattr(args, "json", None):
        check_output_path(Path(args.json).parent)


def check_nproc(nproc: int, batch: int) -> None:
    """``--nproc`` processes must split ``--train-batch`` (the global batch) evenly."""
    if nproc < 1:
        raise UsageError(f"--nproc {nproc} must be at least 1", "Pass the number of training processes, e.g. --nproc 2")
    if batch % nproc:
        raise UsageError(f"--train-batch {batch} does not split evenly over --nproc {nproc} processes",
                         f"Pass a --train-batch divisible by {nproc}, e.g. {max(nproc, batch // nproc * nproc)}")


def model_label(loaded) -> str:
    """A short model name for tables: the reference model's name, the factory or the file stem."""
    kwargs = loaded.metadata.get("factory_kwargs") or {}
    if loaded.metadata.get("factory") == "models:build_model" and "name" in kwargs:
        return f"{kwargs['name']}-{kwargs.get('preset', 'small')}"
    if loaded.metadata.get("factory"):
        return loaded.metadata["factory"].rpartition(":")[2]
    return Path(loaded.description.split(" ")[0]).stem



def metrics_text(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in ("auc", "logloss")) or "-"


def run_report(summary: dict, plan, latency_table: str) -> str:
    rows = plan_rows(plan)
    quality = [[stage, metrics_text(summary[key]["eval"]), summary[key]["steps"]]
               for stage, key in (("dense", "dense_training"), ("compact", "compact_training")) if key in summary]
    return "\n".join([
        "# amgp-compress run", "", f"Model: {summary['model']}", "",
        "## Pruning", "", stats_line(plan.stats), "", render_table(rows, ["group", "name", "kind", "before", "after"]),
        "", "## Quality (held-out 10% of the data)", "",
        render_table(quality, ["model", "metrics", "training steps"]) if quality else "no training",
        "", "## Latency", "", latency_table, "",
        "Files: dense.pt2/.safetensors, compact.pt2/.safetensors (+ plan.json), dense.onnx, compact.onnx, "
        "latency.json, groups.json, summary.json.", ""])


# -- commands --------------------------------------------------------------------------------------------
def analyze(args: argparse.Namespace) -> int:
    from amgp_fx.groups.analyze import analyze as analyze_model

    loaded = load(args)
    graph = analyze_model(loaded.module, loaded.example_inputs)
    rows = graph.table(prunable_only=args.prunable_only)
    print(render_table([[r["id"], r["name"], r["kind"], f"{r['size']}", "yes" if r["prunable"] else "no",
                   r["reason"][:70]] for r in rows], ["group", "name", "kind", "size", "prunable", "why not"]))
    prunable = graph.prunable_groups()
    print(f"{len(graph.groups)} groups, {len(prunable)} prunable ({sum(g.full_size for g in prunable)} channels); "
          f"ops without a rule: {len(graph.unknown_ops)}")
    if args.json:
        write_json(Path(args.json), {"version": 1, "model": loaded.description, "groups": graph.table(),
                                      "unknown_ops": sorted({u.target for u in graph.unknown_ops})})
        if not args.quiet:
            print(f"wrote {Path(args.json).resolve()}")
    return 0


def prune(args: argparse.Namespace) -> int:
    from amgp_fx.groups.analyze import analyze as analyze_model

    request = prune_request(args)
    check_source(args)
    progress = Progress(3, args.quiet)
    with OutputDir(args.output_dir) as out:
        progress.stage("loading and analysing the model")
        loaded = load(args)
        graph = analyze_model(loaded.module, loaded.example_inputs)
        progress.done(f"{len(graph.prunable_groups())} prunable groups")
        progress.stage("pruning")
        plan = prune_graph(graph, request, args.apply_plan)
        progress.done(stats_line(plan.stats))
        progress.stage("saving")
        save_model(out, "pruned", graph.module, loaded.example_inputs, model_metadata(loaded, plan))
        plan.save(out.file("plan.json"))
        columns = ("id", "name", "kind", "before", "after")
        write_json(out.file("prune_report.json"), {"version": 1, "model": loaded.description, **plan.stats, "groups": [
            dict(zip(columns, row, strict=True)) for row in plan_rows(plan)]})
        progress.done()
    print(render_table(plan_rows(plan), ["group", "name", "kind", "before", "after"]))
    report_written(out, args.quiet)
    return 0


def export(args: argparse.Namespace) -> int:
    check_source(args)
    with OutputDir(args.output_dir) as out:
        loaded = load(args)
        report = export_model(loaded.module, loaded.example_inputs, out.file("model.onnx"), args)
        write_json(out.file("export_report.json"), report.to_dict())
    if not args.quiet:
        diff = "skipped" if report.max_abs_diff is None else f"max |ort - torch| {report.max_abs_diff:.2e}"
        print(f"ONNX opset {report.opset}, {report.onnx_bytes:,} bytes, parity {diff}")
    report_written(out, args.quiet)
    return 0


def export_model(module, inputs, path: Path, args: argparse.Namespace):
    from amgp_fx.export import export_onnx

    return export_onnx(module, inputs, path, dynamic_batch=not args.static_batch, opset=args.opset,
                       parity=not args.no_parity, atol=args.atol, rtol=args.rtol,
                       passes=() if getattr(args, "no_passes", False) else None)


def bench(args: argparse.Namespace) -> int:
    from amgp_fx.cli_pipeline import run_benchmarks

    return run_benchmarks(args)


def train(args: argparse.Namespace) -> int:
    from amgp_fx.cli_pipeline import run_training

    return run_training(args)


def run(args: argparse.Namespace) -> int:
    from amgp_fx.cli_pipeline import run_pipeline

    return run_pipeline(args)


COMMANDS = {"analyze": analyze, "prune": prune, "train": train, "export": export, "bench": bench, "run": run}

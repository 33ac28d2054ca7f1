"""Steps the subcommands share: the model options, loading, pruning requests, saving, export.

Nothing here imports torch at module level: :func:`precheck` runs before torch is loaded.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from amgp_fx.cli.output import OutputDir, check_output_path, check_overwrite
from amgp_fx.cli.values import (check_batch, check_path_name, parse_batch_sizes, parse_factory_kwargs,
                                parse_group_ratio, parse_ratio)
from amgp_fx.devices import parse_device
from amgp_fx.errors import ModelFileError, PruneRequestError, TrainingFailure, UsageError

__all__ = ["args_for_export", "check_source", "export_model", "load", "load_device_constants", "model_label",
           "model_metadata", "precheck", "prune_graph", "prune_request", "runtime_devices", "save_model", "stats_line"]


RUNTIMES = ("ort", "torch-eager", "torch-compile")


def _source(args: argparse.Namespace, default_model: str | None = None) -> tuple[str | None, dict]:
    if args.model_name and args.factory:
        raise UsageError("--model and --factory both name the model's code", "Pass only one of them")
    if args.factory_kwargs and not args.factory:
        raise UsageError("--factory-kwargs needs --factory", "Add --factory package.module:function")
    name = args.model_name or (default_model if not args.factory and not args.model_file else None)
    if name:
        return "amgp_fx.models:build_model", {"name": name, "preset": args.preset}
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
    loaded = load_model(args.model_file, factory=factory, factory_kwargs=kwargs if factory else None, plan=plan,
                        trust_pickle=args.trust_pickle, input_shape=args.input_shape,
                        example_inputs=args.example_inputs, batch_size=args.batch_size)
    if getattr(args, "input_map", None) is None and loaded.metadata.get("input_map"):
        args.input_map = loaded.metadata["input_map"]  # saved by train/prune/run with the model
    for line in loaded.notes:
        note(args, line)
    return loaded


def note(args: argparse.Namespace, text: str) -> None:
    """``amgp-compress: note: ...`` on stderr (what the CLI decided for the user), unless --quiet."""
    import sys

    if not getattr(args, "quiet", False):
        from amgp_fx.cli.progress import Progress

        Progress.make_room()  # a stage line open on the same stream ends first
        print(f"amgp-compress: note: {text}", file=sys.__stderr__, flush=True)


def prune_request(args: argparse.Namespace) -> dict[str, Any]:
    """Validated pruning options (before any heavy import)."""
    cap = float(args.max_layer_ratio) if _is_number(args.max_layer_ratio) else -1.0
    if not 0.0 < cap <= 1.0:
        raise PruneRequestError(f"--max-layer-ratio {args.max_layer_ratio!r} is outside (0, 1]",
                                "Pass a fraction such as 0.9")
    flops_target = parse_ratio(args.flops_target, "FLOPs target") if args.flops_target is not None else None
    latency_text = getattr(args, "latency_target", None)  # prune only (run has no latency options)
    latency_target = parse_ratio(latency_text, "latency target") if latency_text is not None else None
    targeted = flops_target is not None or latency_target is not None
    request = dict(ratio=parse_ratio(args.ratio) if args.ratio is not None and not targeted else None,
                   flops_target=flops_target,
                   group_ratios=dict(parse_group_ratio(t) for t in args.group_ratio) or None,
                   groups=_split(args.groups), kinds=_split(args.kinds), criterion=args.criterion,
                   multiple=args.multiple, max_layer_ratio=cap, policy=getattr(args, "policy", "auto"),
                   allow_empty=getattr(args, "allow_empty_members", False))
    if latency_target is not None:
        constants_file = getattr(args, "device_constants", None)
        request.update(latency_target=latency_target, latency_batch=getattr(args, "latency_batch", None),
                       latency_constants=load_device_constants(constants_file) if constants_file else None)
    else:
        for option in ("device_constants", "latency_batch"):
            if getattr(args, option, None) is not None:
                flag = "--" + option.replace("_", "-")
                raise UsageError(f"{flag} is used only with --latency-target", f"Add --latency-target F or drop {flag}")
    if request["ratio"] is None and not targeted and not request["group_ratios"] \
            and not getattr(args, "apply_plan", None):
        raise UsageError("nothing to prune", "Pass --ratio, --flops-target, --latency-target, --group-ratio or "
                         "--apply-plan" if hasattr(args, "latency_target") else
                         "Pass --ratio, --flops-target, --group-ratio or --apply-plan")
    return request


def load_device_constants(path: str):
    """The :class:`amgp_fx.latency_model.DeviceConstants` in a JSON file: a ``DeviceConstants.to_dict()``
    object (what ``tools/bench_onnx.py --constants`` reads), or a results file of that script (its
    ``metadata.device_constants``). JSON only: nothing is unpickled.

    Raises:
        UsageError: the file is missing, not JSON, or not a complete set of positive constants.
    """
    from amgp_fx.fileio import JsonFileError, read_json_file
    from amgp_fx.latency_model import DeviceConstants

    fix = ("Pass a DeviceConstants JSON (DeviceConstants.to_dict() of amgp_fx.latency_model.calibrate, or a "
           "tools/bench_onnx.py results file), or leave --device-constants out to calibrate on this machine")
    if not Path(path).is_file():
        raise UsageError(f"device constants file {path} does not exist", fix)
    try:
        data = read_json_file(path, "device constants file")
    except JsonFileError as error:
        raise UsageError(str(error), fix) from None
    if isinstance(data, dict) and "gemm_flops_per_s" not in data and isinstance(data.get("metadata"), dict):
        data = data["metadata"].get("device_constants")  # a tools/bench_onnx.py results file
    if not isinstance(data, dict):
        raise UsageError(f"device constants file {path} holds no DeviceConstants object", fix)
    try:
        return DeviceConstants.from_dict(data)
    except (TypeError, ValueError, AttributeError) as error:
        detail = " ".join(str(error).split(", got ")[0].split())[:160]  # not the repr of every field
        raise UsageError(f"device constants file {path} is not a valid set of constants ({type(error).__name__}: "
                         f"{detail})", fix) from None


def _is_number(text: Any) -> bool:
    try:
        return float(text) == float(text)
    except (TypeError, ValueError):
        return False


def _split(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] or None if text else None


def model_metadata(loaded, plan=None, input_map: str | None = None) -> dict:
    meta = {key: loaded.metadata[key] for key in ("factory", "factory_kwargs", "input_map") if key in loaded.metadata}
    if input_map:
        meta["input_map"] = input_map
    return {**meta, "source": loaded.description, **({"plan": plan.to_dict()} if plan is not None else {})}


def save_model(out: OutputDir, stem: str, module, inputs, metadata: dict, static_batch: int | None = None) -> None:
    """``stem.pt2`` (a dynamic batch, or the static batch the model was loaded with) and ``stem.safetensors``."""
    from amgp_fx.model_io import save_pt2, save_state_dict

    save_pt2(module, inputs, out.file(f"{stem}.pt2"), metadata, dynamic_batch=static_batch is None)
    save_state_dict(module, out.file(f"{stem}.safetensors"), metadata)


def prune_graph(graph, request: dict, plan_file: str | None):
    from amgp_fx.pruning_plan import PruningPlan, apply_plan, count_parameters, prune_

    if plan_file:
        plan = PruningPlan.load(plan_file)
        before = count_parameters(graph.module)
        apply_plan(graph, plan)
        return PruningPlan(plan.groups, plan.criterion, plan.ratio, plan.flops_target, plan.multiple,
                           plan.max_layer_ratio, {"params_before": before,
                                                  "params_after": count_parameters(graph.module)},
                           latency_target=plan.latency_target)
    options = {k: v for k, v in request.items() if k != "ratio"}
    args = graph.traced.args
    if args and isinstance(args[0], torch_tensor_type()):
        return prune_(graph, request["ratio"], **options)[0]
    # the model's first input is not a tensor (a dict, a jagged pytree): count the FLOPs here, where
    # the batch is read off the inputs' tensors
    import dataclasses

    from amgp_fx.bench import count_forward_flops
    from amgp_fx.model_inputs import batch_size_of

    before = count_forward_flops(graph.module, args)
    plan = prune_(graph, request["ratio"], measure_flops=False, **options)[0]
    return dataclasses.replace(plan, stats={**plan.stats, "flops_before": before, "flops_batch": batch_size_of(args),
                                            "flops_after": count_forward_flops(graph.module, args)})


def torch_tensor_type():
    import torch

    return torch.Tensor


def plan_rows(plan) -> list[list]:
    return [[g.id, g.name, g.kind, g.full_size, len(g.keep)] for g in plan.groups]


def member_rows(plan) -> list[list]:
    """One row per member tensor dim of each pruned group: its size before and after the plan."""
    return [[g.id, m["tensor"], m["dim"], m["role"], m["before"], m["after"]] for g in plan.groups for m in g.members]


def stats_line(stats: dict) -> str:
    """``parameters 1,000 -> 400 (0.40x)``: after as a fraction of before, written as every report writes it."""
    from amgp_fx.report_format import of_dense

    parts = []
    for key, label in (("params", "parameters"), ("flops", "forward FLOPs")):
        if f"{key}_before" in stats and f"{key}_after" in stats and stats[f"{key}_before"]:
            ratio = stats[f"{key}_after"] / stats[f"{key}_before"]
            parts.append(f"{label} {stats[f'{key}_before']:,} -> {stats[f'{key}_after']:,} ({of_dense(ratio)})")
    if stats.get("latency_before_s") and "latency_after_s" in stats:
        ratio = stats["latency_after_s"] / stats["latency_before_s"]
        parts.append(f"predicted latency at batch {stats.get('latency_batch', '?')} "
                     f"{stats['latency_before_s'] * 1e3:.3g} ms -> {stats['latency_after_s'] * 1e3:.3g} ms "
                     f"({of_dense(ratio)})")
    return "; ".join(parts)


def precheck(args: argparse.Namespace) -> None:
    """Checks that need no torch, run before it is imported so that these mistakes fail at once:
    the file names, the model options, the model file, the numeric options and the output folder
    (and whether it holds an earlier command's results)."""
    _check_path_names(args)
    _check_batches(args)
    if args.command == "bench":
        for path in args.onnx:
            if not Path(path).is_file():
                raise UsageError(f"ONNX file {path} does not exist", "Check the path")
        for path in [*args.onnx, *([args.model_file] if str(args.model_file or "").endswith(".onnx") else [])]:
            check_onnx_file(Path(path))
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
        check_overwrite(args.command, Path(args.output_dir), getattr(args, "force", False),
                        getattr(args, "resume", False))
    if getattr(args, "json", None):
        check_output_path(Path(args.json).parent)


_PATH_OPTIONS = (("model_file", "MODEL"), ("data", "--data"), ("columns", "--columns"),
                 ("device_constants", "--device-constants"),
                 ("example_inputs", "--example-inputs"), ("plan", "--plan"), ("apply_plan", "--apply-plan"),
                 ("json", "--json"), ("output_dir", "--output-dir"), ("factory", "--factory"))


def _check_path_names(args: argparse.Namespace) -> None:
    """Over-long names fail here with the option's name, not as an OSError deep inside a reader."""
    for attribute, option in _PATH_OPTIONS:
        value = getattr(args, attribute, None)
        if value and not (attribute == "data" and value == "synthetic"):
            check_path_name(str(value).rpartition(":")[0] if attribute == "factory" and ":" in str(value) else value,
                            option)
    for value in getattr(args, "onnx", None) or []:
        check_path_name(value, "--onnx")


def _check_batches(args: argparse.Namespace) -> None:
    """Batch sizes that would ask for terabytes fail at once (exit 2) instead of as an allocation."""
    for attribute, option in (("batch_size", "--batch-size"), ("train_batch", "--train-batch"),
                              ("latency_batch", "--latency-batch")):
        if getattr(args, attribute, None) is not None:
            check_batch(getattr(args, attribute), option)
    if getattr(args, "batch_sizes", None):
        parse_batch_sizes(args.batch_sizes)  # checks each against MAX_BATCH


def check_onnx_file(path: Path) -> None:
    """A file ONNX Runtime could load: parsed as an ONNX model (weights stored beside it are not read).

    Raises:
        ModelFileError: it does not parse, or parses to an empty model (what random bytes often give).
    """
    import onnx

    fix = "Pass a file written by 'amgp-compress export' or torch.onnx.export, or export it again"
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - DecodeError and friends: not an ONNX file
        raise ModelFileError(f"{path} is not a readable ONNX model ({type(error).__name__}: "
                             f"{' '.join(str(error).split())[:100]})", fix) from None
    if not model.ir_version or not model.graph.node or not model.graph.output:
        raise ModelFileError(f"{path} is not a readable ONNX model (it parses to an empty graph)", fix)


def check_nproc(nproc: int, batch: int) -> None:
    """``--nproc`` processes must split ``--train-batch`` (the global batch) evenly."""
    if nproc < 1:
        raise UsageError(f"--nproc {nproc} must be at least 1", "Pass the number of training processes, e.g. --nproc 2")
    if batch % nproc:
        raise UsageError(f"--train-batch {batch} does not split evenly over --nproc {nproc} processes",
                         f"Pass a --train-batch divisible by {nproc}, e.g. {max(nproc, batch // nproc * nproc)}")


def raise_if_diverged(module, result=None) -> None:
    """TrainingFailure (exit 11) when training left NaN or infinite weights, or its last logged loss
    is not finite; a resumed run that had no steps left (no loss of its own) is not a divergence."""
    import math

    import torch

    bad = next((name for name, p in module.named_parameters() if p.dtype.is_floating_point
                and not bool(torch.isfinite(p.detach()).all())), None)
    if bad is not None:
        raise TrainingFailure(f"training diverged: parameter {bad} holds NaN or infinite values",
                              "Lower --lr or check the data")
    if result is None:
        return
    losses = [r.get("loss") for r in result.history if r.get("kind") == "train"]
    last = losses[-1] if losses else result.train_loss
    if last is None or not math.isfinite(last):
        raise TrainingFailure(f"training diverged: the loss is {last if last is not None else 'nan'} at step "
                              f"{result.step}", "Lower --lr or check the data")


def model_label(loaded) -> str:
    """A short model name for tables: the reference model's name, the factory or the file stem."""
    kwargs = loaded.metadata.get("factory_kwargs") or {}
    reference = loaded.metadata.get("factory") in ("amgp_fx.models:build_model", "models:build_model")  # old files
    if reference and "name" in kwargs:
        return f"{kwargs['name']}-{kwargs.get('preset', 'small')}"
    if loaded.metadata.get("factory"):
        return loaded.metadata["factory"].rpartition(":")[2]
    return Path(loaded.description.split(" ")[0]).stem


def input_line(loaded) -> str:
    """``inputs: dense=float32[B,13];user=int64[B]:0..100 (static batch 4)``: what the model takes."""
    from amgp_fx.model_inputs import format_input_spec, spec_of

    batch = f" (static batch {loaded.static_batch})" if loaded.static_batch else ""
    return f"inputs: {format_input_spec(spec_of(loaded.example_inputs))}{batch}"


def metrics_text(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in ("auc", "logloss")) or "-"


def export_model(module, inputs, path: Path, args: argparse.Namespace, static_batch: int | None = None,
                 progress=None):
    """ONNX export of ``module`` on ``inputs`` (positional arguments, any pytree of tensors); the batch
    is dynamic unless --static-batch or the model itself has a static batch. ``progress`` (a
    :class:`amgp_fx.cli.progress.Progress`) shows the export's stages on its stage line."""
    from amgp_fx.export import export_onnx

    options = dict(dynamic_batch=not args.static_batch and static_batch is None, opset=args.opset,
                   parity=not args.no_parity, atol=args.atol, rtol=args.rtol,
                   passes=() if getattr(args, "no_passes", False) else None,
                   on_stage=progress.part if progress is not None else None)
    try:
        return export_onnx(module, inputs, path, **options)
    except TypeError as error:  # an export_onnx that takes positional tensors only: feed it the leaves
        if "tuple of tensors" not in str(error):
            raise
        from amgp_fx.batch_inputs import FlatInputs

        flat = FlatInputs(module, inputs)
        return export_onnx(flat, flat.leaves(inputs), path, **options)


def args_for_export(**overrides) -> argparse.Namespace:
    """Export options with the CLI defaults (for exports inside bench and run)."""
    return argparse.Namespace(**{"static_batch": False, "opset": 18, "no_parity": False, "atol": None,
                                 "rtol": None, **overrides})


def runtime_devices(device: str) -> tuple[str, str]:
    """(ORT provider, torch device) for --device (``devices.resolve_device`` decides the torch one)."""
    from amgp_fx.bench import cuda_provider_available
    from amgp_fx.devices import resolve_device

    torch_device = resolve_device(device)
    if torch_device == "cpu":
        return "cpu", "cpu"
    return ("cuda" if cuda_provider_available() else "cpu"), torch_device

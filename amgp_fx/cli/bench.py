"""``amgp-compress bench``: latency of ONNX Runtime and/or PyTorch over a sweep of batch sizes.

Also the timing step ``run`` shares (:func:`bench_variant`).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from amgp_fx.cli.common import args_for_export, export_model, load, model_label, note, runtime_devices
from amgp_fx.cli.output import OutputDir, Progress, written_count
from amgp_fx.cli.plots import save_latency_plot
from amgp_fx.cli.values import parse_batch_sizes
from amgp_fx.errors import UsageError
from amgp_fx.model_inputs import make_inputs, resize_batch

__all__ = ["bench_variant", "command", "save_latency"]


_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
                "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}


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


def timed_batch_sizes(args: argparse.Namespace, static_batch: int | None) -> tuple[int, ...]:
    """--batch-sizes, or only the model's static batch (said once, as a note)."""
    sizes = parse_batch_sizes(args.batch_sizes)
    if static_batch is None:
        return sizes
    if sizes != (static_batch,) and not getattr(args, "_static_noted", False):
        note(args, f"timing batch {static_batch} only, the model's static batch (--batch-sizes "
                   f"{','.join(map(str, sizes))} left out)")
        args._static_noted = True
    return (static_batch,)


def _serving(args: argparse.Namespace) -> dict:
    """The serving settings of ``bench`` (``run`` has none of these flags: fp32, ORT defaults)."""
    return {"precision": getattr(args, "precision", "fp32"), "cuda_graph": getattr(args, "cuda_graphs", False),
            "opt_level": getattr(args, "ort_opt_level", "all"), "tf32": getattr(args, "tf32", False)}


def bench_variant(onnx_path, module, inputs, name: str, variant: str, args, runtimes,
                  static_batch: int | None = None, precision_reports: list | None = None) -> list:
    """Latency records of one model: ORT on ``onnx_path`` and/or PyTorch on ``module``. ``inputs``
    are the model's positional arguments (any pytree of tensors); ONNX Runtime and the torch
    timing loop get their tensors flat (:class:`amgp_fx.batch_inputs.FlatInputs`).

    With ``--precision fp16/bf16`` both sides run in that format (the ONNX file converted by
    :func:`amgp_fx.export_precision.convert_precision`, parity-checked, its report appended to
    ``precision_reports``; torch on a cast copy) and the variant is labelled ``NAME-fp16``."""
    from amgp_fx.batch_inputs import FlatInputs
    from amgp_fx.bench import benchmark_onnx, benchmark_torch, count_forward_flops
    from amgp_fx.export_precision import cast_module

    serving = _serving(args)
    precision = serving["precision"]
    sizes = timed_batch_sizes(args, static_batch)
    provider, device = runtime_devices(args.device)
    flat = inputs is not None and module is not None and not all(isinstance(x, torch.Tensor) for x in inputs)
    if inputs is not None:
        def factory(b):  # the arguments as the model takes them (ONNX Runtime finds each input by its path)
            return resize_batch(inputs, b)
    else:
        specs = _onnx_specs(onnx_path) if not args.input_shape else None
        from amgp_fx.model_inputs import parse_input_spec

        specs = specs or parse_input_spec(args.input_shape)

        def factory(b):
            return make_inputs(specs, b)

    def torch_factory(b):  # the torch timing loop and FLOP counter take flat tensors
        return FlatInputs.leaves(factory(b)) if flat else factory(b)

    fp32_module = module
    if flat:
        module = FlatInputs(module, inputs)
    flops = (lambda b: count_forward_flops(module, torch_factory(b))) if module is not None else None
    label = variant if precision == "fp32" else f"{variant}-{precision}"
    records = []
    home = next(module.parameters(), torch.empty(0)).device if module is not None else None
    timed = cast_module(module, precision) if module is not None else None
    for mode in ("eager", "compile"):  # before ONNX Runtime, whose spinning threads slow torch down for a while
        if module is not None and f"torch-{mode}" in runtimes:
            records += benchmark_torch(timed, torch_factory, sizes, mode=mode, device=device, warmup=args.warmup,
                                       iters=args.iters, model_name=name, variant=label, flops=flops,
                                       tf32=serving["tf32"])
    if module is not None:
        module.to(home)  # benchmark_torch moved it to the timing device; analysis and saving use the CPU inputs
    if onnx_path is not None and "ort" in runtimes:
        with tempfile.TemporaryDirectory() as scratch:
            timed_path = onnx_path
            if precision != "fp32":
                timed_path = _convert(onnx_path, precision, fp32_module, factory, provider, scratch,
                                      precision_reports)
            try:
                records += benchmark_onnx(timed_path, factory, sizes, provider=provider, warmup=args.warmup,
                                          iters=args.iters, model=name, variant=label, flops=flops,
                                          cuda_graph=serving["cuda_graph"], use_tf32=serving["tf32"],
                                          opt_level=serving["opt_level"])
            except Exception as error:  # noqa: BLE001 - onnxruntime's errors are not RuntimeErrors
                if not serving["cuda_graph"]:
                    raise
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise UsageError(f"ONNX Runtime could not run {Path(onnx_path).name} with CUDA graphs ({first})",
                                 "Export it with 'amgp-compress export --static-batch --batch-size N' and bench "
                                 "that file, or drop --cuda-graphs") from error
    return records


def _convert(onnx_path, precision: str, module, factory, provider: str, scratch: str, reports: list | None) -> str:
    """The ``precision`` copy of ``onnx_path`` in ``scratch``, parity-checked at batch 64 on ``provider``."""
    from amgp_fx.export_precision import convert_precision

    target = Path(scratch) / f"{Path(onnx_path).stem}-{precision}.onnx"
    report = convert_precision(onnx_path, precision, module, factory(64), path=target, provider=provider)
    if reports is not None:
        reports.append({**report.to_dict(), "path": f"(temporary) {target.name}", "source": str(onnx_path)})
    return str(target)


def _labels(paths: list[str]) -> list[str]:
    """A distinct label per file: its stem, or as many parent folders as make it unique
    (``dense/model``, ``compact/model``)."""
    parts = [Path(p).with_suffix("").parts for p in paths]
    for depth in range(1, max((len(p) for p in parts), default=1) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{label}#{i + 1}" for i, label in enumerate(labels)]


def _runtimes(text: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if text is None:
        return default
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [r for r in chosen if r not in ("ort", "torch-eager", "torch-compile")]
    if unknown or not chosen:
        raise UsageError(f"unknown runtime {', '.join(unknown) or text!r}",
                         "Choose from ort, torch-eager, torch-compile")
    return chosen


def _check_serving(args: argparse.Namespace, runtimes) -> None:
    """Refuse serving settings this machine or these runtimes cannot honour, before any work."""
    if args.cuda_graphs:
        provider, _ = runtime_devices(args.device)
        if provider != "cuda":
            raise UsageError("--cuda-graphs needs ONNX Runtime's CUDA provider, and this run uses the CPU one "
                             f"(--device {args.device}; GPU and onnxruntime-gpu needed)",
                             "Drop --cuda-graphs, or run on a GPU machine with onnxruntime-gpu and --device cuda")
        if "ort" not in runtimes:
            raise UsageError("--cuda-graphs is an ONNX Runtime setting and --runtimes has no ort",
                             "Add ort to --runtimes, or drop --cuda-graphs")


def save_latency(out: OutputDir, records, baseline: str) -> str:
    from amgp_fx.latency_report import format_table, save_records

    save_records(records, out.file("latency.json"))
    table = format_table(records, baseline_variant=baseline)
    out.file("latency.md").write_text(table + "\n", encoding="utf-8")
    return table


def command(args: argparse.Namespace) -> int:
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
    _check_serving(args, runtimes)
    records, precision_reports = [], []
    scratch_export = has_model and "ort" in runtimes and not onnx_files
    progress = Progress(has_model + scratch_export + max(len(onnx_files), 1), args.quiet)
    with OutputDir(args.output_dir) as out, tempfile.TemporaryDirectory() as scratch:
        loaded = None
        if has_model:
            args.model_file = None if model_file in onnx_files else model_file
            progress.stage("loading the model")
            loaded = load(args)
            progress.done(loaded.description)
            if scratch_export:
                # a scratch file to time (checked, not parity-tested: `export` is for files you keep)
                progress.stage("exporting a scratch ONNX file to time")
                onnx_files = [str(export_model(loaded.module, loaded.example_inputs, Path(scratch) / "model.onnx",
                                               args_for_export(no_parity=True), loaded.static_batch,
                                               progress=progress).path)]
                progress.done()
        # one model column for all rows (speedups compare rows of one model), one variant per file
        name = model_label(loaded) if loaded else (Path(onnx_files[0]).stem if len(onnx_files) == 1 else "onnx")
        labels = _labels(onnx_files) if len(onnx_files) > 1 else ["model"]
        if args.variant and len(onnx_files) > 1:
            raise UsageError("--variant labels one model, and several --onnx files were given",
                             "Drop --variant: each file is labelled by its name")
        for index, path in enumerate(onnx_files or [None]):
            variant = args.variant or labels[index]
            module = loaded.module if loaded is not None and index == 0 else None
            inputs = loaded.example_inputs if loaded is not None else None
            progress.stage(f"timing {variant} ({', '.join(runtimes)}) at batch sizes {args.batch_sizes}")
            records += bench_variant(path, module, inputs, name, variant, args, runtimes,
                                     loaded.static_batch if loaded is not None else None, precision_reports)
            progress.done()
        table = save_latency(out, records, records[0].variant)
        save_latency_plot(out, records)  # latency.png, with matplotlib (the plot extra)
        if precision_reports:
            import json

            out.file("precision.json").write_text(json.dumps(precision_reports, indent=1) + "\n", encoding="utf-8")
    print(table)
    written_count(out, args.quiet)
    return 0

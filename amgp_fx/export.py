"""Export a model (eager, or a pruned ``torch.export`` GraphModule) to a checked, validated ONNX file.

Path: inference mode (flags off; training literals flipped on a graph copy) -> ``torch.export`` (non-strict,
dim 0 dynamic) -> FX passes (:mod:`amgp_fx.passes`, each output-checked) -> ``torch.onnx.export(dynamo=True)``
-> temp folder beside ``path`` -> ``onnx.checker`` (by path) -> ONNX Runtime parity at B, B + 3 and 1 (or the
smallest batch the model runs at) -> move into place. Any failure leaves nothing at ``path`` (an older file
there survives).

Inputs may be any pytree of tensors (dicts, a KeyedJaggedTensor, nested tuples): they are flattened into
named ONNX inputs (``inputs.user_id``, ``sparse_features.values``); their pytree paths and the tree go
into the report and into the file's metadata (:mod:`amgp_fx.input_tree`), which the benchmark reads.

Tolerance, stated up front: ONNX Runtime fp32 vs PyTorch fp32 agree within ``|ort - torch| <= atol +
rtol * |torch|`` with :data:`DEFAULT_ATOL` / :data:`DEFAULT_RTOL`. On CUDA, ONNX Runtime runs MatMul/Gemm
in TF32 by default; parity therefore turns TF32 off (``use_tf32=False``) unless asked, and TF32 runs
use :data:`TF32_ATOL` / :data:`TF32_RTOL` (TF32 keeps 10 mantissa bits, about 1e-3 relative per product).

Dim letters: B batch. ONNX Runtime is imported only inside functions that need it.

Example:
    >>> import torch, tempfile, os
    >>> model = torch.nn.Sequential(torch.nn.Linear(13, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     report = export_onnx(model, (torch.randn(8, 13),), os.path.join(folder, "mlp.onnx"))
    ...     report.max_abs_diff <= report.atol and os.path.exists(report.path)
    True
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import fx

from amgp_fx.bench import cuda_provider_available, make_ort_session
from amgp_fx.input_tree import METADATA_KEY, FlatArgs, as_args, flatten_args, metadata_value, tree_text, unflatten
from amgp_fx.passes import ExportPass, PassRegistry, apply_passes, flatten_outputs
from amgp_fx.passes.inference_mode import eval_mode, inference_graph
from amgp_fx.tracing import unguarded_module

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_ATOL", "DEFAULT_OPSET", "DEFAULT_RTOL", "TF32_ATOL", "TF32_RTOL", "ExportError", "ExportReport",
           "ParityError", "export_onnx"]

#: torchlib (torch.onnx's op library) is written for opset 18 in torch 2.11 and 2.13 alike, so 18
#: needs no version-converter pass (2.13 defaults to 20 and converts); it has ScatterElements max
#: reduction and axes-as-input reductions, and every onnxruntime >= 1.14 runs it on CPU and CUDA.
DEFAULT_OPSET = 18
DEFAULT_ATOL, DEFAULT_RTOL = 1e-4, 1e-3  # fp32 ORT vs fp32 PyTorch
TF32_ATOL, TF32_RTOL = 1e-2, 1e-2
EXTERNAL_DATA_THRESHOLD_BYTES = int(1.5 * 2**30)  # protobuf caps a file at 2 GiB: weights go to <name>.data
BATCH_DIM_NAME = "batch"


class ExportError(RuntimeError):
    """Export failed; the message names the stage and the fix. Nothing was left at the target path."""


class ParityError(ExportError):
    """ONNX Runtime and PyTorch outputs differ beyond tolerance (the file was not moved into place)."""

    def __init__(self, message: str, *, output_name: str, batch_size: int, max_abs_diff: float,
                 max_rel_diff: float, atol: float, rtol: float) -> None:
        super().__init__(message)
        self.output_name, self.batch_size, self.atol, self.rtol = output_name, batch_size, atol, rtol
        self.max_abs_diff, self.max_rel_diff = max_abs_diff, max_rel_diff


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote and how it was validated."""

    path: str
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    onnx_bytes: int
    external_data_bytes: int  # 0 when the weights are inside the .onnx file
    dynamic_batch: bool
    passes_applied: tuple[str, ...]
    max_abs_diff: float | None  # None when parity=False
    max_rel_diff: float | None
    atol: float
    rtol: float
    parity_provider: str | None
    parity_batch_sizes: tuple[int, ...]
    use_tf32: bool
    exporter: str
    seconds: float
    input_paths: tuple[str, ...] = ()  # pytree path of each ONNX input in the example arguments
    input_tree: str = ""  # the arguments' tree structure (pytree's serialised TreeSpec)
    parity_skipped: tuple[str, ...] = ()  # batch sizes left out of parity, and why

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_inputs(model: torch.nn.Module, example_inputs) -> FlatArgs:
    """The example arguments flattened into named tensors (a tuple of tensors, dicts of tensors,
    registered pytree nodes such as a KeyedJaggedTensor, nested)."""
    args = as_args(example_inputs)
    try:
        flat = flatten_args(args, _argument_names(model))
    except TypeError as error:
        raise TypeError(f"{error}; got {type(example_inputs).__name__}, e.g. (dense (B, 13), sparse (B, 26)) "
                        "or ({'user_id': (B,), ...},)") from None
    if not flat.leaves:
        raise TypeError("example_inputs has no tensors; pass the model's positional arguments, e.g. (dense (B, 13),)")
    return flat


class _FlatCall(torch.nn.Module):
    """``model`` called with flat tensors: rebuilds the argument pytree first (ONNX inputs are flat)."""

    def __init__(self, model: torch.nn.Module, spec) -> None:
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, *leaves: torch.Tensor):
        return self.model(*unflatten(self.spec, leaves))


def _batch_setup(inputs: tuple[torch.Tensor, ...], dynamic_batch: bool):
    """``(inputs, B, dynamic_shapes, parity batch sizes)``. B is dim 0 of the first input; inputs of that
    length share the dynamic dim ``batch``; other lengths (jagged ids, N != B) get ``Dim.AUTO``."""
    if not inputs or inputs[0].dim() == 0:
        raise ExportError("the first example input must be batch-major, e.g. dense (B, 13)")
    batch = int(inputs[0].shape[0])
    batch_major = all(x.dim() and x.shape[0] == batch for x in inputs)
    if not dynamic_batch:
        return inputs, batch, None, (batch,)
    if batch < 2 and not batch_major:
        raise ExportError("torch.export specialises a dynamic dim seen as 1: pass example inputs with B >= 2")
    if batch < 2:
        inputs, batch = _resize_batch(inputs, 2), 2
    batch_dim = torch.export.Dim(BATCH_DIM_NAME)
    shapes = tuple(({0: batch_dim} if x.shape[0] == batch else {0: torch.export.Dim.AUTO}) if x.dim() else None
                   for x in inputs)
    # other batch sizes need inputs that can be cut to size: only when every input is batch-major
    return inputs, batch, shapes, tuple(dict.fromkeys((batch, batch + 3, 1))) if batch_major else (batch,)


def _resize_batch(inputs: Sequence[torch.Tensor], size: int) -> tuple[torch.Tensor, ...]:
    """Rows ``i % B`` of every input: valid ids stay valid. (B, ...) -> (size, ...)."""
    return tuple(x[torch.arange(size, device=x.device) % x.shape[0]] for x in inputs)


def _argument_names(model: torch.nn.Module) -> list[str]:
    """Names of forward's positional parameters (a torch.export GraphModule's are in its signature)."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    try:
        return [p.name for p in inspect.signature(model.forward).parameters.values() if p.kind in kinds]
    except (TypeError, ValueError):
        return []


def _output_names(model: torch.nn.Module, count: int) -> list[str]:
    annotation = getattr(inspect.signature(model.forward), "return_annotation", None)
    fields = getattr(annotation, "_fields", ())  # a NamedTuple return type names its outputs
    defaults = ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
    return list(fields) if len(fields) == count else defaults


def _to_inference_graph(model, flat: FlatArgs, inputs, dynamic_shapes) -> tuple[fx.GraphModule, int]:
    """An eval-mode GraphModule taking the flat ``inputs``, sharing ``model``'s parameters, and the
    number of training literals flipped."""
    base, flipped = inference_graph(model) if isinstance(model, fx.GraphModule) else (model, 0)
    if flat.is_flat and isinstance(base, fx.GraphModule):
        return base, flipped
    target = base if flat.is_flat else _FlatCall(base, flat.spec)
    if target is not base and dynamic_shapes is not None:
        dynamic_shapes = (dynamic_shapes,)  # forward(*leaves): one var-positional parameter
    try:
        exported = torch.export.export(target, inputs, strict=False, dynamic_shapes=dynamic_shapes)
    except Exception as error:
        raise ExportError(f"torch.export could not trace {type(model).__name__}: {type(error).__name__}: {error}. "
                          "Fix the model's data-dependent Python control flow, or export with dynamic_batch=False "
                          "if the batch size is baked in.") from error
    return unguarded_module(exported), flipped


def _run_at(graph_module, inputs, size):
    case = _resize_batch(inputs, size) if size != inputs[0].shape[0] else inputs
    return case, flatten_outputs(graph_module(*case))


def _reference_outputs(graph_module, inputs, batch_sizes) -> tuple[list, tuple[int, ...], tuple[str, ...]]:
    """PyTorch's outputs at the parity batch sizes that the model accepts (inputs cut or repeated from
    the example): ``(cases, sizes used, sizes skipped with the reason)``.

    The example batch and B + 3 must run (a model that runs at B only has a static batch); batch 1 is
    replaced by the smallest size that runs (a model written for B > 1, such as a ``squeeze()`` that
    also drops the batch dim at B = 1), or left out when none below B does.
    """
    cases, used, skipped = [], [], []
    batch = int(inputs[0].shape[0])
    for size in batch_sizes:
        tries = [size] if size >= batch else list(range(size, batch))[:8]
        for attempt in tries:
            try:
                cases.append(_run_at(graph_module, inputs, attempt))
                used.append(attempt)
                break
            except Exception as error:  # noqa: BLE001 - reported below or in the report
                if size >= batch:
                    raise ExportError(f"the model fails at batch {attempt}: {type(error).__name__}: {error}. A "
                                      "GraphModule traced with a static batch needs dynamic_batch=False (or re-trace "
                                      "it with dynamic_shapes on dim 0).") from error
                skipped.append(f"batch {attempt}: the model fails there ({type(error).__name__}: "
                               f"{str(error).splitlines()[0][:160]})")
                logger.info("parity skips batch %d: %s", attempt, error)
    return cases, tuple(dict.fromkeys(used)), tuple(skipped)


def _rename_batch_dim(onnx_program, exported: torch.export.ExportedProgram) -> None:
    """Call the batch dim ``batch`` on graph inputs and outputs (torch.export names it ``s35`` or so)."""
    first = exported.graph_signature.user_inputs[0]  # dim 0 of the first input is the batch
    value = next(n for n in exported.graph_module.graph.find_nodes(op="placeholder") if n.name == first).meta.get("val")
    batch_symbols = {str(value.shape[0])} if isinstance(value.shape[0], torch.SymInt) else set()
    for value in [*onnx_program.model.graph.inputs, *onnx_program.model.graph.outputs]:
        shape = value.shape
        if shape is not None and shape.rank() and not isinstance(shape[0], int) and str(shape[0]) in batch_symbols:
            with contextlib.suppress(TypeError):  # a frozen shape keeps torch.export's symbol name
                shape[0] = BATCH_DIM_NAME


def _parameter_bytes(exported: torch.export.ExportedProgram) -> int:
    tensors = [*exported.state_dict.values(), *exported.constants.values()]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _compare(name: str, batch: int, actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float,
             provider: str, use_tf32: bool) -> tuple[float, float]:
    if actual.shape != expected.shape:
        raise ParityError(f"ONNX Runtime output {name!r} at batch {batch} has shape {actual.shape}, PyTorch "
                          f"{expected.shape}", output_name=name, batch_size=batch, max_abs_diff=np.inf,
                          max_rel_diff=np.inf, atol=atol, rtol=rtol)
    actual64, expected64 = actual.astype(np.float64), expected.astype(np.float64)
    difference = np.abs(actual64 - expected64)
    difference[np.isnan(actual64) & np.isnan(expected64)] = 0.0
    difference[np.isnan(difference)] = np.inf
    max_abs = float(difference.max(initial=0.0))
    max_rel = float((difference / np.maximum(np.abs(expected64), np.finfo(np.float64).tiny)).max(initial=0.0))
    if np.any(difference > atol + rtol * np.abs(expected64)):
        tf32 = ("ONNX Runtime ran with TF32 (use_tf32=True): expect about 1e-3 relative error per matmul; "
                f"use use_tf32=False, or atol/rtol near {TF32_ATOL}/{TF32_RTOL}. ") if use_tf32 else ""
        raise ParityError(
            f"ONNX Runtime ({provider}) output {name!r} differs from PyTorch at batch {batch}: "
            f"max abs diff {max_abs:.3g}, max rel diff {max_rel:.3g}, tolerance |ort - torch| <= "
            f"{atol:g} + {rtol:g} * |torch|. {tf32}The ONNX file was not moved into place; export with "
            "parity=False to inspect it, or find the op with torch.onnx.export(..., verify=True).",
            output_name=name, batch_size=batch, max_abs_diff=max_abs, max_rel_diff=max_rel, atol=atol, rtol=rtol)
    return max_abs, max_rel


def _load_error(provider: str, error: Exception) -> ExportError:
    """ONNX Runtime's load failure as an ExportError that names the ONNX op and node first."""
    text = str(error)
    found = re.search(r"Node \(([^)]*)\) Op \(([^)]*)\)", text)
    where = f" at ONNX op {found.group(2)} (node {found.group(1)})" if found else ""
    hint = (" The default export passes (amgp_fx.passes) remove no-op squeezes; if you exported with passes=() "
            "or --no-passes, drop that, or remove the squeeze of a dim that is not 1 from the model."
            if found and found.group(2) == "Squeeze" else
            " Export with parity=False (--no-parity) to keep the file and inspect that node.")
    return ExportError(f"ONNX Runtime ({provider}) could not load the exported model{where}: "
                       f"{text.strip().splitlines()[-1] if text.strip() else type(error).__name__}.{hint}")


def _check_parity(onnx_path, cases, input_names, output_names, provider, use_tf32, atol, rtol):
    try:
        session = make_ort_session(onnx_path, provider, use_tf32=use_tf32)
    except Exception as error:  # noqa: BLE001 - onnxruntime's Fail/InvalidGraph do not derive from RuntimeError
        raise _load_error(provider, error) from error
    present = {value.name for value in session.get_inputs()}  # an input the graph never reads may be dropped
    worst_abs = worst_rel = 0.0
    for inputs, expected in cases:
        feeds = {name: x.detach().cpu().numpy() for name, x in zip(input_names, inputs) if name in present}
        actual = session.run(list(output_names), feeds)
        batch = int(inputs[0].shape[0])
        for name, got, want in zip(output_names, actual, expected):
            max_abs, max_rel = _compare(name, batch, got, want.detach().cpu().numpy(), atol, rtol, provider, use_tf32)
            worst_abs, worst_rel = max(worst_abs, max_abs), max(worst_rel, max_rel)
    return worst_abs, worst_rel


def _tell(stage: Callable[[str], None] | None, name: str) -> None:
    """Report the export stage ``name`` beginning, to whoever shows progress."""
    if stage is not None:
        stage(name)


def _prepare_target(path: str | os.PathLike) -> Path:
    target = Path(path)
    if target.is_dir():
        raise ExportError(f"{target} is a folder; pass a file path such as {target / 'model.onnx'}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(target.parent, os.W_OK):
            raise PermissionError(f"folder {target.parent} is not writable")
    except OSError as error:
        raise ExportError(f"cannot write {target}: {error}. Pass a path in a writable folder.") from error
    return target


def _save_validated(onnx_program, target: Path, external: bool, check: bool, parity_check, stage=None):
    """Save into a temp folder beside ``target``, check, run ``parity_check(file)``, then move into place;
    ``stage(name)`` is told as the checker and the parity run begin.

    Returns ``(onnx bytes, external data bytes, (max abs diff, max rel diff) or (None, None))``.
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        staged = staging / target.name
        try:
            onnx_program.save(staged, external_data=external)
        except Exception as error:
            raise ExportError(f"saving {target.name} failed: {type(error).__name__}: {error}. Check disk space "
                              "and permissions; weights over 2 GiB need external_data=True.") from error
        if check:
            import onnx

            _tell(stage, "checker")
            try:
                onnx.checker.check_model(str(staged))  # by path: works past protobuf's 2 GiB
            except Exception as error:
                raise ExportError(f"onnx.checker rejected the exported model: {error}") from error
        if parity_check is not None:
            _tell(stage, "ORT parity")
        differences = parity_check(staged) if parity_check is not None else (None, None)
        extra_files = [file for file in staging.iterdir() if file != staged]
        sizes = staged.stat().st_size, sum(file.stat().st_size for file in extra_files)
        for file in extra_files:  # external data first, so the .onnx never points at a missing file
            os.replace(file, target.parent / file.name)
        os.replace(staged, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return (*sizes, differences)


def export_onnx(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | os.PathLike,
    *,
    dynamic_batch: bool = True,
    opset: int = DEFAULT_OPSET,
    external_data: bool | None = None,
    check: bool = True,
    parity: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
    parity_provider: str = "cpu",
    use_tf32: bool = False,
    passes: PassRegistry | Sequence[ExportPass] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export ``model`` to ``path`` as ONNX, check it and compare ONNX Runtime with PyTorch.

    Args:
        model: an eager ``nn.Module`` (put in eval mode during export, flags restored after) or a
            ``torch.export(...).module()`` GraphModule, e.g. after pruning (training literals flipped
            on a copy). Not modified.
        example_inputs: forward's positional arguments, e.g. ``(dense (B, 13) float32, sparse (B, 26)
            int64)``, or any pytree of tensors (``({"user_id": (B,), ...},)``, ``(dense, kjt)``); the first
            tensor is batch-major, others of another length (jagged ids, offsets) get their own dynamic dim.
        path: the .onnx file to write; large weights go to ``<path>.data`` beside it.
        dynamic_batch: dim 0 of the inputs of length B and of the outputs is the symbolic ``batch``;
            False bakes every shape in (what ONNX Runtime CUDA graphs need).
        opset: ONNX opset (see :data:`DEFAULT_OPSET` for why 18).
        external_data: weights in a separate file; None: when they exceed 1.5 GiB.
        check: run ``onnx.checker.check_model`` on the file.
        parity: run ONNX Runtime at batch B, B + 3 and 1 against PyTorch (B only when static or jagged);
            when the model fails at batch 1, the smallest batch below B that runs replaces it
            (``ExportReport.parity_skipped`` says why).
        atol, rtol: parity tolerance; None: DEFAULT_ATOL/RTOL, or TF32_ATOL/RTOL when ``use_tf32``.
        parity_provider: "cpu", "cuda" or "auto" (CUDA when onnxruntime-gpu and a GPU are present).
        use_tf32: let the CUDA provider use TF32 during the parity run.
        passes: FX rewrites to run first; None: :func:`amgp_fx.passes.default_passes`; () for none.
        input_names, output_names: ONNX names, one per input tensor; default: forward's parameter names
            with the path inside each (``inputs.user_id``), and ``output``
            (``output_i`` when several, NamedTuple field names when forward is annotated with one).
        on_stage: called with ``"tracing"``, ``"ONNX export"``, ``"checker"`` and ``"ORT parity"`` as
            each begins (the CLI shows them as progress: an export can take many seconds).

    Returns:
        An :class:`ExportReport` (sizes, names, passes applied, max differences, tolerance).

    Raises:
        ExportError: tracing, translation, the checker or the file system failed (message says which).
        ParityError: ONNX Runtime disagrees with PyTorch beyond tolerance.
    """
    started = time.perf_counter()
    flat = _check_inputs(model, example_inputs)
    target = _prepare_target(path)
    atol = (TF32_ATOL if use_tf32 else DEFAULT_ATOL) if atol is None else atol
    rtol = (TF32_RTOL if use_tf32 else DEFAULT_RTOL) if rtol is None else rtol
    parity_provider = ("cuda" if cuda_provider_available() else "cpu") if parity_provider == "auto" else parity_provider
    inputs, _, dynamic_shapes, parity_batches = _batch_setup(flat.leaves, dynamic_batch)
    if input_names is not None and len(input_names) != len(flat.leaves):
        raise ExportError(f"input_names has {len(input_names)} names, the example inputs have {len(flat.leaves)} "
                          f"tensors ({', '.join(flat.paths)}); pass one name per tensor, or none")
    names_in = list(input_names) if input_names is not None else list(flat.names)
    skipped: tuple[str, ...] = ()
    with eval_mode(model), torch.no_grad():
        _tell(on_stage, "tracing")
        graph_module, flipped = _to_inference_graph(model, flat, inputs, dynamic_shapes)
        cases = []
        if parity:
            cases, parity_batches, skipped = _reference_outputs(graph_module, inputs, parity_batches)
        results = apply_passes(graph_module, inputs, passes)
        applied = (("inference_mode",) if flipped else ()) + tuple(r.name for r in results if r.rewrites)
        try:
            exported = torch.export.export(graph_module, inputs, strict=False, dynamic_shapes=dynamic_shapes)
        except Exception as error:
            raise ExportError(f"torch.export failed on the rewritten graph: {type(error).__name__}: {error}. "
                              "Retry with passes=() to see whether a pass caused it.") from error
        output_count = len(exported.graph_signature.user_outputs)
        names_out = list(output_names) if output_names is not None else _output_names(model, output_count)
        _tell(on_stage, "ONNX export")
        try:
            onnx_program = torch.onnx.export(exported, inputs, dynamo=True, opset_version=opset, verbose=False,
                                             input_names=names_in, output_names=names_out, optimize=True)
        except Exception as error:
            raise ExportError(f"torch.onnx could not translate the graph to ONNX opset {opset}: "
                              f"{type(error).__name__}: {error}. An op without an ONNX translation needs an FX "
                              "pass (amgp_fx.passes) that rewrites it into supported ops.") from error
    _rename_batch_dim(onnx_program, exported)
    onnx_program.model.metadata_props[METADATA_KEY] = metadata_value(dataclasses.replace(flat, names=tuple(names_in)))
    if external_data is None:
        external_data = _parameter_bytes(exported) > EXTERNAL_DATA_THRESHOLD_BYTES
    parity_check = (lambda file: _check_parity(file, cases, names_in, names_out, parity_provider, use_tf32, atol,
                                               rtol)) if parity else None
    onnx_bytes, external_bytes, (max_abs, max_rel) = _save_validated(onnx_program, target, external_data, check,
                                                                     parity_check, on_stage)
    report = ExportReport(
        path=str(target), opset=opset, input_names=tuple(names_in), output_names=tuple(names_out),
        onnx_bytes=onnx_bytes, external_data_bytes=external_bytes, dynamic_batch=dynamic_batch,
        passes_applied=applied, max_abs_diff=max_abs, max_rel_diff=max_rel, atol=atol, rtol=rtol,
        parity_provider=parity_provider if parity else None, parity_batch_sizes=parity_batches if parity else (),
        use_tf32=use_tf32, exporter=f"torch.onnx.export(dynamo=True) torch {torch.__version__}",
        seconds=time.perf_counter() - started, input_paths=flat.paths, input_tree=tree_text(flat.spec),
        parity_skipped=skipped,
    )
    logger.info("exported %s (%d bytes + %d external), passes %s, max abs diff %s",
                target, onnx_bytes, external_bytes, applied, max_abs)
    return report

"""fp16 and bf16 copies of an exported fp32 ONNX model, parity-checked against fp32 PyTorch.

Serving runs in the precision it is fast in; the conversion is done by the tools that own the
formats, never by hand:

- fp16: ``onnxruntime.transformers.float16.convert_float_to_float16`` (shipped in every onnxruntime
  and onnxruntime-gpu wheel) on the fp32 file, ``keep_io_types=True``: inputs and outputs stay fp32,
  so the same feeds and the same benchmark run both. When the execution provider has no fp16 kernel
  for an op (a session that fails to load names it), that op type is kept in fp32 (the converter's
  ``op_block_list``, casts around it) and the report lists it.
- bf16: neither onnx nor onnxruntime ships an fp32 -> bf16 converter, so the model itself is cast
  to bf16 in PyTorch and exported by :func:`amgp_fx.export.export_onnx` (torch.onnx's translation),
  with fp32 inputs and outputs cast at the boundary as for fp16. The op types that have no bf16 kernel
  on the provider (each asked on its own: ORT's load error names one node at most) run in fp32 with
  casts around them, and the report lists them; when one is a GEMM (:data:`BF16_CORE_OPS`, the work
  bf16 is for) a :class:`PrecisionError` names them instead. ORT's CPU provider lacks bf16 Gemm and
  MatMul, so there the error also says that bf16 runs on the CUDA provider.

Parity, stated: ``|low - fp32 torch| <= atol + rtol * |fp32 torch|`` on every output, with the
tolerances below (see :data:`TOLERANCES` for the reasons).

Example:
    >>> TOLERANCES["fp16"][:2]
    (0.01, 0.01)
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from amgp_fx.export import ExportError, ParityError
from amgp_fx.tracing import unguarded_module

logger = logging.getLogger(__name__)

__all__ = ["PRECISIONS", "TOLERANCES", "PrecisionError", "PrecisionReport", "cast_module", "convert_precision",
           "export_bf16"]

PRECISIONS = ("fp32", "fp16", "bf16")
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

#: precision -> (atol, rtol, why). Weights and activations are rounded to the format's mantissa
#: (unit roundoff u: fp16 2^-11 ~ 4.9e-4, bf16 2^-8 ~ 3.9e-3); through a few stacked layers of
#: K-term dot products (GEMMs accumulate in fp32 on ORT's CPU and CUDA providers) the relative error
#: of a logit of size ~1 grows to a few u times the depth, so the bound is about 20 u, with the same
#: absolute floor for logits near 0.
TOLERANCES: dict[str, tuple[float, float, str]] = {
    "fp32": (1e-4, 1e-3, "fp32 ORT vs fp32 PyTorch: kernel order only (amgp_fx.export.DEFAULT_ATOL/RTOL)"),
    "fp16": (1e-2, 1e-2, "fp16 keeps 10 mantissa bits (u = 4.9e-4); ~20 u covers rounded weights and "
                         "activations through a few stacked GEMMs accumulated in fp32"),
    "bf16": (8e-2, 8e-2, "bf16 keeps 7 mantissa bits (u = 3.9e-3), 8x coarser than fp16; ~20 u as for fp16"),
}


class PrecisionError(ExportError):
    """The conversion or its load on the provider failed; the message names the op and what to do."""


@dataclasses.dataclass(frozen=True)
class PrecisionReport:
    """What :func:`convert_precision` wrote and how close it is to fp32 PyTorch."""

    path: str
    precision: str
    source: str  # the fp32 .onnx it came from
    converter: str
    provider: str  # where parity ran
    max_abs_diff: float
    max_rel_diff: float
    atol: float
    rtol: float
    tolerance_reason: str
    kept_fp32_ops: tuple[str, ...] = ()  # op types the provider has no kernel for in this precision
    reference: str = "fp32 PyTorch"  # what parity compared with
    onnx_bytes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _CastCall(torch.nn.Module):
    """``model`` with its weights in ``dtype``: floating inputs are cast in, floating outputs back to fp32
    (as ``keep_io_types`` does for ONNX), so callers feed and read fp32 either way."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, *args):
        cast_in = torch.utils._pytree.tree_map(
            lambda x: x.to(self.dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x, args)
        return torch.utils._pytree.tree_map(
            lambda x: x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x, self.model(*cast_in))


def cast_module(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """A copy of ``model`` for inference in ``precision`` (fp32 in and out); ``model`` itself for fp32.

    torch.export GraphModules in it (pruned models) get their inference graph: their batch-norm and
    dropout nodes carry the training flag as a literal that the modules' ``training`` flags (what the
    timing loops' ``eval_mode`` sets) do not change, so the copy would otherwise drop units at random
    and update the running statistics."""
    _check_precision(precision)
    if precision == "fp32":
        return model
    return _CastCall(_inference_copy(model).to(TORCH_DTYPES[precision]), TORCH_DTYPES[precision])


def _inference_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` with every outermost GraphModule in it replaced by its inference graph."""
    from amgp_fx.passes.inference_mode import inference_graph

    copied = copy.deepcopy(model)
    if isinstance(copied, torch.fx.GraphModule):
        return inference_graph(copied)[0]
    for parent in list(copied.modules()):
        if isinstance(parent, torch.fx.GraphModule):
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.fx.GraphModule):
                setattr(parent, name, inference_graph(child)[0])
    return copied


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")


def _missing_kernel(error: Exception) -> tuple[str, str] | None:
    """``(op type, node)`` of ONNX Runtime's "Could not find an implementation for OP(version) node
    with name 'NODE'" (or its NOT_IMPLEMENTED variant), else None."""
    found = re.search(r"implementation for (\w+)\(\d+\) node with name '([^']*)'", str(error))
    return (found.group(1), found.group(2)) if found else None


def _save(model, path: Path) -> None:
    import onnx

    large = model.ByteSize() > 1.5 * 2**30 if hasattr(model, "ByteSize") else False
    onnx.save(model, str(path), save_as_external_data=large, location=f"{path.name}.data" if large else None)


def _convert_fp16(source: Path, target: Path, provider: str, block: Sequence[str]):
    """fp16 file at ``target`` that loads on ``provider``: op types without an fp16 kernel there stay fp32."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from amgp_fx.bench import make_ort_session

    fp32 = onnx.load(str(source))
    huge = fp32.ByteSize() > 2**31 - 1  # shape inference works on a serialised model (2 GiB cap)
    kept: list[str] = list(block)
    for _ in range(16):
        fp16 = convert_float_to_float16(copy.deepcopy(fp32), keep_io_types=True, disable_shape_infer=huge,
                                        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *kept])
        _save(fp16, target)
        try:
            return make_ort_session(target, provider), tuple(kept)
        except Exception as error:  # noqa: BLE001 - onnxruntime's NotImplemented is not a RuntimeError
            missing = _missing_kernel(error)
            if missing is None or missing[0] in kept:
                raise PrecisionError(f"ONNX Runtime ({provider}) could not load the fp16 model: "
                                     f"{str(error).strip().splitlines()[-1]}. Use --precision fp32 here") from error
            logger.warning("ONNX Runtime %s has no fp16 kernel for %s (node %s): keeping %s in fp32",
                           provider, missing[0], missing[1], missing[0])
            kept.append(missing[0])
    raise PrecisionError(f"fp16 conversion for {provider} still fails after keeping {kept} in fp32. "
                         "Use --precision fp32 here")


def export_bf16(model: torch.nn.Module, example_inputs, target: str | os.PathLike, dynamic_batch: bool = True,
                input_names: Sequence[str] | None = None):
    """Export ``model`` cast to bf16 (fp32 inputs and outputs cast at the boundary) to ``target``; no parity.

    torch.export runs first: the cast wrapper's ``forward(*args)`` has no per-argument names for
    export_onnx's dynamic dims, so dim 0 of every leaf is left to torch.export (``Dim.AUTO``)."""
    from amgp_fx.export import export_onnx
    from amgp_fx.input_tree import as_args

    args = as_args(example_inputs)
    shapes = torch.utils._pytree.tree_map(
        lambda x: {0: torch.export.Dim.AUTO} if dynamic_batch and isinstance(x, torch.Tensor) and x.dim() else None,
        args)
    with torch.no_grad():
        program = torch.export.export(cast_module(model, "bf16").eval(), args, dynamic_shapes=(shapes,), strict=False)
    return export_onnx(unguarded_module(program), args, target, parity=False, dynamic_batch=dynamic_batch,
                       input_names=input_names)


#: op types that a bf16 model exists to run in bf16: kept in fp32, the "bf16" model would time fp32 GEMMs
BF16_CORE_OPS = frozenset({"Gemm", "MatMul", "Conv", "ConvTranspose", "Einsum"})


def _value_types(model) -> dict[str, int]:
    """Element type of every named value (inputs, initializers, outputs, shape-inferred intermediates)."""
    import onnx

    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as error:  # noqa: BLE001 - the exporter's own value_info is still there
        logger.debug("shape inference failed (%s); using the stored value_info", error)
    graph = model.graph
    types = {init.name: init.data_type for init in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    return types


def _bf16_nodes(model, types: dict[str, int]) -> dict[str, Any]:
    """op type -> first node of that type that reads or writes a bf16 tensor (subgraph-free nodes only)."""
    import onnx

    found = {}
    for node in model.graph.node:
        if node.op_type in found or node.op_type == "Cast":
            continue
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue
        if any(types.get(name) == onnx.TensorProto.BFLOAT16 for name in [*node.input, *node.output] if name):
            found[node.op_type] = node
    return found


def _probe_bf16_ops(model, types: dict[str, int], provider: str, scratch: Path) -> list[str]:
    """The bf16 op types of ``model`` that fail to load on ``provider`` on their own: one single-node model
    each. ORT's load error names one node at most (or an op of a function body: Relu shows as Max), and
    some versions name none, so each op type is asked directly."""
    import onnx
    from onnx import helper

    from amgp_fx.bench import make_ort_session

    infos = {v.name: v for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]}

    def value(name: str):
        if name in infos:
            return infos[name]
        return helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None)

    failing = []
    for op_type, node in _bf16_nodes(model, types).items():
        if any(name and name not in types for name in [*node.input, *node.output]):
            continue  # a value of unknown type: no faithful probe
        graph = helper.make_graph([node], f"probe_{op_type}", [value(n) for n in dict.fromkeys(node.input) if n],
                                  [value(n) for n in node.output if n])
        probe = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
        path = scratch / f"probe-{op_type}.onnx"
        onnx.save(probe, str(path))
        try:
            make_ort_session(path, provider)
        except Exception as error:  # noqa: BLE001 - onnxruntime's NotImplemented is not a RuntimeError
            logger.info("bf16 %s alone does not load on %s: %s", op_type, provider, str(error).strip()[-200:])
            failing.append(op_type)
        finally:
            path.unlink(missing_ok=True)
    return sorted(failing)


def _keep_bf16_ops_fp32(model, op_types: Sequence[str], types: dict[str, int]) -> int:
    """Run the nodes of ``op_types`` in fp32 in place: their bf16 inputs cast up, their bf16 outputs cast
    back down under the same names, so the rest of the graph is unchanged. Returns the nodes changed."""
    import onnx
    from onnx import helper

    bf16, nodes, changed = onnx.TensorProto.BFLOAT16, [], 0
    for node in model.graph.node:
        if node.op_type not in op_types:
            nodes.append(node)
            continue
        after = []
        for i, name in enumerate(node.input):
            if name and types.get(name) == bf16:
                wide = f"{name}__fp32_in{changed}_{i}"
                nodes.append(helper.make_node("Cast", [name], [wide], to=onnx.TensorProto.FLOAT, name=f"{wide}_cast"))
                node.input[i] = wide
        for i, name in enumerate(node.output):
            if name and types.get(name) == bf16:
                wide = f"{name}__fp32"
                after.append(helper.make_node("Cast", [wide], [name], to=bf16, name=f"{name}__to_bf16"))
                node.output[i] = wide
        nodes += [node, *after]
        changed += 1
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)
    return changed


def _export_bf16(model, example_inputs, target: Path, provider: str, source: Path, keep: Sequence[str] = ()):
    """bf16 file at ``target`` that loads on ``provider``. Op types without a bf16 kernel there run in
    fp32 (casts around them), unless one of them is a GEMM (:data:`BF16_CORE_OPS`): then it is refused."""
    import onnx
    import onnxruntime

    from amgp_fx.bench import make_ort_session

    header = onnx.load(str(source), load_external_data=False).graph
    dims = header.input[0].type.tensor_type.shape.dim
    export_bf16(model, example_inputs, target, bool(dims) and bool(dims[0].dim_param),
                [value.name for value in header.input])  # the fp32 file's input names
    def load() -> tuple[Any, dict[str, int]]:  # types from the file without its weights: under protobuf's 2 GB
        return onnx.load(str(target)), _value_types(onnx.load(str(target), load_external_data=False))

    kept = sorted(set(keep))
    bf16 = types = None
    if kept:
        bf16, types = load()
        _keep_bf16_ops_fp32(bf16, kept, types)
        _save(bf16, target)
    try:
        return make_ort_session(target, provider), tuple(kept)
    except Exception as error:  # noqa: BLE001
        first_error = error
    if bf16 is None:
        bf16, types = load()
    where = f"ONNX Runtime {onnxruntime.__version__} on the {provider} provider"
    ort_says = str(first_error).strip().splitlines()[-1] if str(first_error).strip() else type(first_error).__name__
    missing = [op for op in _probe_bf16_ops(bf16, types, provider, target.parent) if op not in kept]
    if not missing:
        target.unlink(missing_ok=True)
        raise PrecisionError(f"{where} could not load the bf16 model ({ort_says}), although each of its bf16 op "
                             "types loads there on its own, so no bf16 kernel is missing. Use --precision fp16 or "
                             "fp32 here") from first_error
    core = [op for op in missing if op in BF16_CORE_OPS]
    if core:
        target.unlink(missing_ok=True)
        advice = ("bf16 runs on the CUDA provider (onnxruntime-gpu); use --precision fp16 or fp32 here"
                  if provider == "cpu" else "use --precision fp16 or fp32 here")
        raise PrecisionError(f"{where} has no bfloat16 kernel for op type(s) {', '.join(missing)}; {', '.join(core)} "
                             "is the work bf16 is for, so keeping it in fp32 would time an fp32 model. "
                             f"{advice}") from first_error
    logger.warning("%s has no bfloat16 kernel for %s: keeping them in fp32", where, ", ".join(missing))
    kept = sorted({*kept, *missing})
    _keep_bf16_ops_fp32(bf16, missing, types)
    _save(bf16, target)
    try:
        return make_ort_session(target, provider), tuple(kept)
    except Exception as error:  # noqa: BLE001
        target.unlink(missing_ok=True)
        again = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise PrecisionError(f"{where} still cannot load the bf16 model with {', '.join(kept)} kept in fp32 "
                             f"({again}). Use --precision fp16 or fp32 here") from error


def convert_precision(source: str | os.PathLike, precision: str, model: torch.nn.Module | None, example_inputs, *,
                      path: str | os.PathLike | None = None, provider: str = "cpu", atol: float | None = None,
                      rtol: float | None = None, keep_fp32_ops: Sequence[str] = ()) -> PrecisionReport:
    """Write ``precision``'s copy of the fp32 ONNX file ``source`` and check it against fp32 PyTorch.

    Args:
        source: the fp32 .onnx written by :func:`amgp_fx.export.export_onnx`.
        precision: "fp16" or "bf16" ("fp32" returns a report on ``source`` itself, parity re-checked).
        model, example_inputs: the PyTorch model ``source`` was exported from and its positional
            arguments (any pytree): the fp32 reference, and what bf16 is exported from. ``model=None``
            (only the .onnx file at hand): the reference is fp32 ONNX Runtime on ``source``; bf16 then
            cannot be made.
        path: where to write; default ``source`` with ``-fp16``/``-bf16`` before the suffix.
        provider: "cpu", "cuda" or "auto": the provider the file must load on and where parity runs.
        atol, rtol: parity tolerance; default :data:`TOLERANCES`.
        keep_fp32_ops: op types to keep in fp32 from the start (fp16 and bf16).

    Raises:
        PrecisionError: unknown precision, or the provider cannot run the model in that precision.
        ParityError: outputs differ from fp32 PyTorch beyond the tolerance (the file is removed).
    """
    from amgp_fx.bench import _inference_module, _onnx_header, cuda_provider_available, make_ort_session, ort_feeds
    from amgp_fx.input_tree import as_args
    from amgp_fx.passes import flatten_outputs
    from amgp_fx.passes.inference_mode import eval_mode

    _check_precision(precision)
    if model is None and precision == "bf16":
        raise PrecisionError("bf16 is exported from the PyTorch model (ONNX tools have no bf16 converter), and "
                             "only an .onnx file was given. Pass the model file (e.g. model.pt2) as well")
    started = time.perf_counter()
    source = Path(source)
    if provider == "auto":
        provider = "cuda" if cuda_provider_available() else "cpu"
    default_atol, default_rtol, reason = TOLERANCES[precision]
    atol, rtol = (default_atol if atol is None else atol), (default_rtol if rtol is None else rtol)
    if atol != default_atol or rtol != default_rtol:
        reason = f"given by the caller (default {default_atol:g}/{default_rtol:g}: {reason})"
    target = Path(path) if path else source.with_name(f"{source.stem}-{precision}{source.suffix}")
    if precision == "fp32":
        target, session, kept, converter = source, make_ort_session(source, provider), (), "none (the fp32 export)"
    elif precision == "fp16":
        session, kept = _convert_fp16(source, target, provider, keep_fp32_ops)
        converter = "onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)"
    else:
        session, kept = _export_bf16(model, example_inputs, target, provider, source, keep_fp32_ops)
        converter = f"torch.onnx.export of the model cast to bfloat16 (torch {torch.__version__})"
    args = as_args(example_inputs)
    if model is not None:
        # the mode the file was exported in: a GraphModule's training literals flipped (export_onnx does the same)
        reference_model = _inference_module(model)
        with eval_mode(reference_model), torch.no_grad():
            expected = [x.detach().float().cpu().numpy() for x in flatten_outputs(reference_model(*args))]
        reference = "fp32 PyTorch"
    else:
        fp32_session = make_ort_session(source, provider)
        expected = fp32_session.run(None, ort_feeds(fp32_session, args, _onnx_header(source)[1]))
        reference = f"fp32 ONNX Runtime ({provider})"
    actual = session.run(None, ort_feeds(session, args, _onnx_header(target)[1]))
    worst_abs = worst_rel = 0.0
    for name, got, want in zip([o.name for o in session.get_outputs()], actual, expected):
        difference = np.abs(got.astype(np.float64) - want.astype(np.float64))
        difference[np.isnan(difference)] = np.inf
        worst_abs = max(worst_abs, float(difference.max(initial=0.0)))
        worst_rel = max(worst_rel, float((difference / np.maximum(np.abs(want), 1e-30)).max(initial=0.0)))
        if got.shape != want.shape or np.any(difference > atol + rtol * np.abs(want)):
            if target != source:
                target.unlink(missing_ok=True)
            raise ParityError(
                f"the {precision} model's output {name!r} differs from {reference} on {provider}: max abs diff "
                f"{worst_abs:.3g}, tolerance |{precision} - fp32| <= {atol:g} + {rtol:g} * |fp32| ({reason}). "
                f"Use fp32 for this model, or pass a looser tolerance if that error is acceptable",
                output_name=name, batch_size=int(np.shape(want)[0]) if np.ndim(want) else 1, max_abs_diff=worst_abs,
                max_rel_diff=worst_rel, atol=atol, rtol=rtol)
    report = PrecisionReport(path=str(target), precision=precision, source=str(source), converter=converter,
                             provider=provider, max_abs_diff=worst_abs, max_rel_diff=worst_rel, atol=atol, rtol=rtol,
                             tolerance_reason=reason, kept_fp32_ops=tuple(kept), reference=reference,
                             onnx_bytes=target.stat().st_size, seconds=time.perf_counter() - started)
    logger.info("%s: %s, max abs diff %.3g vs fp32 reference (tolerance %g + %g |x|)", target, precision, worst_abs,
                atol, rtol)
    return report

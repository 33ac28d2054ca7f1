"""A time model per op class: what latency an ONNX graph can physically reach on a device.

FLOPs alone overstate what pruning can buy: embedding gathers, the interaction and the copies around
it move bytes, and every kernel costs a launch. This module walks the ONNX graph (shapes from ONNX
shape inference at a concrete batch size) and charges each node by its class:

- ``gemm`` (MatMul, Gemm, Conv): ``max(FLOPs / GEMM throughput, bytes / bandwidth)`` (roofline: a
  skinny GEMM, e.g. 13 -> 512, is bound by its bytes, not its FLOPs);
- ``gather`` (Gather, GatherND, GatherElements): bytes actually touched (the indices, the rows read,
  the output written; never the whole table) at the measured gather bandwidth;
- ``memory`` (everything else: concat, transpose, elementwise, casts, reductions): inputs read plus
  outputs written, at the measured copy bandwidth;
- ``free``: metadata-only ops (Reshape, Squeeze, Shape, ...) and nodes that read no input data
  (shape arithmetic of a dynamic graph, weight-only subgraphs ORT folds): nothing runs per call.

Every non-free node costs at least one kernel launch: its time is ``max(launch, work)`` (launches are
pipelined with the work of the kernel before, so a stream of tiny kernels runs at the launch rate and
a big one at its roofline). Nodes run one after another, and a call adds the runtime's fixed cost. The constants (:class:`DeviceConstants`) come
from :func:`calibrate` (a big matmul, a big copy, a big gather and chains of tiny ONNX Runtime nodes,
timed on the target device) and are stored with the benchmark results; tests pass fixed constants.

Dim letters: B batch.

Example:
    >>> constants = DeviceConstants("fixed", {"float32": 1e12}, 1e11, 1e11, 0.0)
    >>> constants.gemm_rate("float16") == 1e12  # an unmeasured precision falls back to fp32
    True
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["QUICK_CPU_CALIBRATION", "DeviceConstants", "LatencyPrediction", "NodeCost", "calibrate", "graph_costs",
           "predict_latency", "predicted_speedup"]

#: ``calibrate("cpu", **QUICK_CPU_CALIBRATION)``: seconds instead of a minute on a small CPU, for the CLI
#: and CPU smoke runs (a CPU's constants matter less than a GPU's: latency targets are for serving)
QUICK_CPU_CALIBRATION = dict(matmul_size=512, copy_bytes=16 * 2**20, iters=5)

GEMM_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "MatMulInteger", "FusedMatMul"})
GATHER_OPS = frozenset({"Gather", "GatherND", "GatherElements"})
FREE_OPS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Size", "Constant"})

# bytes per element by ONNX TensorProto element type (FLOAT, UINT8, INT8, UINT16, INT16, INT32, INT64,
# BOOL, FLOAT16, DOUBLE, UINT32, UINT64, BFLOAT16)
_ITEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}
_TYPE_NAMES = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64", 6: "int32", 7: "int64", 9: "bool"}


@dataclasses.dataclass(frozen=True)
class DeviceConstants:
    """Measured speeds of one device (and runtime): what :func:`predict_latency` charges per op class."""

    device: str
    gemm_flops_per_s: Mapping[str, float]  # by element type name: float32, float16, bfloat16
    bandwidth_bytes_per_s: float  # streaming copy, bytes read + written per second
    gather_bandwidth_bytes_per_s: float  # row gather from a large table
    launch_s: float  # per kernel (the runtime's per-node overhead)
    source: str = "fixed"  # how the numbers were obtained (calibration command, or "fixed")
    call_s: float = 0.0  # per call of the whole graph (the runtime's fixed cost of one Run)

    def __post_init__(self) -> None:
        rates = [*self.gemm_flops_per_s.values(), self.bandwidth_bytes_per_s, self.gather_bandwidth_bytes_per_s]
        if (not self.gemm_flops_per_s or any(not rate > 0 for rate in rates) or not self.launch_s >= 0
                or not self.call_s >= 0):
            raise ValueError(f"device constants need positive rates and a launch time >= 0, got {self}")
        object.__setattr__(self, "gemm_flops_per_s", dict(self.gemm_flops_per_s))

    def gemm_rate(self, dtype: str) -> float:
        """GEMM FLOP/s for ``dtype``; fp32's rate when that precision was not measured."""
        return self.gemm_flops_per_s.get(dtype) or self.gemm_flops_per_s.get("float32") or max(
            self.gemm_flops_per_s.values())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceConstants:
        return cls(**dict(data))


@dataclasses.dataclass(frozen=True)
class NodeCost:
    """One ONNX node's work: class, FLOPs (GEMM only), bytes moved and the element type of its output."""

    name: str
    op_type: str
    op_class: str  # gemm, gather, memory, free
    flops: int
    bytes: int
    dtype: str
    shaped: bool = True  # False: a shape was unknown, the node was charged a launch only

    def seconds(self, constants: DeviceConstants) -> float:
        if self.op_class == "free":
            return 0.0
        if self.op_class == "gemm":
            work = max(self.flops / constants.gemm_rate(self.dtype), self.bytes / constants.bandwidth_bytes_per_s)
        elif self.op_class == "gather":
            work = self.bytes / constants.gather_bandwidth_bytes_per_s
        else:
            work = self.bytes / constants.bandwidth_bytes_per_s
        return max(constants.launch_s, work)


@dataclasses.dataclass(frozen=True)
class LatencyPrediction:
    """Predicted latency of one graph at one batch size, with the share of each op class."""

    batch_size: int
    seconds: float
    seconds_by_class: Mapping[str, float]
    flops: int  # GEMM FLOPs (the count FlopCounterMode makes of the same model)
    bytes: int
    kernels: int
    unshaped_nodes: int  # nodes whose shapes inference could not give (charged a launch only)

    @property
    def ms(self) -> float:
        return self.seconds * 1e3

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "seconds_by_class": dict(self.seconds_by_class)}


def _load(model) -> Any:
    import onnx

    if isinstance(model, (str, os.PathLike)):
        return onnx.load(str(model), load_external_data=False)  # shapes only: weights stay on disk
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _fix_input_dims(model, batch_size: int, dims: Mapping[str, int] | None) -> None:
    """Give every symbolic input dim a size: ``dims[name]``, else ``batch_size`` (the batch, or a
    jagged length that the benchmark feeds one id per row)."""
    initializers = {init.name for init in model.graph.initializer}
    del model.graph.value_info[:]  # stale symbolic shapes (a converted model keeps the fp32 ones) would win
    for value in [*model.graph.input, *model.graph.output]:
        if value.name in initializers:
            continue
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param or not dim.HasField("dim_value"):
                size = (dims or {}).get(dim.dim_param, batch_size)
                dim.Clear()
                dim.dim_value = int(size)


def _topological_sort(graph) -> None:
    """Reorder ``graph.node`` so each node follows its inputs' producers (the fp16 converter appends its
    input casts at the end; ORT sorts on load, shape inference does not)."""
    available = {value.name for value in graph.input} | {init.name for init in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:  # a subgraph's outer-scope values or a cycle: keep the rest as written
            ordered += pending
            break
        for node in ready:
            available.update(node.output)
        ready_ids = {id(node) for node in ready}
        ordered += ready
        pending = [node for node in pending if id(node) not in ready_ids]
    copies = []
    for node in ordered:
        copy = type(node)()
        copy.CopyFrom(node)
        copies.append(copy)
    del graph.node[:]
    graph.node.extend(copies)


def _shapes(model) -> dict[str, tuple[tuple[int, ...] | None, int]]:
    """``{value name: (shape or None, element type)}`` after shape inference with data propagation."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as error:  # noqa: BLE001 - a partial graph still gives the declared shapes
        logger.warning("ONNX shape inference failed (%s); using declared shapes only", error)
        inferred = model
    shapes: dict[str, tuple[tuple[int, ...] | None, int]] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        known = tensor.HasField("shape") and all(d >= 0 for d in dims)
        shapes[value.name] = (dims if known else None, tensor.elem_type)
    for init in inferred.graph.initializer:
        shapes[init.name] = (tuple(init.dims), init.data_type)
    for node in inferred.graph.node:
        if node.op_type == "Constant" and node.output[0] not in shapes:
            for attribute in node.attribute:
                if attribute.name == "value":
                    shapes[node.output[0]] = (tuple(attribute.t.dims), attribute.t.data_type)
    return shapes


def _nbytes(entry) -> int:
    shape, elem = entry
    return math.prod(shape) * _ITEM_BYTES.get(elem, 4)


def _gemm_flops(node, shapes) -> int:
    """2 x multiply-adds, as FlopCounterMode counts mm/addmm/bmm/conv (the bias add is not counted)."""
    out_shape = shapes[node.output[0]][0]
    if node.op_type in ("MatMul", "MatMulInteger", "FusedMatMul"):
        a = shapes[node.input[0]][0]
        return 2 * math.prod(out_shape) * a[-1]
    if node.op_type == "Gemm":
        a = shapes[node.input[0]][0]
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return 2 * math.prod(out_shape) * (a[0] if trans_a else a[1])
    weight = shapes[node.input[1]][0]  # Conv: (C_out, C_in / groups, *kernel); ConvTranspose: (C_in, C_out / g, ...)
    per_output = math.prod(weight[1:]) if node.op_type == "Conv" else weight[0] * math.prod(weight[2:]) // max(
        1, out_shape[1])
    return 2 * math.prod(out_shape) * per_output


def _data_dependent(graph) -> set[str]:
    """Values computed from the graph's inputs' data (not from their shapes only, nor from weights)."""
    initializers = {init.name for init in graph.initializer}
    dependent = {value.name for value in graph.input if value.name not in initializers}
    for node in graph.node:
        if node.op_type not in ("Shape", "Size") and any(name in dependent for name in node.input):
            dependent.update(node.output)
    return dependent


def _classify(node, dependent: set[str]) -> str:
    if node.op_type in FREE_OPS or not any(name in dependent for name in node.input):
        return "free"  # metadata only, or shape arithmetic / weight-only subgraphs (folded or run on the host)
    if node.op_type in GEMM_OPS:
        return "gemm"
    if node.op_type in GATHER_OPS:
        return "gather"
    return "memory"


def _node_cost(node, shapes, dependent: set[str]) -> NodeCost:
    op_class = _classify(node, dependent)
    inputs = [shapes.get(name) for name in node.input if name]
    outputs = [shapes.get(name) for name in node.output if name]
    dtype_code = outputs[0][1] if outputs and outputs[0] is not None else 1
    dtype = _TYPE_NAMES.get(dtype_code, "float32")
    if op_class == "gemm" and inputs and inputs[0] is not None:
        dtype = _TYPE_NAMES.get(inputs[0][1], dtype)  # the GEMM runs in its inputs' type
    if op_class == "free":
        return NodeCost(node.name, node.op_type, op_class, 0, 0, dtype)
    if any(v is None or v[0] is None for v in [*inputs, *outputs]):
        return NodeCost(node.name, node.op_type, op_class, 0, 0, dtype, shaped=False)
    if op_class == "gather":
        # only the rows the indices pick are read: indices + rows read (= output size) + output written
        moved = sum(_nbytes(v) for v in inputs[1:]) + 2 * sum(_nbytes(v) for v in outputs)
        return NodeCost(node.name, node.op_type, op_class, 0, moved, dtype)
    moved = sum(_nbytes(v) for v in inputs) + sum(_nbytes(v) for v in outputs)
    flops = _gemm_flops(node, shapes) if op_class == "gemm" else 0
    return NodeCost(node.name, node.op_type, op_class, flops, moved, dtype)


def graph_costs(model, batch_size: int, dims: Mapping[str, int] | None = None) -> list[NodeCost]:
    """The cost of every node of ``model`` (an .onnx path or ModelProto) at ``batch_size``, in graph order.

    Args:
        dims: sizes of symbolic input dims other than the batch (default: ``batch_size`` for each).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    proto = _load(model)
    _fix_input_dims(proto, batch_size, dims)
    _topological_sort(proto.graph)
    shapes = _shapes(proto)
    dependent = _data_dependent(proto.graph)
    return [_node_cost(node, shapes, dependent) for node in proto.graph.node]


def predict_latency(model, batch_size: int, constants: DeviceConstants,
                    dims: Mapping[str, int] | None = None) -> LatencyPrediction:
    """Predicted latency of ``model`` (an .onnx path or ModelProto) at ``batch_size`` on ``constants``' device."""
    costs = graph_costs(model, batch_size, dims)
    by_class = {"gemm": 0.0, "gather": 0.0, "memory": 0.0}
    for cost in costs:
        if cost.op_class != "free":
            by_class[cost.op_class] += cost.seconds(constants)
    unshaped = sum(not cost.shaped for cost in costs)
    if unshaped:
        logger.warning("%d nodes without inferred shapes are charged a launch only", unshaped)
    by_class["call"] = constants.call_s
    return LatencyPrediction(batch_size=batch_size, seconds=sum(by_class.values()), seconds_by_class=by_class,
                             flops=sum(c.flops for c in costs), bytes=sum(c.bytes for c in costs),
                             kernels=sum(c.op_class != "free" for c in costs), unshaped_nodes=unshaped)


def predicted_speedup(dense, compact, batch_size: int, constants: DeviceConstants) -> float:
    """``predicted dense latency / predicted compact latency``: the speedup physically reachable at
    ``batch_size`` on the calibrated device (compare a measured speedup with it)."""
    return predict_latency(dense, batch_size, constants).seconds / predict_latency(compact, batch_size,
                                                                                    constants).seconds


# --------------------------------------------------------------------------------------------- calibration


def _median_seconds(function, sync, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        function()
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        function()
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _ort_chain_seconds(provider: str, nodes: int, iters: int) -> float:
    """Median time of one IOBinding run (as the benchmark runs) of a chain of ``nodes`` tiny Adds."""
    import tempfile

    import onnx
    from onnx import TensorProto, helper

    from amgp_fx.bench import _load_onnxruntime, make_ort_session

    chain = [helper.make_node("Add", [f"x{i}", "one"], [f"x{i + 1}"], name=f"add{i}") for i in range(nodes)]
    graph = helper.make_graph(chain, "launch_chain", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info(f"x{nodes}", TensorProto.FLOAT, [1])],
                              [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    ort = _load_onnxruntime(cuda=provider == "cuda")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "chain.onnx"
        onnx.save(model, str(path))
        session = make_ort_session(path, provider)
        binding = session.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy(np.zeros(1, dtype=np.float32), provider, 0)
        binding.bind_ortvalue_input("x0", value)
        binding.bind_output(f"x{nodes}", provider)

        def call():
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return _median_seconds(call, lambda: None, 3, iters)


def _ort_overheads(provider: str, nodes: int = 200, iters: int = 20) -> tuple[float, float] | None:
    """``(per node, per call)`` of ONNX Runtime on ``provider``: chains of 1 and ``nodes + 1`` tiny nodes."""
    try:
        one = _ort_chain_seconds(provider, 1, iters)
        many = _ort_chain_seconds(provider, nodes + 1, iters)
    except ImportError:
        return None
    per_node = max((many - one) / nodes, 1e-9)
    return per_node, max(one - per_node, 0.0)


def calibrate(device: str = "cpu", *, ort_provider: str | None = None, tf32: bool = False,
              matmul_size: int | None = None, copy_bytes: int | None = None, iters: int = 10,
              precisions: Sequence[str] = ("float32", "float16", "bfloat16")) -> DeviceConstants:
    """Measure a device's GEMM throughput, copy and gather bandwidth and per-kernel launch time.

    Args:
        device: torch device of the matmul, copy and gather ("cuda", "cuda:1", "cpu").
        ort_provider: "cuda" or "cpu": launch time from a chain of tiny ONNX Runtime nodes on that
            provider (the ORT runtimes' overhead); None: from a chain of tiny torch ops.
        tf32: fp32 matmul in TF32 (set it as the benchmark runs its fp32 GEMMs).
        matmul_size: N of the N x N x N matmul; default 8192 on a GPU, 1024 on a CPU.
        copy_bytes: size of the copied buffer and of the gathered output; default 512 MiB on a GPU,
            32 MiB on a CPU.
        precisions: GEMM element types to time (on a CPU only float32: its fp16/bf16 matmuls are
            not what a GPU benchmark needs and can be very slow).
    """
    import torch

    target = torch.device(device)
    cuda = target.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(target)) if cuda else (lambda: None)
    size = matmul_size or (8192 if cuda else 1024)
    total = copy_bytes or (512 * 2**20 if cuda else 32 * 2**20)
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    rates = {}
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        for name in precisions if cuda else ("float32",):
            a = torch.randn(size, size, device=target, dtype=dtypes[name])
            b = torch.randn(size, size, device=target, dtype=dtypes[name])
            rates[name] = 2 * size**3 / _median_seconds(lambda: torch.mm(a, b), sync, 2, iters)  # noqa: B023
            del a, b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32
    source_buffer = torch.empty(total // 4, device=target, dtype=torch.float32).uniform_()
    destination = torch.empty_like(source_buffer)
    copy_rate = 2 * total / _median_seconds(lambda: destination.copy_(source_buffer), sync, 2, iters)
    width = 64  # rows of 256 bytes, about an fp32 embedding row of D = 64
    table = source_buffer.view(-1, width)
    index = torch.randint(0, table.shape[0], (table.shape[0],), device=target)
    gathered = torch.empty_like(table)
    gather_bytes = index.numel() * index.element_size() + 2 * gathered.numel() * 4
    gather_rate = gather_bytes / _median_seconds(lambda: torch.index_select(table, 0, index, out=gathered), sync, 2,
                                                 iters)
    del source_buffer, destination, table, index, gathered
    overheads = _ort_overheads(ort_provider) if ort_provider else None
    how = f"ONNX Runtime {ort_provider} IOBinding runs of 1 and 201 tiny nodes"
    if overheads is None:
        tiny = torch.zeros(1, device=target)
        overheads = _median_seconds(lambda: [tiny.add_(1.0) for _ in range(200)], sync, 2, iters) / 200, 0.0
        how = "a torch op chain"
    launch, call = overheads
    name = torch.cuda.get_device_name(target) if cuda else "cpu"
    return DeviceConstants(
        device=name, gemm_flops_per_s=rates, bandwidth_bytes_per_s=copy_rate, gather_bandwidth_bytes_per_s=gather_rate,
        launch_s=launch, call_s=call, source=f"calibrate(device={device!r}): {size}^3 matmul (TF32 {tf32}), "
                                            f"{total / 2**20:.0f} MiB copy and row gather, launch and call from {how}")

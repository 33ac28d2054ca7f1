"""fp16/bf16 copies of an exported model: conversion by ORT's and torch.onnx's tools, parity vs fp32 torch."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from amgp_fx.export import ParityError, export_onnx
from amgp_fx.export_precision import (TOLERANCES, PrecisionError, cast_module, convert_precision, export_bf16)
from amgp_fx.latency_model import DeviceConstants, predict_latency


@pytest.fixture(scope="module")
def dlrm_fp32(tmp_path_factory):
    from amgp_fx import models

    torch.manual_seed(0)
    model = models.build_model("dlrm", "small")
    inputs = model.example_inputs(64)
    path = export_onnx(model, inputs, tmp_path_factory.mktemp("precision") / "dlrm.onnx").path
    return model, inputs, path


def initializer_types(path) -> set[int]:
    return {init.data_type for init in onnx.load(str(path)).graph.initializer}


def test_fp16_loads_on_cpu_with_parity_and_fp32_io(dlrm_fp32):
    model, inputs, path = dlrm_fp32
    report = convert_precision(path, "fp16", model, inputs, provider="cpu")
    assert report.precision == "fp16" and report.path.endswith("dlrm-fp16.onnx") and report.provider == "cpu"
    assert (report.atol, report.rtol) == TOLERANCES["fp16"][:2] and "mantissa" in report.tolerance_reason
    assert 0 < report.max_abs_diff <= report.atol  # rounded, but within the stated tolerance
    assert "convert_float_to_float16" in report.converter and report.kept_fp32_ops == ()
    converted = onnx.load(report.path)
    assert TensorProto.FLOAT16 in initializer_types(report.path)
    assert TensorProto.FLOAT not in {init.data_type for init in converted.graph.initializer
                                     if init.name.endswith("weight")}
    assert converted.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # keep_io_types
    assert converted.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    # the time model reads the converted graph: same GEMM FLOPs, fewer bytes, fp16 GEMM rate used
    constants = DeviceConstants("fixed", {"float32": 1e12, "float16": 4e12}, 1e11, 1e11, 0.0)
    fp32, fp16 = (predict_latency(p, 4096, constants) for p in (path, report.path))
    assert fp16.flops == fp32.flops and fp16.bytes < fp32.bytes and fp16.unshaped_nodes == 0


def test_fp16_keeps_ops_in_fp32_that_the_provider_cannot_run(dlrm_fp32, monkeypatch):
    """A provider without an fp16 Gemm kernel: the load error names it, Gemm stays fp32, the report says so."""
    import amgp_fx.bench

    model, inputs, path = dlrm_fp32
    real = amgp_fx.bench.make_ort_session

    def no_fp16_gemm(file, provider="cpu", **kwargs):
        graph = onnx.load(str(file)).graph
        weights = {init.name: init.data_type for init in graph.initializer}
        if any(n.op_type == "Gemm" and weights.get(n.input[1]) == TensorProto.FLOAT16 for n in graph.node):
            raise RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for "
                               "Gemm(13) node with name 'node_linear'")
        return real(file, provider, **kwargs)

    monkeypatch.setattr(amgp_fx.bench, "make_ort_session", no_fp16_gemm)
    report = convert_precision(path, "fp16", model, inputs, provider="cpu", path=path.replace(".onnx", "-h.onnx"))
    assert report.kept_fp32_ops == ("Gemm",)
    graph = onnx.load(report.path).graph
    weights = {init.name: init.data_type for init in graph.initializer}
    cast_to_fp32 = {n.output[0] for n in graph.node if n.op_type == "Cast"
                    and any(a.name == "to" and a.i == TensorProto.FLOAT for a in n.attribute)}
    gemms = [n for n in graph.node if n.op_type == "Gemm"]
    assert gemms and all(weights.get(n.input[1]) == TensorProto.FLOAT or n.input[1] in cast_to_fp32 for n in gemms)
    assert any(t == TensorProto.FLOAT16 for name, t in weights.items() if name.startswith("embeddings"))
    assert report.max_abs_diff <= report.atol


def test_parity_failure_removes_the_file(dlrm_fp32, tmp_path):
    model, inputs, path = dlrm_fp32
    target = tmp_path / "tight.onnx"
    with pytest.raises(ParityError, match=r"differs from fp32 PyTorch.*1e-09"):
        convert_precision(path, "fp16", model, inputs, path=target, atol=1e-9, rtol=0.0)
    assert not target.exists()


def test_bf16_export_structure_and_cpu_refusal(dlrm_fp32, tmp_path):
    model, inputs, path = dlrm_fp32
    report = export_bf16(model, inputs, tmp_path / "bf16.onnx")
    graph = onnx.load(report.path).graph
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # fp32 in, cast inside
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert TensorProto.BFLOAT16 in initializer_types(report.path)
    import onnxruntime

    try:  # ORT's CPU provider has no bf16 Gemm (1.32): the refusal must say so; a build that has one passes
        onnxruntime.InferenceSession(report.path, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001
        target = tmp_path / "refused.onnx"
        with pytest.raises(PrecisionError, match=r"no bfloat16 kernel for op type\(s\) .*Gemm.*CUDA provider"):
            convert_precision(path, "bf16", model, inputs, provider="cpu", path=target)
        assert not target.exists()
    else:
        assert convert_precision(path, "bf16", model, inputs, provider="cpu").max_abs_diff <= TOLERANCES["bf16"][0]


def test_bf16_error_on_a_gpu_provider_names_the_ops_and_no_cpu_advice(dlrm_fp32, tmp_path, monkeypatch):
    """A provider whose load error names no node (as ORT 1.31's CUDA provider did): the message names
    the op types that have no bf16 kernel there, and never sends the user to the CUDA provider."""
    import amgp_fx.bench

    model, inputs, path = dlrm_fp32
    real = amgp_fx.bench.make_ort_session

    def cuda_like(file, provider="cpu", **kwargs):  # the CPU provider's kernels, an unhelpful message
        try:
            return real(file, "cpu", **kwargs)
        except Exception as error:  # noqa: BLE001
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : kernel lookup failed") from error

    monkeypatch.setattr(amgp_fx.bench, "make_ort_session", cuda_like)
    with pytest.raises(PrecisionError) as caught:
        convert_precision(path, "bf16", model, inputs, provider="cuda", path=tmp_path / "bf16.onnx")
    message = str(caught.value)
    assert "cuda provider" in message and "Gemm" in message and "fp16" in message
    assert "runs on the CUDA provider" not in message and "onnxruntime-gpu" not in message
    assert not (tmp_path / "bf16.onnx").exists()


class _Elementwise(torch.nn.Module):
    """Embedding lookup and elementwise ops only: no GEMM, so a provider's missing bf16 kernels are
    all for ops that can run in fp32 without losing what bf16 is for."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Embedding(50, 8)
        self.scale = torch.nn.Parameter(torch.randn(8))

    def forward(self, dense, ids):
        return (self.table(ids) * self.scale + dense).relu().sum(-1)


def test_bf16_keeps_ops_without_a_kernel_in_fp32(tmp_path):
    torch.manual_seed(0)
    model = _Elementwise()
    inputs = (torch.randn(32, 8), torch.randint(0, 50, (32,)))
    path = export_onnx(model, inputs, tmp_path / "elementwise.onnx").path
    report = convert_precision(path, "bf16", model, inputs, provider="cpu")
    assert report.kept_fp32_ops and report.max_abs_diff <= report.atol
    graph = onnx.load(report.path).graph
    assert set(report.kept_fp32_ops) <= {n.op_type for n in graph.node}
    values = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    cast_up = {n.output[0] for n in graph.node if n.op_type == "Cast"
               and any(a.name == "to" and a.i == TensorProto.FLOAT for a in n.attribute)}
    for node in graph.node:
        if node.op_type in report.kept_fp32_ops:  # every float input is fp32 (cast up or fp32 already)
            assert all(name in cast_up or values.get(name) != TensorProto.BFLOAT16 for name in node.input if name)
    assert TensorProto.BFLOAT16 in initializer_types(report.path)  # the table stays bf16


def test_cast_module_and_unknown_precision(dlrm_fp32):
    model, inputs, _ = dlrm_fp32
    assert cast_module(model, "fp32") is model
    half = cast_module(model, "bf16")
    out = half(*inputs)
    assert out.dtype == torch.float32 and next(model.parameters()).dtype == torch.float32  # a copy was cast
    atol, rtol, _ = TOLERANCES["bf16"]
    expected = model(*inputs).detach()
    assert np.all(np.abs((out - expected).detach().numpy()) <= atol + rtol * np.abs(expected.numpy()))
    with pytest.raises(PrecisionError, match="unknown precision 'int8'"):
        cast_module(model, "int8")


def _cuda_provider() -> bool:
    from amgp_fx.bench import cuda_provider_available

    return torch.cuda.is_available() and cuda_provider_available()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run tools/gpu_check.sh)")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_low_precision_on_the_cuda_provider(dlrm_fp32, tmp_path, precision):
    """On the GPU both formats load on ORT's CUDA provider and stay within their stated tolerance."""
    if not _cuda_provider():
        pytest.skip("onnxruntime-gpu (CUDA provider) not installed")
    model, inputs, path = dlrm_fp32
    report = convert_precision(path, precision, model, inputs, provider="cuda", path=tmp_path / f"{precision}.onnx")
    assert report.provider == "cuda" and report.max_abs_diff <= report.atol
    assert report.kept_fp32_ops == ()  # the CUDA provider has fp16/bf16 kernels for every DLRM op


@pytest.fixture(scope="module")
def pruned_dcn(tmp_path_factory):
    """A pruned DCN-v2 as amgp-fx hands it over: a torch.export GraphModule whose batch-norm and
    dropout nodes carry training literals that ``eval_mode`` (the modules' training flags) leaves on."""
    import amgp_fx
    from amgp_fx import models

    torch.manual_seed(0)
    model = models.build_model("dcn_v2", "small")
    graph = amgp_fx.analyze(model, model.example_inputs(8))
    keep = {g.id: list(range(0, g.size, 2)) for g in graph.prunable_groups(("hidden",))}
    amgp_fx.shrink_(graph, keep)
    inputs = model.example_inputs(64)
    path = export_onnx(graph.module, inputs, tmp_path_factory.mktemp("dcn") / "dcn.onnx").path
    return graph.module, inputs, path


def test_fp16_of_a_pruned_graph_module_is_compared_with_its_inference_outputs(pruned_dcn):
    """The fp32 reference must be the model in inference mode (dropout off, running statistics), the
    mode the ONNX file was exported in, and computing it must not update the batch-norm statistics."""
    model, inputs, path = pruned_dcn
    buffers = {name: value.clone() for name, value in model.named_buffers()}
    report = convert_precision(path, "fp16", model, inputs, provider="cpu")
    assert report.max_abs_diff <= report.atol
    assert all(torch.equal(buffers[name], value) for name, value in model.named_buffers())
    half = cast_module(model, "fp16")  # what the torch runtimes time: inference mode as well
    with torch.no_grad():
        first, second = half(*inputs), half(*inputs)
    assert torch.equal(first, second)  # no dropout
    assert all(torch.equal(buffers[name], value) for name, value in model.named_buffers())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run tools/gpu_check.sh)")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_pruned_dcn_low_precision_on_the_cuda_provider(pruned_dcn, tmp_path, precision):
    """The H100 run's DCN-v2 failures, checked where they happened: the pruned model meets its tolerance
    in both formats on the CUDA provider; ops kept in fp32, if any, are never the GEMMs."""
    from amgp_fx.export_precision import BF16_CORE_OPS

    if not _cuda_provider():
        pytest.skip("onnxruntime-gpu (CUDA provider) not installed")
    model, inputs, path = pruned_dcn
    report = convert_precision(path, precision, model, inputs, provider="cuda", path=tmp_path / f"{precision}.onnx")
    assert report.provider == "cuda" and report.max_abs_diff <= report.atol
    assert not set(report.kept_fp32_ops) & BF16_CORE_OPS

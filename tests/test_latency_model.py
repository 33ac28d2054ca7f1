"""The per-op-class time model: costs of hand-built ONNX graphs and of DLRM, with fixed device constants."""
from __future__ import annotations

import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from amgp_fx.latency_model import DeviceConstants, calibrate, graph_costs, predict_latency, predicted_speedup

COMPUTE_BOUND = DeviceConstants("fixed", {"float32": 1e9}, 1e30, 1e30, 0.0)  # bytes cost nothing
MEMORY_BOUND = DeviceConstants("fixed", {"float32": 1e30}, 1e9, 5e8, 0.0)  # FLOPs cost nothing


def mlp_graph(hidden: int, batch_dim="batch"):
    """X (B, 16) @ W1 (16, hidden) -> Relu -> @ W2 (hidden, 8): GEMM FLOPs 2B(16 h + 8 h)."""
    w1 = numpy_helper.from_array(torch.ones(16, hidden).numpy(), "w1")
    w2 = numpy_helper.from_array(torch.ones(hidden, 8).numpy(), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, 8])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def gather_graph(rows: int, dim: int = 16):
    table = numpy_helper.from_array(torch.zeros(rows, dim).numpy(), "table")
    node = helper.make_node("Gather", ["table", "ids"], ["rows"], name="lookup")
    graph = helper.make_graph([node], "lookup", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"])],
                              [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", dim])], [table])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_half_the_gemm_flops_predicts_half_the_time_when_compute_bound():
    batch = 256
    dense, half = mlp_graph(32), mlp_graph(16)
    assert predict_latency(dense, batch, COMPUTE_BOUND).flops == 2 * batch * (16 * 32 + 32 * 8)
    assert predict_latency(half, batch, COMPUTE_BOUND).flops * 2 == predict_latency(dense, batch, COMPUTE_BOUND).flops
    assert predicted_speedup(dense, half, batch, COMPUTE_BOUND) == pytest.approx(2.0)


def test_launch_overhead_and_bytes_enter_the_prediction_as_stated():
    batch, launch = 256, 1e-4
    constants = DeviceConstants("fixed", {"float32": 1e9}, 1e30, 1e30, launch)
    dense_gemm = [2 * batch * 16 * 32 / 1e9, 2 * batch * 32 * 8 / 1e9]
    half_gemm = [2 * batch * 16 * 16 / 1e9, 2 * batch * 16 * 8 / 1e9]
    # each kernel costs max(launch, work); the Relu's bytes are free here, so it costs one launch
    expected = (sum(max(launch, t) for t in dense_gemm) + launch) / (sum(max(launch, t) for t in half_gemm) + launch)
    assert predicted_speedup(mlp_graph(32), mlp_graph(16), batch, constants) == pytest.approx(expected)
    assert 1.0 < expected < 2.0  # launches dilute the FLOPs ratio
    # memory-bound: time is bytes / bandwidth: inputs read + outputs written, weights included
    prediction = predict_latency(mlp_graph(32), batch, MEMORY_BOUND)
    bytes_ = 4 * ((batch * 16 + 16 * 32 + batch * 32) + (batch * 32 + batch * 32) + (batch * 32 + 32 * 8 + batch * 8))
    assert prediction.bytes == bytes_
    assert prediction.seconds == pytest.approx(bytes_ / 1e9)
    assert prediction.kernels == 3 and prediction.unshaped_nodes == 0
    with_call = DeviceConstants("fixed", {"float32": 1e30}, 1e9, 5e8, 0.0, call_s=2e-3)
    assert predict_latency(mlp_graph(32), batch, with_call).seconds == pytest.approx(bytes_ / 1e9 + 2e-3)


def test_gather_bytes_are_the_rows_read_not_the_table():
    batch = 1000
    for rows in (100, 1_000_000):  # the table's size does not matter, only the rows gathered
        (cost,) = graph_costs(gather_graph(rows), batch)
        assert cost.op_class == "gather"
        assert cost.bytes == batch * 8 + 2 * batch * 16 * 4  # int64 ids + rows read + output written
    assert predict_latency(gather_graph(100), batch, MEMORY_BOUND).seconds == pytest.approx(136 * batch / 5e8)


def test_shape_ops_are_free():
    model = mlp_graph(32)
    shape = helper.make_node("Shape", ["y"], ["s"], name="shape")
    reshape = helper.make_node("Reshape", ["y", "s"], ["z"], name="reshape")
    model.graph.node.extend([shape, reshape])
    costs = {c.name: c for c in graph_costs(model, 64)}
    assert costs["shape"].op_class == costs["reshape"].op_class == "free"
    assert predict_latency(model, 64, MEMORY_BOUND).kernels == 3


@pytest.fixture(scope="module")
def dlrm_pair(tmp_path_factory):
    """A DLRM with real MLP widths and its amgp-fx pruned copy (half of every hidden group), as ONNX."""
    import amgp_fx
    from amgp_fx import models
    from amgp_fx.export import export_onnx

    torch.manual_seed(0)
    kwargs = dict(table_sizes=(1000,) * 8, embedding_dim=16, bottom_mlp=(256, 64, 16), top_mlp=(256, 128))
    dense = models.build_model("dlrm", "small", num_dense=13, **kwargs)
    inputs = dense.example_inputs(8)
    graph = amgp_fx.analyze(models.build_model("dlrm", "small", num_dense=13, **kwargs), inputs)
    from amgp_fx.pruning_plan import prune_

    prune_(graph, 0.5, kinds=("hidden",))
    folder = tmp_path_factory.mktemp("latency_model")
    dense_path = export_onnx(dense, inputs, folder / "dense.onnx", parity=False).path
    pruned_path = export_onnx(graph.module, inputs, folder / "pruned.onnx", parity=False).path
    return dense, graph.module, dense_path, pruned_path


def test_pruned_dlrm_speedup_is_between_one_and_its_flops_ratio(dlrm_pair):
    from amgp_fx.bench import count_forward_flops

    dense, pruned, dense_path, pruned_path = dlrm_pair
    batch = 4096
    inputs = dense.example_inputs(batch)
    gpu_like = DeviceConstants("fixed", {"float32": 50e12}, 3e12, 1e12, 5e-6)
    dense_pred, pruned_pred = (predict_latency(p, batch, gpu_like) for p in (dense_path, pruned_path))
    # the graph walk counts the same GEMM FLOPs as FlopCounterMode on the torch model
    assert dense_pred.flops == count_forward_flops(dense, inputs)
    assert pruned_pred.flops == count_forward_flops(pruned, inputs)
    flops_ratio = dense_pred.flops / pruned_pred.flops
    speedup = predicted_speedup(dense_path, pruned_path, batch, gpu_like)
    assert 1.0 < speedup < flops_ratio
    assert dense_pred.unshaped_nodes == pruned_pred.unshaped_nodes == 0
    assert pruned_pred.seconds_by_class["gather"] == pytest.approx(dense_pred.seconds_by_class["gather"])
    assert dense_pred.to_dict()["seconds_by_class"]["gemm"] > pruned_pred.seconds_by_class["gemm"]


def test_calibrate_on_cpu_gives_usable_constants():
    constants = calibrate("cpu", ort_provider="cpu", matmul_size=64, copy_bytes=2**20, iters=2)
    assert set(constants.gemm_flops_per_s) == {"float32"}
    assert constants.launch_s > 0 and constants.call_s >= 0 and constants.bandwidth_bytes_per_s > 0
    assert "ONNX Runtime cpu" in constants.source
    assert DeviceConstants.from_dict(constants.to_dict()) == constants
    assert constants.gemm_rate("bfloat16") == constants.gemm_flops_per_s["float32"]
    with pytest.raises(ValueError, match="positive rates"):
        DeviceConstants("x", {"float32": 0.0}, 1.0, 1.0, 0.0)

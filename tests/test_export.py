"""ONNX export: every reference model and EmbeddingBag models pass the checker and ORT parity;
mismatches raise ParityError; failures leave no file behind; import stays lean."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from amgp_fx.bench import cuda_provider_available, make_ort_session
from amgp_fx.export import DEFAULT_ATOL, DEFAULT_OPSET, ExportError, ParityError, export_onnx
from amgp_fx.passes.inference_mode import inference_graph

from amgp_fx import models  # noqa: E402


def leftovers(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder))


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_reference_model_exports_with_parity(name, tmp_path):
    torch.manual_seed(0)
    model = models.build_model(name, preset="small")
    report = export_onnx(model, model.example_inputs(6), tmp_path / f"{name}.onnx")
    assert model.training, "export must restore the caller's train mode"
    assert report.input_names == ("dense", "sparse") and report.opset == DEFAULT_OPSET
    assert report.max_abs_diff is not None and report.max_abs_diff <= report.atol + report.rtol * 10
    assert report.parity_batch_sizes == (6, 9, 1)
    onnx.checker.check_model(report.path)
    graph = onnx.load(report.path).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert "Loop" not in {node.op_type for node in graph.node}
    assert leftovers(tmp_path) == [f"{name}.onnx"]


class DlrmWithBags(nn.Module):
    """DLRM-code style: one nn.EmbeddingBag per field, looked up with offsets = arange(B), plus a
    multi-hot field read as 2-D bags, a BatchNorm and a Dropout (so train/eval matters)."""

    def __init__(self, table_sizes=(30, 40, 50), dim: int = 8) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.EmbeddingBag(rows, dim, mode="sum") for rows in table_sizes)
        self.tags = nn.EmbeddingBag(20, dim, mode="mean")
        self.bottom = nn.Sequential(nn.Linear(13, dim), nn.BatchNorm1d(dim), nn.ReLU(), nn.Dropout(0.3))
        self.top = nn.Linear(dim * (len(table_sizes) + 2), 1)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        offsets = torch.arange(sparse.shape[0], device=sparse.device)
        pooled = [table(sparse[:, f], offsets) for f, table in enumerate(self.tables)]
        tags = self.tags(sparse[:, 3:6] % 20)
        return self.top(torch.cat([self.bottom(dense), *pooled, tags], dim=1)).squeeze(1)


def bag_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch)
    return torch.randn(batch, 13, generator=generator), torch.randint(0, 30, (batch, 26), generator=generator)


def test_embedding_bag_model_exports_without_loop(tmp_path):
    torch.manual_seed(0)
    model = DlrmWithBags()
    report = export_onnx(model, bag_inputs(8), tmp_path / "bags.onnx")
    assert report.passes_applied == ("embedding_bag_to_gather",)
    assert "Loop" not in {node.op_type for node in onnx.load(report.path).graph.node}
    assert report.max_abs_diff <= report.atol


def test_pruned_graph_module_exports_in_eval_mode(tmp_path):
    torch.manual_seed(0)
    model = DlrmWithBags().train()
    dynamic = ({0: torch.export.Dim("batch")},) * 2
    graph_module = torch.export.export(model, bag_inputs(8), strict=False, dynamic_shapes=dynamic).module()
    report = export_onnx(graph_module, bag_inputs(8), tmp_path / "pruned.onnx")
    assert report.passes_applied == ("inference_mode", "embedding_bag_to_gather")
    session = make_ort_session(report.path)
    dense, sparse = bag_inputs(11)
    (logits,) = session.run(None, {"dense": dense.numpy(), "sparse": sparse.numpy()})
    expected = model.eval()(dense, sparse).detach().numpy()  # eval: dropout off, running statistics
    np.testing.assert_allclose(logits, expected, atol=DEFAULT_ATOL, rtol=1e-3)
    dropout_flags = [n.args[2] for n in graph_module.graph.nodes if n.target is torch.ops.aten.dropout.default]
    assert dropout_flags == [True], "the caller's GraphModule must not be modified"


def test_static_batch_and_external_data(tmp_path):
    model = models.build_model("dlrm", preset="small")
    report = export_onnx(model, model.example_inputs(4), tmp_path / "static.onnx", dynamic_batch=False,
                         external_data=True)
    assert report.external_data_bytes > 0 and report.parity_batch_sizes == (4,)
    assert leftovers(tmp_path) == ["static.onnx", "static.onnx.data"]
    dims = onnx.load(report.path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 4]
    assert json.loads(json.dumps(report.to_dict()))["path"] == report.path


def test_mismatch_raises_parity_error(tmp_path, monkeypatch):
    import onnx_ir as ir
    from torch.onnx import ONNXProgram

    original_save = ONNXProgram.save

    def save_with_perturbed_bias(self, destination, **kwargs):
        for name, initializer in self.model.graph.initializers.items():
            if name.endswith("bias"):  # perturb one bias of the top MLP by 0.5
                initializer.const_value = ir.tensor(initializer.const_value.numpy() + 0.5, name=name)
                break
        return original_save(self, destination, **kwargs)

    monkeypatch.setattr(ONNXProgram, "save", save_with_perturbed_bias)
    model = models.build_model("dlrm", preset="small")
    with pytest.raises(ParityError, match=r"output 'output' differs from PyTorch at batch 4: max abs diff") as info:
        export_onnx(model, model.example_inputs(4), tmp_path / "bad.onnx")
    assert info.value.max_abs_diff > info.value.atol and info.value.output_name == "output"
    assert "use_tf32" not in str(info.value)
    assert leftovers(tmp_path) == [], "a failed parity check must not leave the file in place"


def test_tf32_tolerance_is_stated():
    from amgp_fx.export import TF32_ATOL, _compare

    with pytest.raises(ParityError, match="TF32") as info:
        _compare("logits", 8, np.ones(3, np.float32) + 0.1, np.ones(3, np.float32), TF32_ATOL, 0.0, "cuda", True)
    assert info.value.batch_size == 8 and info.value.max_rel_diff == pytest.approx(0.1, rel=1e-5)


class Unexportable(nn.Module):
    """torch.searchsorted has no ONNX translation in torch.onnx's op library."""

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        boundaries = torch.tensor([0.0, 0.5, 1.0])
        return torch.searchsorted(boundaries, dense.contiguous()).float()


def test_unexportable_op_leaves_no_file(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous export")
    with pytest.raises(ExportError, match="could not translate the graph to ONNX"):
        export_onnx(Unexportable(), (torch.rand(4, 3),), target)
    assert target.read_bytes() == b"previous export", "the old file must survive a failed export"
    assert leftovers(tmp_path) == ["model.onnx"]


def test_unwritable_path_and_failed_save_leave_no_file(tmp_path, monkeypatch):
    model = nn.Linear(3, 1)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    with pytest.raises(ExportError, match="Pass a path in a writable folder"):
        export_onnx(model, (torch.rand(4, 3),), blocker / "model.onnx")

    from torch.onnx import ONNXProgram

    def half_write(self, destination, **kwargs):
        with open(destination, "wb") as file:
            file.write(b"\x08\x07half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ONNXProgram, "save", half_write)
    with pytest.raises(ExportError, match="No space left on device"):
        export_onnx(model, (torch.rand(4, 3),), tmp_path / "model.onnx")
    assert leftovers(tmp_path) == ["not_a_folder"]


def test_import_is_lean():
    code = ("import sys, amgp_fx, amgp_fx.export, amgp_fx.bench, amgp_fx.latency_report, amgp_fx.passes;"
            "print(sorted(m for m in ('onnxruntime', 'matplotlib', 'onnx') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(TypeError, match=r"example input \[0\]\[0\] is a float, not a tensor"):
        export_onnx(nn.Linear(2, 1), [[1.0, 2.0]], tmp_path / "x.onnx")  # the path names the bad leaf
    with pytest.raises(ExportError, match="is a folder"):
        export_onnx(nn.Linear(2, 1), (torch.rand(2, 2),), tmp_path)


def test_cuda_session_without_onnxruntime_gpu_names_the_fix(tmp_path):
    if cuda_provider_available():
        pytest.skip("onnxruntime-gpu and a GPU are present")
    report = export_onnx(nn.Linear(3, 1), (torch.rand(4, 3),), tmp_path / "linear.onnx")
    with pytest.raises(RuntimeError, match="Install onnxruntime-gpu"):
        make_ort_session(report.path, "cuda")
    with pytest.raises(ExportError, match="could not load the exported model: .*Install onnxruntime-gpu"):
        export_onnx(nn.Linear(3, 1), (torch.rand(4, 3),), tmp_path / "linear.onnx", parity_provider="cuda")
    with pytest.raises(ValueError, match="provider must be"):
        make_ort_session(report.path, "tensorrt")


class JaggedBags(nn.Module):
    """TorchRec-style jagged input: ids (N,) with offsets (B,), N != B (segment path, own dynamic dim)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags = nn.EmbeddingBag(60, 8, mode="sum")
        self.head = nn.Linear(3 + 8, 1)

    def forward(self, dense, tag_ids, tag_offsets, tag_weights):
        tags = self.tags(tag_ids, tag_offsets, per_sample_weights=tag_weights)  # (B, D)
        return self.head(torch.cat([dense, tags], dim=1)).squeeze(1)


def jagged_inputs(batch: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (batch,), generator=generator)  # empty bags included
    ids = torch.randint(0, 60, (int(lengths.sum()),), generator=generator)
    offsets = torch.cumsum(lengths, 0) - lengths
    return torch.randn(batch, 3, generator=generator), ids, offsets, torch.rand(ids.shape, generator=generator)


def test_jagged_embedding_bag_inputs_export_with_their_own_dynamic_dim(tmp_path):
    torch.manual_seed(0)
    model = JaggedBags()
    example = jagged_inputs(6)
    assert example[1].shape[0] != 6
    report = export_onnx(model, example, tmp_path / "jagged.onnx")
    assert report.passes_applied == ("embedding_bag_to_gather",) and report.parity_batch_sizes == (6,)
    graph = onnx.load(report.path).graph
    assert "Loop" not in {node.op_type for node in graph.node}
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = make_ort_session(report.path)
    other = jagged_inputs(9, seed=1)  # another B and another N
    (logits,) = session.run(None, {name: x.numpy() for name, x in zip(report.input_names, other)})
    np.testing.assert_allclose(logits, model(*other).detach().numpy(), atol=DEFAULT_ATOL, rtol=1e-3)


def test_static_graph_module_with_dynamic_batch_names_the_fix(tmp_path):
    model = models.build_model("dcn_v2", preset="small")
    static = torch.export.export(model, model.example_inputs(4), strict=False).module()  # batch baked in
    with pytest.raises(ExportError, match="fails at batch 7: .*needs dynamic_batch=False"):
        export_onnx(static, model.example_inputs(4), tmp_path / "static.onnx")
    report = export_onnx(static, model.example_inputs(4), tmp_path / "static.onnx", dynamic_batch=False)
    assert report.parity_batch_sizes == (4,) and report.max_abs_diff <= report.atol


@pytest.mark.parametrize("name", ["dlrm", "dcn_v2"])
def test_amgp_pruned_graph_exports_smaller_with_parity(name, tmp_path):
    import amgp_fx

    torch.manual_seed(0)
    model = models.build_model(name, preset="small")
    dense = export_onnx(model, model.example_inputs(8), tmp_path / "dense.onnx")
    graph = amgp_fx.analyze(model, model.example_inputs(8))
    amgp_fx.shrink_(graph, {g.id: list(range(0, g.size, 2)) for g in graph.groups if g.prunable and g.size >= 4})
    pruned = export_onnx(graph.module, model.example_inputs(8), tmp_path / "pruned.onnx")
    assert pruned.onnx_bytes < dense.onnx_bytes and pruned.max_abs_diff <= pruned.atol
    session = make_ort_session(pruned.path)
    dense_in, sparse_in = model.example_inputs(5, seed=3)
    (logits,) = session.run(None, {"dense": dense_in.numpy(), "sparse": sparse_in.numpy()})
    eval_copy, _ = inference_graph(graph.module)  # the reference: the pruned graph in eval mode
    np.testing.assert_allclose(logits, eval_copy(dense_in, sparse_in).detach().numpy(), atol=DEFAULT_ATOL, rtol=1e-3)

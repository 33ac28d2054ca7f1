"""Export passes: the EmbeddingBag rewrite keeps outputs and removes the ONNX Loop; the registry;
inference-mode literals."""
from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from amgp_fx.export import export_onnx
from amgp_fx.passes import ExportPass, PassError, PassRegistry, apply_passes, default_passes
from amgp_fx.passes.embedding_bag import fixed_size_bag, rewrite_embedding_bags, segment_bag
from amgp_fx.passes.inference_mode import eval_mode, inference_graph

BATCH = torch.export.Dim("batch")
ROWS, DIM = 40, 6


class FixedBags(nn.Module):
    """Multi-hot bags of 3 ids per sample (2-D input form) plus one id per sample (offsets = arange(B))."""

    def __init__(self, mode: str, padding_idx: int | None = None) -> None:
        super().__init__()
        self.multi = nn.EmbeddingBag(ROWS, DIM, mode=mode, padding_idx=padding_idx)
        self.single = nn.EmbeddingBag(ROWS, DIM, mode=mode)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        offsets = torch.arange(sparse.shape[0], device=sparse.device)
        return self.multi(sparse[:, :3]) + self.single(sparse[:, 3], offsets) + dense[:, :1]


class WeightedBags(nn.Module):
    """Weighted sum bags, offsets = arange(B) * 4 (a multiplied arange)."""

    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(ROWS, DIM, mode="sum")

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        ids = sparse[:, :4].reshape(-1)
        offsets = torch.arange(sparse.shape[0], device=sparse.device) * 4
        return self.bag(ids, offsets, per_sample_weights=dense[:, :4].reshape(-1))


class VariableBags(nn.Module):
    """Bags whose sizes depend on the data (segment path): sample b starts at 4b or 4b + 1."""

    def __init__(self, mode: str, padding_idx: int | None = None) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(ROWS, DIM, mode=mode, padding_idx=padding_idx)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(sparse.shape[0], device=sparse.device)
        offsets = steps * 4 + (sparse[:, 5] % 2) * (steps > 0)
        return self.bag(sparse[:, :4].reshape(-1), offsets) * dense[:, :1]


def inputs(batch: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sparse = torch.randint(0, ROWS, (batch, 6), generator=generator)
    sparse[0, :2] = 0  # padding id 0 appears, and bag 0 of VariableBags may be all padding
    return torch.rand(batch, 4, generator=generator) + 0.5, sparse


def exported(model: nn.Module) -> torch.fx.GraphModule:
    return torch.export.export(model, inputs(), strict=False, dynamic_shapes=({0: BATCH}, {0: BATCH})).module()


def bag_functions(graph_module: torch.fx.GraphModule) -> list:
    return [n.target for n in graph_module.graph.nodes if n.target in (fixed_size_bag, segment_bag)]


CASES = [
    pytest.param(lambda: FixedBags("sum"), [fixed_size_bag] * 2, id="fixed-sum"),
    pytest.param(lambda: FixedBags("mean"), [fixed_size_bag] * 2, id="fixed-mean"),
    pytest.param(lambda: FixedBags("max"), [fixed_size_bag] * 2, id="fixed-max"),
    pytest.param(lambda: FixedBags("mean", padding_idx=0), [fixed_size_bag] * 2, id="fixed-mean-padding"),
    pytest.param(lambda: FixedBags("max", padding_idx=0), [fixed_size_bag] * 2, id="fixed-max-padding"),
    pytest.param(WeightedBags, [fixed_size_bag], id="fixed-weighted"),
    pytest.param(lambda: VariableBags("sum"), [segment_bag], id="segment-sum"),
    pytest.param(lambda: VariableBags("mean", padding_idx=0), [segment_bag], id="segment-mean-padding"),
    pytest.param(lambda: VariableBags("max"), [segment_bag], id="segment-max"),
    pytest.param(lambda: VariableBags("max", padding_idx=0), [segment_bag], id="segment-max-padding"),
]


@pytest.mark.parametrize("make_model, expected_functions", CASES)
def test_embedding_bag_rewrite_preserves_outputs(make_model, expected_functions):
    torch.manual_seed(0)
    model = make_model().eval()
    graph_module = exported(model)
    rewrites = rewrite_embedding_bags(graph_module)
    assert rewrites == len(expected_functions)
    assert bag_functions(graph_module) == expected_functions
    assert not [n for n in graph_module.graph.nodes if "embedding_bag" in str(n.target)]
    for batch in (5, 9, 1):  # the rewrite holds for other batch sizes than the traced one
        case = inputs(batch, seed=batch)
        torch.testing.assert_close(graph_module(*case), model(*case), atol=1e-6, rtol=1e-5)


def test_segment_bag_include_last_offset_and_empty_bags():
    weight = torch.randn(ROWS, DIM)
    indices = torch.tensor([3, 4, 5, 6, 7])
    offsets = torch.tensor([0, 2, 2, 5, 5])  # bags: [3, 4], [], [5, 6, 7], [] (last offset = N)
    for mode, mode_id in (("sum", 0), ("mean", 1), ("max", 2)):
        expected = nn.functional.embedding_bag(indices, weight, offsets, mode=mode, include_last_offset=True)
        torch.testing.assert_close(segment_bag(weight, indices, offsets, mode_id, None, True, None), expected)


def onnx_op_types(path: str) -> set[str]:
    return {node.op_type for node in onnx.load(path).graph.node}


def test_embedding_bag_pass_removes_onnx_loop(tmp_path):
    # the segment path's export is checked in tests/test_export.py (jagged inputs, no Loop)
    torch.manual_seed(0)
    model = FixedBags("sum")
    without = export_onnx(model, inputs(), tmp_path / "loop.onnx", passes=())
    with_pass = export_onnx(model, inputs(), tmp_path / "gather.onnx")
    assert "Loop" in onnx_op_types(without.path), "the unrewritten bag should export to an ONNX Loop"
    assert "Loop" not in onnx_op_types(with_pass.path)
    assert with_pass.passes_applied == ("embedding_bag_to_gather",)
    assert with_pass.max_abs_diff <= with_pass.atol


def test_bag_with_used_auxiliary_outputs_is_left_alone():
    class UsesBagSize(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(ROWS, DIM))

        def forward(self, dense, sparse):
            output, _, bag_size, _ = torch.ops.aten._embedding_bag(self.weight, sparse[:, :2].reshape(-1),
                                                                  torch.arange(sparse.shape[0]) * 2, False, 0)
            return output.sum(1) + bag_size

    graph_module = exported(UsesBagSize())
    assert rewrite_embedding_bags(graph_module) == 0


def test_registry_rejects_duplicates_and_copies_are_independent():
    registry = default_passes()
    with pytest.raises(ValueError, match="already registered"):
        registry.register(ExportPass("embedding_bag_to_gather", lambda gm: 0))
    extended = registry.with_pass(ExportPass("noop", lambda gm: 0))
    assert "noop" in extended.names() and "noop" not in registry.names()
    assert "noop" not in default_passes().names()
    with pytest.raises(KeyError, match="known passes"):
        registry.remove("missing")


def test_apply_passes_reports_and_rejects_output_changes():
    model = FixedBags("sum").eval()
    graph_module = exported(model)

    def scale_output(gm):  # a wrong "rewrite": doubles the output
        output = next(n for n in gm.graph.nodes if n.op == "output")
        result = output.args[0][0]
        with gm.graph.inserting_before(output):
            doubled = gm.graph.call_function(torch.ops.aten.mul.Tensor, (result, 2.0))
        output.args = ((doubled,),)
        return 1

    results = apply_passes(graph_module, inputs(), default_passes())
    assert [(r.name, r.rewrites) for r in results] == [("embedding_bag_to_gather", 2), ("drop_noop_squeezes", 0)]
    with pytest.raises(PassError, match="'doubles' changed the model's outputs"):
        apply_passes(graph_module, inputs(), PassRegistry([ExportPass("doubles", scale_output)]))
    with pytest.raises(PassError, match="'crashes' failed: ZeroDivisionError"):
        apply_passes(graph_module, inputs(), [ExportPass("crashes", lambda gm: 1 // 0)])


def test_inference_graph_flips_training_literals_on_a_copy():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 1))
    model.train()
    graph_module = torch.export.export(model, (torch.randn(6, 4),), strict=False).module()
    copy, changed = inference_graph(graph_module)
    assert changed == 3  # dropout flag, batch-norm flag, num_batches_tracked += 1
    flags = [n.args[2] for n in graph_module.graph.nodes if n.target is torch.ops.aten.dropout.default]
    assert flags == [True], "the caller's graph must keep its training literals"
    assert any(parameter is model[1].weight for parameter in copy.parameters()), "parameters are shared"
    batch = torch.randn(6, 4)
    tracked_before = model[1].num_batches_tracked.clone()
    torch.testing.assert_close(copy(batch), model.eval()(batch))
    assert torch.equal(model[1].num_batches_tracked, tracked_before)


def test_eval_mode_restores_flags():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    model[1].eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, False]


@pytest.mark.parametrize("name", ["dlrm", "dcn_v2", "wide_deep"])
def test_fuse_embedding_lookups_preserves_outputs(name, tmp_path):
    from amgp_fx import models
    from amgp_fx.passes.fuse_embeddings import FUSE_EMBEDDINGS_PASS, fuse_embedding_lookups

    torch.manual_seed(0)
    model = models.build_model(name, preset="small").eval()
    dynamic = ({0: BATCH},) * 2
    graph_module = torch.export.export(model, model.example_inputs(5), strict=False, dynamic_shapes=dynamic).module()
    groups = 2 if name == "wide_deep" else 1  # wide_deep also has wide (D = 1) tables: a second group
    assert fuse_embedding_lookups(graph_module) == groups * len(model.table_sizes)
    lookups = [n for n in graph_module.graph.nodes if n.target is torch.ops.aten.embedding.default]
    assert len(lookups) == groups
    for batch in (5, 8):
        case = model.example_inputs(batch, seed=batch)
        torch.testing.assert_close(graph_module(*case), model(*case))
    report = export_onnx(model, model.example_inputs(5), tmp_path / "fused.onnx",
                         passes=default_passes().with_pass(FUSE_EMBEDDINGS_PASS))
    assert report.passes_applied == ("fuse_embedding_lookups",)
    gathers = [n for n in onnx.load(report.path).graph.node if n.op_type == "Gather"]
    assert len(gathers) == len(lookups), "one Gather per fused group, no per-column selects"


def test_fuse_skips_when_a_lookup_is_used_early():
    class EarlyUse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Embedding(10, 4), nn.Embedding(10, 4)

        def forward(self, dense, sparse):
            first = self.a(sparse[:, 0]) * 2  # used before the second ids exist
            return first + self.b(sparse[:, 1] % 5)

    from amgp_fx.passes.fuse_embeddings import fuse_embedding_lookups

    graph_module = exported(EarlyUse().eval())
    assert fuse_embedding_lookups(graph_module) == 0


def test_attention_dropout_literal_is_zeroed():
    class Attention(nn.Module):
        def forward(self, x):
            return nn.functional.scaled_dot_product_attention(x, x, x, dropout_p=0.5)

    graph_module = torch.export.export(Attention(), (torch.randn(2, 3, 4),), strict=False).module()
    copy, changed = inference_graph(graph_module)
    x = torch.randn(2, 3, 4)
    assert changed == 1
    torch.testing.assert_close(copy(x), nn.functional.scaled_dot_product_attention(x, x, x))

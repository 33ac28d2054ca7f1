"""gather_pairs_from_flat: x[:, li, lj] with constant index buffers becomes one Gather of x.flatten(1);
the outputs stay the same, the ONNX graph loses its Transpose/GatherND/Transpose, and anything else is left alone."""
import onnx
import pytest
import torch

from amgp_fx import models
from amgp_fx.export import export_onnx
from amgp_fx.passes import apply_passes, default_passes
from amgp_fx.passes.pair_gather import PAIR_GATHER_PASS, gather_pairs_from_flat


class Pairs(torch.nn.Module):
    def __init__(self, rows, cols):
        super().__init__()
        self.register_buffer("li", torch.as_tensor(rows), persistent=False)
        self.register_buffer("lj", torch.as_tensor(cols), persistent=False)

    def forward(self, x):
        z = torch.bmm(x, x.transpose(1, 2))
        return z[:, self.li, self.lj] * 2


def _graph(model, *inputs):
    return torch.export.export(model, inputs).module()


@pytest.mark.parametrize("rows, cols", [
    (torch.tril_indices(5, 5, offset=-1)[0], torch.tril_indices(5, 5, offset=-1)[1]),
    ([4, -1, 0, -5], [-2, 3, 0, 1]),  # negative indices count from the end
])
def test_outputs_are_unchanged(rows, cols):
    x = torch.randn(3, 5, 4)
    graph_module = _graph(Pairs(rows, cols), x)
    expected = graph_module(x)
    assert gather_pairs_from_flat(graph_module) == 1
    graph_module.recompile()
    assert not any(n.target == torch.ops.aten.index.Tensor for n in graph_module.graph.nodes)
    torch.testing.assert_close(graph_module(x), expected, rtol=0, atol=0)


def test_index_from_an_input_or_a_single_axis_is_left_alone():
    class Dynamic(torch.nn.Module):
        def forward(self, z, rows, cols):
            return z[:, rows, cols]

    class OneAxis(Pairs):
        def forward(self, x):
            return x[:, self.li]

    z, rows = torch.randn(2, 4, 4), torch.tensor([0, 3])
    assert gather_pairs_from_flat(_graph(Dynamic(), z, rows, rows)) == 0
    assert gather_pairs_from_flat(_graph(OneAxis([0, 1], [1, 0]), z)) == 0


def test_dlrm_exports_its_interaction_as_one_gather_with_parity():
    torch.manual_seed(0)
    model = models.build_model("dlrm", "small").eval()
    inputs = tuple(x.cpu() for x in model.example_inputs(8))
    graph_module = _graph(model, *inputs)
    results = apply_passes(graph_module, inputs, default_passes().with_pass(PAIR_GATHER_PASS))
    assert any(r.name == "gather_pairs_from_flat" and r.rewrites == 1 and r.max_abs_diff == 0 for r in results)


def test_onnx_graph_without_the_transposes_around_gather_nd(tmp_path):
    torch.manual_seed(0)
    model = models.build_model("dlrm", "small").eval()
    inputs = tuple(x.cpu() for x in model.example_inputs(8))
    ops = {}
    for label, passes in (("default", None), ("pairs", default_passes().with_pass(PAIR_GATHER_PASS))):
        report = export_onnx(model, inputs, tmp_path / f"{label}.onnx", passes=passes)  # parity-checked on ORT
        ops[label] = [n.op_type for n in onnx.load(report.path).graph.node]
    assert "GatherND" in ops["default"] and "GatherND" not in ops["pairs"]
    assert ops["pairs"].count("Transpose") < ops["default"].count("Transpose")
    assert "gather_pairs_from_flat" not in default_passes().names()  # opt-in: slower on ORT's CPU provider

"""Dependency groups on models written in the style of public recommendation libraries
(DeepCTR, FuxiCTR, pytorch-fm, RecBole, PaddleRec, torchrec): none of them knows amgp-fx."""
import pytest
import torch

import amgp_fx
from amgp_fx.testing import assert_mask_oracle, assert_round_trip
from fixtures.thirdparty import FIXTURES

# models whose every dim is legitimately frozen
_NOTHING_PRUNABLE: set[str] = set()


def _factory(name):
    def factory():
        torch.manual_seed(0)
        return FIXTURES[name]()
    return factory


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_thirdparty_mask_oracle_and_round_trip(name):
    model, args = _factory(name)()
    graph = amgp_fx.analyze(model, args)
    if name in _NOTHING_PRUNABLE:
        assert not graph.prunable_groups()
        assert graph.unknown_ops and all(g.reason for g in graph.groups)
        return
    assert graph.prunable_groups(), f"{name}: nothing prunable"
    assert_mask_oracle(_factory(name))
    assert_round_trip(graph, args)


class _NoRule(torch.nn.Module):
    """lgamma has no coupling rule: the hidden layer it touches is frozen and the op reported."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 6), torch.nn.Linear(6, 1)

    def forward(self, x):
        return self.b(torch.lgamma(self.a(x).abs() + 1.0))


def test_unknown_op_is_reported_with_its_source_line():
    torch.manual_seed(0)
    graph = amgp_fx.analyze(_NoRule(), (torch.randn(4, 4),))
    (unknown,) = [u for u in graph.unknown_ops if "lgamma" in u.target]
    assert unknown.stack_trace and "test_groups_thirdparty.py" in unknown.stack_trace
    assert "no coupling rule" in graph.group("a.weight[0]").reason


def test_gru4rec_hidden_units_are_one_group_with_the_gate_rows():
    """aten.gru has a rule now: GRU4Rec's 16 hidden units are prunable, 3 gate rows each."""
    model, args = _factory("recbole_gru4rec")()
    graph = amgp_fx.analyze(model, args)
    group = graph.group("gru_layers.weight_ih_l0[0]")
    assert group.prunable and group.full_size == 16
    (rows,) = [m for m in group.members if m.tensor == "gru_layers.weight_ih_l0" and m.dim == 0]
    assert rows.channels.tolist() == [p % 16 for p in range(48)]
    assert ("dense.weight", 1) in {(m.tensor, m.dim) for m in group.members}

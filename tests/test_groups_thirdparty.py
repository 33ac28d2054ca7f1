"""Dependency groups on models written in the style of public recommendation libraries
(DeepCTR, FuxiCTR, pytorch-fm, RecBole, PaddleRec, torchrec): none of them knows amgp-fx."""
import pytest
import torch

import amgp_fx
from amgp_fx.testing import assert_mask_oracle, assert_round_trip
from fixtures.thirdparty import FIXTURES

# models whose every dim is legitimately frozen (an op without a rule: aten.gru)
_NOTHING_PRUNABLE = {"recbole_gru4rec"}


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


def test_unknown_op_is_reported_with_its_source_line():
    model, args = _factory("recbole_gru4rec")()
    graph = amgp_fx.analyze(model, args)
    (unknown,) = [u for u in graph.unknown_ops if "gru" in u.target]
    assert unknown.stack_trace and "sequence_models.py" in unknown.stack_trace
    frozen = [g for g in graph.groups if g.reason and "no coupling rule" in g.reason]
    assert frozen

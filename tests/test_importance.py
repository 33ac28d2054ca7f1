"""Importance scores aggregate every slice a channel owns."""
import pytest
import torch
import torch.nn as nn

import amgp_fx


def _graph():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(12.0).reshape(4, 3))
        model[0].bias.copy_(torch.tensor([1.0, 0.0, 0.0, 2.0]))
        model[2].weight.copy_(torch.ones(2, 4))
    return model, amgp_fx.analyze(model, (torch.randn(2, 3),))


def test_l2_score_is_the_norm_over_all_member_slices():
    model, graph = _graph()
    scores = amgp_fx.score(graph, "l2")["g0"]
    expected = (model[0].weight.pow(2).sum(1) + model[0].bias.pow(2) + model[2].weight.pow(2).sum(0)).sqrt()
    torch.testing.assert_close(scores, expected.detach())


def test_scores_follow_the_present_channels_after_a_shrink():
    model, graph = _graph()
    full = amgp_fx.score(graph, "l1")["g0"]
    amgp_fx.shrink_(graph, {"g0": [1, 3]})
    torch.testing.assert_close(amgp_fx.score(graph, "l1")["g0"], full[[1, 3]])


def test_taylor_needs_gradients_and_unknown_criterion_is_refused():
    model, graph = _graph()
    assert amgp_fx.score(graph, "taylor")["g0"].abs().sum() == 0
    graph.module(torch.randn(5, 3)).sum().backward()
    assert amgp_fx.score(graph, "taylor")["g0"].abs().sum() > 0
    with pytest.raises(ValueError, match="unknown importance criterion"):
        amgp_fx.score(graph, "entropy")

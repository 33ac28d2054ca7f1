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


# -- activation: importance that sees outputs -------------------------------------------------------
def _dead_unit_model():
    """Linear 4 -> 6 -> ReLU -> Linear 6 -> 2 whose unit 0 has the largest incoming weights of all and
    a bias so negative that its ReLU input is below zero on every row of the probe batch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.full((6, 4), 0.5))
        model[0].weight[0] = 3.0
        model[0].bias.zero_()
        model[0].bias[0] = -100.0  # |3 x| stays far below 100 for x in [0, 1)
        model[2].weight.fill_(1.0)
    inputs = (torch.rand(32, 4),)
    return model, amgp_fx.analyze(model, inputs), inputs


def test_activation_ranks_a_unit_that_is_dead_on_the_data_lowest_where_l2_ranks_it_highest():
    from amgp_fx.activations import consumer_inputs

    model, graph, inputs = _dead_unit_model()
    stats = consumer_inputs(graph, inputs)
    activation = amgp_fx.score(graph, "activation", stats=stats)["g0"]
    l2 = amgp_fx.score(graph, "l2")["g0"]
    assert int(l2.argmax()) == 0 and int(activation.argmin()) == 0
    assert float(activation[0]) == 0.0 and bool((activation[1:] > 0).all())
    # the reference formula: E[x_j^2] |W_2[:, j]|^2, x the ReLU output the second Linear reads
    hidden = torch.relu(model[0](inputs[0])).detach()
    expected = hidden.pow(2).mean(0) * model[2].weight.detach().pow(2).sum(0)
    torch.testing.assert_close(activation, expected, rtol=1e-5, atol=1e-7)


def test_centered_activation_scores_a_constant_unit_as_nothing_and_plain_activation_does_not():
    from amgp_fx.activations import consumer_inputs

    model, graph, inputs = _dead_unit_model()
    with torch.no_grad():
        model[0].weight[1] = 0.0
        model[0].bias[1] = 2.0  # unit 1 is 2.0 on every row: its mean can be folded, nothing else is lost
    stats = consumer_inputs(graph, inputs)
    plain = amgp_fx.score(graph, "activation", stats=stats)["g0"]
    centered = amgp_fx.score(graph, "activation", stats=stats, centered=True)["g0"]
    torch.testing.assert_close(plain[1], torch.tensor(4.0 * 2))  # E[x^2] = 4, |W[:, 1]|^2 = 2
    assert float(centered[1]) == pytest.approx(0.0, abs=1e-9) and float(centered[2:].min()) > 0


def test_activation_needs_stats_of_the_model_as_it_is_and_follows_shrinks():
    from amgp_fx.activations import consumer_inputs

    model, graph, inputs = _dead_unit_model()
    with pytest.raises(ValueError, match="pass stats="):
        amgp_fx.score(graph, "activation")
    stale = consumer_inputs(graph, inputs)
    full = amgp_fx.score(graph, "activation", stats=stale)["g0"]
    amgp_fx.shrink_(graph, {"g0": [1, 3, 4]})
    with pytest.raises(ValueError, match="measure them on the model as it is"):
        amgp_fx.score(graph, "activation", stats=stale)
    torch.testing.assert_close(amgp_fx.score(graph, "activation", stats=consumer_inputs(graph, inputs))["g0"],
                               full[[1, 3, 4]])


class _Product(nn.Module):
    """Two towers multiplied and summed: the hidden units reach no weight, only a product."""

    def __init__(self):
        super().__init__()
        self.left, self.right = nn.Linear(4, 6), nn.Linear(4, 6)

    def forward(self, x):
        return (torch.relu(self.left(x)) * torch.relu(self.right(x))).sum(-1)


def test_activation_falls_back_to_l2_for_a_group_that_reaches_no_plain_consumer():
    from amgp_fx.activations import consumer_inputs

    inputs = (torch.randn(16, 4),)
    graph = amgp_fx.analyze(_Product(), inputs)
    (group,) = graph.prunable_groups()
    stats = consumer_inputs(graph, inputs)
    assert {s.weight for s in stats.values()} == {"left.weight", "right.weight"}  # their inputs: x, not the group
    torch.testing.assert_close(amgp_fx.score(graph, "activation", stats=stats)[group.id],
                               amgp_fx.score(graph, "l2")[group.id])

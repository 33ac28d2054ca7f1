"""Training FLOPs: the counter matches a hand computation and follows surgery."""
import pytest
import torch
import torch.nn as nn

import amgp_fx
from amgp_fx.flops import (OPTIMIZER_FLOPS_PER_ELEMENT, count_training_flops, graph_step_flops, mlp_training_flops,
                           optimizer_flops_per_element, width_scale_for_flops)


def _mlp(widths=(6, 16, 12, 1)):
    layers = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def test_small_mlp_matches_the_hand_computation():
    batch = 8
    flops = count_training_flops(_mlp(), (torch.randn(2, 6),), batch_size=batch, optimizer_flops=2)
    # by hand: 6x16, 16x12 and 12x1 layers; forward 2*B*in*out each
    forward = 2 * 8 * (6 * 16 + 16 * 12 + 12 * 1)
    # backward: weight gradients of all three, input gradients of the last two (the input needs none)
    backward = 2 * 8 * (6 * 16 + 16 * 12 + 12 * 1) + 2 * 8 * (16 * 12 + 12 * 1)
    optimizer = 2 * (6 * 16 + 16 + 16 * 12 + 12 + 12 * 1 + 1)  # SGD: 2 FLOPs per parameter
    assert (flops.forward, flops.backward, flops.optimizer) == (forward, backward, optimizer) == (4800, 8064, 658)
    assert flops.total == 13522 and flops.batch_size == 8
    assert flops == mlp_training_flops([6, 16, 12, 1], batch, optimizer_flops=2)
    assert set(flops.by_operator) <= {"aten.addmm", "aten.mm"}


def test_optimizer_flops_per_element_depends_on_the_optimizer():
    params = [nn.Parameter(torch.zeros(3))]
    assert optimizer_flops_per_element(torch.optim.SGD(params, lr=0.1)) == 2
    assert optimizer_flops_per_element(torch.optim.SGD(params, lr=0.1, momentum=0.9)) == 4
    assert optimizer_flops_per_element(torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)) == 6
    assert optimizer_flops_per_element(torch.optim.Adam(params)) == OPTIMIZER_FLOPS_PER_ELEMENT["Adam"] == 13
    assert optimizer_flops_per_element(torch.optim.AdamW(params, weight_decay=0.01)) == 14
    assert optimizer_flops_per_element(torch.optim.Adagrad(params)) == 7


def test_optimizers_count_only_the_parameters_they_hold():
    model = _mlp()
    sgd = torch.optim.SGD(list(model[0].parameters()), lr=0.1)  # only the first layer is updated
    flops = count_training_flops(model, (torch.randn(2, 6),), batch_size=4, optimizers=[sgd])
    assert flops.optimizer == 2 * (6 * 16 + 16)


def test_sparse_embedding_updates_count_looked_up_rows():
    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(1000, 4, sparse=True)
            self.head = nn.Linear(4, 1)

        def forward(self, ids):
            return self.head(self.table(ids)).squeeze(-1)

    flops = count_training_flops(Bag(), (torch.zeros(2, dtype=torch.long),), batch_size=10, optimizer_flops=2)
    assert flops.optimizer == 2 * (10 * 4 + 4 + 1), "10 looked-up rows of 4, not 1000 rows"


def test_counting_touches_no_value_gradient_or_statistic():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = (torch.randn(3, 4),)
    rng = torch.get_rng_state()
    count_training_flops(model, inputs, batch_size=64)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_flops_follow_surgery_and_hypothetical_widths_need_no_surgery():
    model = _mlp((6, 64, 32, 1))
    graph = amgp_fx.analyze(model, (torch.randn(4, 6),))
    first, second = graph.prunable_groups()
    full = count_training_flops(graph.module, (torch.randn(4, 6),), batch_size=16, optimizer_flops=2)
    assert full == mlp_training_flops([6, 64, 32, 1], 16, optimizer_flops=2)
    predicted = graph_step_flops(graph, {first.id: 24, second.id: 8}, batch_size=16, optimizer_flops=2)
    assert model[0].weight.shape == (64, 6), "predicting changes nothing"
    amgp_fx.shrink_(graph, {first.id: list(range(24)), second.id: list(range(8))})
    after = count_training_flops(graph.module, (torch.randn(4, 6),), batch_size=16, optimizer_flops=2)
    assert after == predicted == mlp_training_flops([6, 24, 8, 1], 16, optimizer_flops=2)
    with pytest.raises(ValueError, match="must be in"):
        graph_step_flops(graph, {first.id: 30}, batch_size=16)


def test_reference_model_flops_scale_with_the_batch():
    from amgp_fx import models
    model = models.build_model("dlrm", "small")
    small = count_training_flops(model, model.example_inputs(2), batch_size=32, optimizer_flops=0)
    large = count_training_flops(model, model.example_inputs(2), batch_size=64, optimizer_flops=0)
    assert large.total == 2 * small.total and small.by_operator["aten.bmm"] > 0


def test_width_scale_matches_a_flops_target():
    def build(scale):
        width = max(8, 8 * round(128 * scale / 8))
        return _mlp((16, width, width, 1))

    inputs = (torch.randn(2, 16),)
    full = count_training_flops(build(1.0), inputs, batch_size=64).total
    scale = width_scale_for_flops(build, 0.4 * full, inputs, batch_size=64)
    cost = count_training_flops(build(scale), inputs, batch_size=64).total
    assert cost <= 0.4 * full
    assert count_training_flops(build(scale + 8 / 128), inputs, batch_size=64).total > 0.4 * full

"""The consumer-input pass (amgp_fx.activations): per-channel statistics of what each plain consumer
op reads, against reference formulas; convolutions reduce over positions, grouped ones and ops by
computed tensors are not recorded; pytree inputs work; the pass leaves the model's mode and its
BatchNorm statistics as they were."""
from __future__ import annotations

import torch
from torch import nn

import amgp_fx
from amgp_fx.activations import consumer_inputs, uses_of


class _Convs(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(3, 8, 3, padding=1)
        self.second = nn.Conv2d(8, 4, 1, bias=False)
        self.grouped = nn.Conv2d(4, 4, 1, groups=2)

    def forward(self, x):
        return self.grouped(self.second(torch.relu(self.first(x)))).mean((1, 2, 3))


def test_linear_inputs_are_reduced_over_rows_and_conv_inputs_over_rows_and_positions():
    torch.manual_seed(0)
    model = _Convs()
    x = torch.randn(5, 3, 6, 6)
    stats = consumer_inputs(amgp_fx.analyze(model, (torch.randn(2, 3, 6, 6),)), (x,))
    assert [s.weight for s in stats.values()] == ["first.weight", "second.weight"]  # grouped: not plain
    (second,) = uses_of(stats, "second.weight")
    seen = torch.relu(model.first(x)).detach().double()
    torch.testing.assert_close(second.mean, seen.mean((0, 2, 3)))
    torch.testing.assert_close(second.mean_square, seen.pow(2).mean((0, 2, 3)))
    assert second.bias is None and second.rows == 5 * 6 * 6
    torch.testing.assert_close(second.variance(), seen.var((0, 2, 3), unbiased=False))


class _DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(10, 4)
        self.top = nn.Sequential(nn.Linear(7, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, features):
        return self.top(torch.cat([features["dense"], self.table(features["ids"])], dim=1)).squeeze(-1)


def test_dict_inputs_run_and_the_models_mode_and_batchnorm_statistics_are_left_alone():
    torch.manual_seed(0)
    model = _DictModel()
    example = ({"dense": torch.randn(4, 3), "ids": torch.randint(0, 10, (4,))},)
    graph = amgp_fx.analyze(model, example)
    graph.module.train()
    buffers = {name: b.clone() for name, b in graph.module.named_buffers() if name.endswith(("_mean", "_var"))}
    assert len(buffers) == 2
    batch = ({"dense": torch.randn(32, 3) + 5.0, "ids": torch.randint(0, 10, (32,))},)
    stats = consumer_inputs(graph, batch)
    assert graph.module.training
    for name, buffer in graph.module.named_buffers():  # a train-mode pass would have moved the running mean
        if name in buffers:
            torch.testing.assert_close(buffer, buffers[name], atol=0, rtol=0)
    (first,) = uses_of(stats, "top.0.weight")
    concatenated = torch.cat([batch[0]["dense"], model.table(batch[0]["ids"])], dim=1).detach().double()
    torch.testing.assert_close(first.mean, concatenated.mean(0))
    (last,) = uses_of(stats, "top.3.weight")  # eval mode: BatchNorm with its running statistics
    model.eval()
    hidden = model.top[:3](concatenated.float()).detach().double()
    torch.testing.assert_close(last.mean_square, hidden.pow(2).mean(0))

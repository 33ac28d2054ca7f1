"""Scale compensation at a shrink (amgp_fx.rescale): the factor, the kept output scale, the exact
round trip through shrink and grow, and the AMGP hook applying and undoing it."""
import math

import pytest
import torch

import amgp_fx
from amgp_fx import models
from amgp_fx.amgp import AmgpHook
from amgp_fx.config import SyntheticConfig, TrainConfig
from amgp_fx.data import SyntheticCriteo
from amgp_fx.rescale import consumer_scales, scale_consumers_
from amgp_fx.schedule import AmgpConfig, AmgpSchedule
from amgp_fx.surgery import grow_, shrink_
from amgp_fx.train import train


def _mlp(width=256, depth=4, seed=0):
    torch.manual_seed(seed)
    layers, fan_in = [], 16
    for _ in range(depth):
        layers += [torch.nn.Linear(fan_in, width), torch.nn.ReLU()]
        fan_in = width
    model = torch.nn.Sequential(*layers, torch.nn.Linear(fan_in, 1))
    return model, amgp_fx.analyze(model, (torch.randn(4, 16),))


def _half(graph):
    return {g.id: list(range(0, g.size, 2)) for g in graph.prunable_groups()}


def test_equal_units_give_the_square_root_of_the_width_ratio():
    model, graph = _mlp(width=12, depth=1)
    with torch.no_grad():  # every hidden unit: the same incoming and outgoing energy
        model[0].weight.fill_(0.5)
        model[2].weight.fill_(-2.0)
    keep = {graph.prunable_groups()[0].id: [0, 5, 7]}
    assert consumer_scales(graph, keep) == {graph.prunable_groups()[0].id: pytest.approx(math.sqrt(12 / 3))}


def test_removing_silent_units_needs_no_compensation():
    model, graph = _mlp(width=8, depth=1)
    with torch.no_grad():
        model[2].weight[:, 4:] = 0.0  # units 4..7 do not reach the output
    group = graph.prunable_groups()[0].id
    assert consumer_scales(graph, {group: [0, 1, 2, 3]})[group] == pytest.approx(1.0)
    assert consumer_scales(graph, {group: [4, 5, 6, 7]})[group] == 1.0  # nothing kept carries energy: left alone


def test_a_rescaled_half_width_mlp_keeps_its_output_scale():
    model, graph = _mlp()
    x = torch.randn(4096, 16)
    full = graph.module(x).std()
    keep = _half(graph)
    factors = consumer_scales(graph, keep)
    shrink_(graph, keep)
    plain = graph.module(x).std()
    scale_consumers_(graph, factors)
    rescaled = graph.module(x).std()
    assert plain < 0.5 * full, "the premise: four halved layers shrink the output spread"
    assert 0.85 * full < rescaled < 1.15 * full


def test_scale_then_inverse_around_a_shrink_restores_the_model_exactly():
    model, graph = _mlp(width=64, depth=3)
    x = torch.randn(256, 16)
    reference = graph.module(x)
    keep = _half(graph)
    factors = consumer_scales(graph, keep)
    record = shrink_(graph, keep)
    scale_consumers_(graph, factors)
    scale_consumers_(graph, factors, inverse=True)
    grow_(graph, record)
    torch.testing.assert_close(graph.module(x), reference, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def rows():
    data = SyntheticCriteo(SyntheticConfig.from_preset("small"))
    return data.rows(0, 512), data.rows(50_000, 50_256)


def _frozen_run(rescale: bool, final: str, rows):
    """An AMGP run whose updates cannot change a float32 weight (SGD at lr 1e-30): only surgery acts."""
    torch.manual_seed(0)
    model = models.build_model("dcn_v2", "small", deep_mlp=(64, 40))
    original = {k: v.clone() for k, v in model.state_dict().items()}
    graph = amgp_fx.analyze(model, model.example_inputs(4))
    schedule = AmgpSchedule(total_steps=14, warmup_steps=2, cycles=2, pruned_steps=3, dense_steps=2, final=final)
    hook = AmgpHook(graph, AmgpConfig(schedule, ratio=0.5, rescale=rescale))
    train(model, rows[0], rows[1], TrainConfig(optimizer="sgd", lr=1e-30, sparse_optimizer="sgd", batch_size=64,
                                               steps=14), hooks=[hook], forward=hook.forward, progress=False)
    return model, graph, hook, original


def test_a_full_ending_run_gives_back_the_original_weights_after_rescaling(rows):
    model, _, _, original = _frozen_run(True, "full", rows)
    for key, value in model.named_parameters():  # (BatchNorm running statistics move in any training run)
        torch.testing.assert_close(value, original[key], rtol=1e-6, atol=1e-7, msg=key)


def test_a_compact_run_keeps_the_outgoing_weights_scaled_by_the_factor(rows):
    model, graph, hook, original = _frozen_run(True, "compact", rows)
    unscaled, graph_plain, _, _ = _frozen_run(False, "compact", rows)
    factors = hook.switch.scales
    assert any(f > 1.0 for f in factors.values()), "the tower's last group feeds the unnormalized output layer"
    scale_consumers_(graph, factors, inverse=True)
    plain = dict(unscaled.named_parameters())
    for key, value in model.named_parameters():
        torch.testing.assert_close(value, plain[key], rtol=1e-6, atol=1e-7, msg=key)


def test_rescale_must_be_a_bool():
    with pytest.raises(ValueError, match="rescale"):
        AmgpConfig(AmgpSchedule(10, warmup_steps=1, cycles=1, pruned_steps=2), rescale="yes")
    config = AmgpConfig(AmgpSchedule(10, warmup_steps=1, cycles=1, pruned_steps=2), rescale=False)
    assert AmgpConfig.from_dict(config.to_dict()) == config


def test_consumers_followed_by_a_normalization_are_left_alone():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 24), torch.nn.ReLU(), torch.nn.Linear(24, 1))
    graph = amgp_fx.analyze(model, (torch.randn(4, 16),))
    first, second = graph.prunable_groups()  # 32 units feed Linear(32, 24) (no norm after); 24 feed the output
    keep = {first.id: list(range(16)), second.id: list(range(12))}
    factors = consumer_scales(graph, keep)
    assert factors[first.id] > 1.2 and factors[second.id] > 1.2

    torch.manual_seed(0)
    normed = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 24),
                                 torch.nn.BatchNorm1d(24), torch.nn.ReLU(), torch.nn.Linear(24, 1))
    graph = amgp_fx.analyze(normed, (torch.randn(4, 16),))
    first, second = graph.prunable_groups()
    before = normed[2].weight.detach().clone()
    factors = consumer_scales(graph, {first.id: list(range(16)), second.id: list(range(12))})
    assert factors[first.id] == 1.0, "Linear(32, 24) feeds a BatchNorm: its scale is normalized away"
    assert factors[second.id] > 1.2
    scale_consumers_(graph, factors)
    torch.testing.assert_close(normed[2].weight, before, rtol=0, atol=0)

"""GradMax growth (amgp_fx.gradmax, grow_init="gradmax"): the growth leaves the outputs as they were, the
regrown units' incoming weights are the top eigenvectors of the gradient moments computed by hand, and
their outgoing weights get a larger gradient than after a plain restoring growth."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import amgp_fx
from amgp_fx import models
from amgp_fx.amgp import AmgpHook
from amgp_fx.config import SyntheticConfig, TrainConfig
from amgp_fx.data import SyntheticCriteo
from amgp_fx.schedule import AmgpConfig, AmgpSchedule
from amgp_fx.switch import SwitchPolicy
from amgp_fx.train import train
from tests.test_net2wider import MLP  # Linear 6 -> 32 -> 24 -> 1 with ReLUs


def _bce(label):
    return lambda out: nn.functional.binary_cross_entropy_with_logits(out, label)


def _grown(grow_init: str, rescale: bool = True):
    """An MLP at half width trained a few steps, then grown back with ``grow_init``; returns what a
    check needs, with the outputs just before the growth."""
    torch.manual_seed(0)
    model = MLP()
    x, label = torch.randn(256, 6), (torch.rand(256) < 0.3).float()
    graph = amgp_fx.analyze(model, (x[:4],))
    groups = graph.prunable_groups()
    config = AmgpConfig(AmgpSchedule(100, 10, 1, 20, 0), ratio=0.5, preserve_growth=True, grow_init=grow_init,
                        rescale=rescale)
    policy = SwitchPolicy(graph, groups, config)
    scores = {g.id: torch.rand(g.size, generator=torch.Generator().manual_seed(1)) for g in groups}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    record, _ = policy.shrink(policy.choose(scores, 1.0), optimizer)
    for _ in range(5):
        optimizer.zero_grad()
        _bce(label)(graph.module(x)).backward()
        optimizer.step()
    kept = {g.id: np.nonzero(g.alive)[0] for g in groups}
    before = graph.module(x).detach().clone()
    policy.grow(record, optimizer, generator=torch.Generator().manual_seed(3), probe=((x,), _bce(label)))
    return model, graph, groups, policy, x, label, kept, before


@pytest.mark.parametrize("rescale", [True, False])
def test_a_gradmax_growth_leaves_the_outputs_as_they_were(rescale):
    model, graph, groups, policy, x, label, kept, before = _grown("gradmax", rescale)
    assert [g.size for g in groups] == [g.full_size for g in groups]
    assert policy.gradmax_groups, "no group was re-aimed"
    torch.testing.assert_close(graph.module(x), before, atol=1e-6, rtol=1e-5)


def test_regrown_incoming_weights_are_the_top_eigenvectors_of_the_gradient_moments():
    model, graph, groups, policy, x, label, kept, before = _grown("gradmax")
    second = next(g for g in groups if g.full_size == 24)  # net.2's rows, read by net.4
    assert second.id in policy.gradmax_groups
    first_out = torch.relu(model.net[0](x)).detach()  # net.2's input
    z = model.net[2](first_out)
    out = model.net[4](torch.relu(z)).squeeze(-1)
    (delta,) = torch.autograd.grad(_bce(label)(out), [z])
    # the gradient at net.4's output is what the regrown units of net.2 would feed
    z4 = model.net[4](torch.relu(z.detach()))
    (delta4,) = torch.autograd.grad(_bce(label)(z4.squeeze(-1)), [z4])
    m = delta4.double().T @ first_out.double() / len(x)  # (O, I) of the consumer net.4 over net.2's input
    values, vectors = torch.linalg.eigh(m.T @ m)
    regrown = np.setdiff1d(np.arange(24), kept[second.id])
    rows = model.net[2].weight.detach().double()[regrown]
    expected = vectors[:, -len(regrown):].flip(1).T
    rank = int((values > 1e-9 * values.max()).sum())
    assert rank == 1  # one output: one direction carries a gradient, the other units keep their values
    cosine = (nn.functional.normalize(rows[:rank], dim=1) * expected[:rank]).sum(dim=1).abs()
    assert (cosine > 1 - 1e-6).all(), cosine
    kept_norm = model.net[2].weight.detach()[kept[second.id]].norm(dim=1).mean()
    torch.testing.assert_close(rows[:rank].norm(dim=1).float(), kept_norm.expand(rank), rtol=1e-4, atol=1e-6)
    assert torch.equal(model.net[2].bias.detach()[regrown[:rank]], torch.zeros(rank))
    assert delta.abs().sum() > 0


def _outgoing_gradient(grow_init: str) -> float:
    model, graph, groups, policy, x, label, kept, before = _grown(grow_init)
    model.zero_grad()
    _bce(label)(graph.module(x)).backward()
    regrown = np.setdiff1d(np.arange(24), kept[next(g for g in groups if g.full_size == 24).id])
    return float(model.net[4].weight.grad[:, regrown].norm())


def test_gradmax_gives_the_regrown_outgoing_weights_a_larger_gradient_than_restoring():
    assert _outgoing_gradient("gradmax") > 1.5 * _outgoing_gradient("restore")


def test_gradmax_needs_a_preserving_growth_and_a_probe():
    schedule = AmgpSchedule(100, 10, 1, 20, 0)
    with pytest.raises(ValueError, match="preserve_growth=True"):
        AmgpConfig(schedule, ratio=0.5, grow_init="gradmax")
    with pytest.raises(ValueError, match="grow_ramp_steps=0"):
        AmgpConfig(schedule, ratio=0.5, grow_init="gradmax", preserve_growth=True, grow_ramp_steps=4)
    model = MLP()
    graph = amgp_fx.analyze(model, (torch.randn(4, 6),))
    policy = SwitchPolicy(graph, graph.prunable_groups(), AmgpConfig(schedule, ratio=0.5, grow_init="gradmax",
                                                                      preserve_growth=True))
    record, _ = policy.shrink({g.id: list(range(g.size // 2)) for g in policy.groups}, None)
    with pytest.raises(ValueError, match="measures gradients on a batch"):
        policy.grow(record, None)


def test_a_grow_late_run_with_gradmax_grows_without_a_jump():
    data = SyntheticCriteo(SyntheticConfig.from_preset("small"))
    rows, probe = data.rows(0, 2048), data.rows(50_000, 50_512)
    torch.manual_seed(0)
    model = models.build_model("dcn_v2", "small", deep_mlp=(64, 40), dropout=0.0)
    graph = amgp_fx.analyze(model, model.example_inputs(4))
    config = AmgpConfig.from_recipe_name("amgp-grow-late-rewarm", total_steps=30, grow_init="gradmax")
    hook = AmgpHook(graph, config, probe=probe)
    train(model, rows, None, TrainConfig(optimizer="adam", lr=1e-2, batch_size=64, steps=30),
          hooks=[hook], forward=hook.forward, progress=False)
    (grow,) = [s for s in hook.surgeries if s["action"] == "grow"]
    assert grow["loss_after"] == pytest.approx(grow["loss_before"], abs=1e-5)
    assert hook.switch.gradmax_groups and all(g.size == g.full_size for g in hook.groups)


def test_the_first_layer_takes_as_many_directions_as_its_inputs_give_in_order():
    model, graph, groups, policy, x, label, kept, before = _grown("gradmax")
    first = next(g for g in groups if g.full_size == 32)  # net.0's rows, read by net.2
    z = model.net[2](torch.relu(model.net[0](x)))
    out = model.net[4](torch.relu(z)).squeeze(-1)
    (delta,) = torch.autograd.grad(_bce(label)(out), [z])
    m = delta.double().T @ x.double() / len(x)  # (24, 6)
    values, vectors = torch.linalg.eigh(m.T @ m)
    rank = int((values > 1e-9 * values.max()).sum())
    assert rank > 1
    regrown = np.setdiff1d(np.arange(32), kept[first.id])
    rows = nn.functional.normalize(model.net[0].weight.detach().double()[regrown[:rank]], dim=1)
    cosine = (rows * vectors[:, -rank:].flip(1).T).sum(dim=1).abs()
    assert (cosine > 1 - 1e-6).all(), cosine  # the largest eigenvalue's direction first, and so on

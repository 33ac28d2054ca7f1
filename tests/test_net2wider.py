"""Growth by splitting (amgp_fx.net2wider, grow_init="split"): the outputs stay what they were, each
regrown unit starts as a copy of a kept unit with its optimizer state, a family's outgoing weights
add up to its source's, and training pulls the copies apart."""
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
from amgp_fx.net2wider import split_shares, split_sources
from amgp_fx.schedule import AmgpConfig, AmgpSchedule
from amgp_fx.switch import SwitchPolicy
from amgp_fx.train import train


class MLP(nn.Module):
    def __init__(self, norm: bool = False):
        super().__init__()
        middle = [nn.BatchNorm1d(32)] if norm else []
        self.net = nn.Sequential(nn.Linear(6, 32), *middle, nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


def _trained_pruned(norm=False, **config):
    """An MLP shrunk to half width by the switch policy and trained a few Adam steps while pruned."""
    torch.manual_seed(0)
    model = MLP(norm)
    x = torch.randn(64, 6)
    graph = amgp_fx.analyze(model, (x,))
    groups = graph.prunable_groups()
    policy = SwitchPolicy(graph, groups, AmgpConfig(AmgpSchedule(100, 10, 2, 20, 20), ratio=0.5, **config))
    scores = {g.id: torch.rand(g.size, generator=torch.Generator().manual_seed(1)) for g in groups}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    record, _ = policy.shrink(policy.choose(scores, 1.0), optimizer)
    for _ in range(3):
        optimizer.zero_grad()
        graph.module(x).pow(2).mean().backward()
        optimizer.step()
    return model, x, graph, groups, policy, optimizer, record


@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("rescale", [True, False])
def test_a_split_growth_leaves_the_outputs_as_they_were(rescale, norm):
    model, x, graph, groups, policy, optimizer, record = _trained_pruned(norm, rescale=rescale, grow_init="split")
    model.eval()
    before = graph.module(x).detach().clone()
    policy.grow(record, optimizer, generator=torch.Generator().manual_seed(3))
    assert [g.size for g in groups] == [g.full_size for g in groups]
    torch.testing.assert_close(graph.module(x), before, atol=1e-6, rtol=1e-5)


def test_regrown_units_are_copies_with_their_sources_state_and_families_share_the_outgoing_weights():
    model, x, graph, groups, policy, optimizer, record = _trained_pruned(grow_init="split")
    first, second = model.net[0], model.net[2]
    g = next(g for g in groups if g.full_size == 32)  # first hidden layer: rows of net.0, columns of net.2
    kept = np.nonzero(g.alive)[0]
    kept_rows = np.nonzero(next(h for h in groups if h.full_size == 24).alive)[0]  # net.2's rows present now
    position = {int(c): i for i, c in enumerate(kept)}
    rows_before = first.weight.detach()[list(position.values())].clone()
    moments_before = optimizer.state[first.weight]["exp_avg"][list(position.values())].clone()
    columns_before = second.weight.detach()[:, list(position.values())].clone()
    policy.grow(record, optimizer, generator=torch.Generator().manual_seed(3))
    regrown = np.setdiff1d(np.arange(32), kept)
    sources = split_sources(kept, regrown, torch.Generator().manual_seed(3))
    for unit, source in zip(regrown, sources):
        i = position[int(source)]
        torch.testing.assert_close(first.weight[unit], rows_before[i])
        torch.testing.assert_close(optimizer.state[first.weight]["exp_avg"][unit], moments_before[i])
        family = second.weight[:, [int(source), int(unit)]]
        torch.testing.assert_close(family[kept_rows].sum(dim=1), columns_before[:, i], atol=1e-6, rtol=1e-5)
        assert not torch.allclose(family[:, 0], family[:, 1]), "equal shares would keep the copies alike forever"


def test_training_pulls_the_copies_apart():
    model, x, graph, groups, policy, optimizer, record = _trained_pruned(grow_init="split")
    kept = np.nonzero(next(g for g in groups if g.full_size == 32).alive)[0]
    policy.grow(record, optimizer, generator=torch.Generator().manual_seed(3))
    regrown = np.setdiff1d(np.arange(32), kept)
    sources = split_sources(kept, regrown, torch.Generator().manual_seed(3))
    rows = model.net[0].weight
    assert torch.equal(rows[regrown], rows[sources])
    for _ in range(5):
        optimizer.zero_grad()
        graph.module(x).pow(2).mean().backward()
        optimizer.step()
    assert (rows[regrown] - rows[sources]).abs().amax(dim=1).min() > 0, "a copy still equals its source"


def test_sources_are_spread_evenly_and_shares_sum_to_one_per_family():
    kept, regrown = np.array([0, 2, 4]), np.array([1, 3, 5, 6, 7])
    sources = split_sources(kept, regrown, torch.Generator().manual_seed(0))
    assert sorted(np.bincount(sources, minlength=5)[kept]) == [1, 2, 2]
    shares = split_shares(sources, regrown, torch.Generator().manual_seed(0))
    assert set(shares) == set(kept) | set(regrown)
    for source in kept:
        family = [source, *regrown[sources == source]]
        assert sum(shares[int(u)] for u in family) == pytest.approx(1.0)
        assert all(0 < shares[int(u)] < 1 for u in family)
    with pytest.raises(ValueError, match="at least one kept channel"):
        split_sources(np.array([], dtype=np.int64), regrown, torch.Generator())


def test_split_refuses_a_ramp():
    with pytest.raises(ValueError, match="nothing to ramp"):
        AmgpConfig(AmgpSchedule(100, 10, 2, 20, 20), ratio=0.5, grow_init="split", preserve_growth=True,
                   grow_ramp_steps=5)


def test_a_grow_late_run_with_split_growth_grows_without_a_jump():
    rows = SyntheticCriteo(SyntheticConfig.from_preset("small"))
    train_rows, probe = rows.rows(0, 2048), rows.rows(50_000, 50_512)
    torch.manual_seed(0)
    model = models.build_model("dcn_v2", "small", deep_mlp=(64, 40), dropout=0.0)
    graph = amgp_fx.analyze(model, model.example_inputs(4))
    config = AmgpConfig.from_recipe_name("amgp-grow-late-rewarm", total_steps=30, grow_init="split")
    hook = AmgpHook(graph, config, probe=probe)
    train(model, train_rows, None, TrainConfig(optimizer="adam", lr=1e-2, batch_size=64, steps=30),
          hooks=[hook], forward=hook.forward, progress=False)
    (grow,) = [s for s in hook.surgeries if s["action"] == "grow"]
    assert grow["loss_after"] == pytest.approx(grow["loss_before"], abs=1e-5)
    assert all(g.size == g.full_size for g in hook.groups)

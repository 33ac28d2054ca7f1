"""Switch policies (amgp_fx.switch): a fade that reaches zero makes the shrink function-preserving, a
preserving growth leaves the outputs as they were, a finished ramp gives back the pre-shrink model,
and the selection policies spread the sitting out as they promise; plus the hook's diagnostics."""
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
from amgp_fx.switch import SwitchPolicy, removed_overlap
from amgp_fx.train import train


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


def _setup(seed=0, **config):
    torch.manual_seed(seed)
    model = MLP()
    x = torch.randn(64, 6)
    graph = amgp_fx.analyze(model, (x,))
    groups = graph.prunable_groups()
    amgp_config = AmgpConfig(AmgpSchedule(100, 10, 2, 20, 20), ratio=0.5, **config)
    return model, x, graph, groups, SwitchPolicy(graph, groups, amgp_config)


def _half_keep(policy, seed=1):
    scores = {g.id: torch.rand(g.size, generator=torch.Generator().manual_seed(seed)) for g in policy.groups}
    return policy.choose(scores, 1.0)


@torch.no_grad()
def _perturb(model, seed):
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=generator) * 1e-2)


@pytest.mark.parametrize("rescale", [True, False])
def test_a_fade_that_reaches_zero_makes_the_shrink_function_preserving(rescale):
    model, x, graph, groups, policy = _setup(rescale=rescale)
    keep = _half_keep(policy)
    start = graph.module(x).clone()
    policy.begin_fade(keep, 4)
    for step in range(4):
        _perturb(model, step)  # training goes on during the fade
        policy.step()
    assert not torch.allclose(graph.module(x), start, atol=1e-3)  # the fade did change the model
    before = graph.module(x).clone()
    policy.shrink(keep, None)
    assert [g.size for g in groups] == [16, 16]  # 32 -> 16, 24 -> 16 (multiples of 8)
    torch.testing.assert_close(graph.module(x), before, atol=1e-6, rtol=1e-5)


def test_without_a_fade_the_shrink_changes_the_function():
    model, x, graph, groups, policy = _setup()
    before = graph.module(x).clone()
    policy.shrink(_half_keep(policy), None)
    assert (graph.module(x) - before).abs().max() > 1e-3  # the oracle above is not vacuous


@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("init", ["restore", "fresh"])
def test_a_preserving_growth_leaves_the_outputs_as_they_were(rescale, init):
    model, x, graph, groups, policy = _setup(rescale=rescale, preserve_growth=True, grow_init=init)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    record, _ = policy.shrink(_half_keep(policy), optimizer)
    for step in range(3):  # the pruned model trains
        optimizer.zero_grad()
        graph.module(x).pow(2).mean().backward()
        optimizer.step()
    before = graph.module(x).detach().clone()
    policy.grow(record, optimizer)
    assert [g.size for g in groups] == [g.full_size for g in groups]
    torch.testing.assert_close(graph.module(x), before, atol=1e-6, rtol=1e-5)


def test_a_finished_ramp_gives_back_the_model_from_before_the_shrink():
    model, x, graph, groups, policy = _setup(preserve_growth=True, grow_ramp_steps=5)
    original = graph.module(x).detach().clone()
    record, _ = policy.shrink(_half_keep(policy), None)
    policy.grow(record, None)
    outputs = []
    for _ in range(5):
        policy.step()
        outputs.append(graph.module(x).detach().clone())
    assert policy.ramp is None
    torch.testing.assert_close(outputs[-1], original, atol=1e-5, rtol=1e-5)
    distances = [float((o - original).abs().max()) for o in outputs]
    assert all(a > b for a, b in zip(distances, distances[1:])), "the ramp moves towards the full model step by step"


def test_restoring_growth_without_preserve_undoes_the_rescale():
    model, x, graph, groups, policy = _setup()
    original = graph.module(x).detach().clone()
    record, _ = policy.shrink(_half_keep(policy), None)
    assert policy.scales and all(s > 1 for s in policy.scales.values())
    policy.grow(record, None)
    torch.testing.assert_close(graph.module(x), original, atol=1e-6, rtol=1e-5)


def _removed_sets(selection, cycles=4):
    model, x, graph, groups, policy = _setup(selection=selection)
    removed = []
    for cycle in range(cycles):
        record, _ = policy.shrink(_half_keep(policy, seed=100 + cycle if selection == "score" else 1), None)
        removed.append({k: v.copy() for k, v in policy.last_removed.items()})
        policy.grow(record, None)
    return groups, policy, removed


def test_sticky_removes_the_same_units_every_cycle():
    groups, _, removed = _removed_sets("sticky")
    for g in groups:
        assert all(np.array_equal(r[g.id], removed[0][g.id]) for r in removed)


@pytest.mark.parametrize("selection", ["rotate", "balanced"])
def test_rotate_and_balanced_give_every_unit_the_same_share_of_sitting_out(selection):
    groups, policy, removed = _removed_sets(selection, cycles=4)
    for g in groups:
        assert removed_overlap(removed[0][g.id], removed[1][g.id]) == 0.0  # cycle 2 takes the other half
        counts = policy.out_count[g.id]  # widths round to multiples of 8: 24 units lose 8 per cycle
        assert counts.sum() == sum(len(r[g.id]) for r in removed) and counts.max() - counts.min() <= 1


def test_score_selection_follows_the_scores():
    model, x, graph, groups, policy = _setup()
    scores = {g.id: torch.arange(g.size, dtype=torch.float32) for g in groups}  # higher index, more important
    keep = policy.choose(scores, 1.0)
    for g in groups:  # the highest-scored survive (32 -> 16, 24 -> 16 in multiples of 8)
        assert keep[g.id] == list(range(g.size - 16, g.size))


# -- in the training loop --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rows():
    data = SyntheticCriteo(SyntheticConfig.from_preset("small"))
    return data.rows(0, 2048), data.rows(50_000, 50_512)


def test_hook_logs_switch_jumps_overlap_and_a_lossless_faded_preserving_run(rows, tmp_path):
    torch.manual_seed(0)
    model = models.build_model("dcn_v2", "small", deep_mlp=(64, 40), dropout=0.0)
    graph = amgp_fx.analyze(model, model.example_inputs(4))
    schedule = AmgpSchedule(total_steps=40, warmup_steps=8, cycles=2, pruned_steps=8, dense_steps=8)
    config = AmgpConfig(schedule, ratio=0.5, fade_steps=4, preserve_growth=True, grow_ramp_steps=2,
                        selection="balanced")
    hook = AmgpHook(graph, config, probe=rows[1])
    train(model, rows[0], None, TrainConfig(optimizer="adam", lr=1e-2, batch_size=64, steps=40,
                                            metrics_path=str(tmp_path / "m.jsonl")),
          hooks=[hook], forward=hook.forward, progress=False)
    shrinks = [s for s in hook.surgeries if s["action"] == "shrink"]
    grows = [s for s in hook.surgeries if s["action"] == "grow"]
    assert len(shrinks) == 2 and len(grows) == 2
    for record in hook.surgeries:  # faded shrinks and preserving growths: no jump on the probe
        assert record["loss_after"] == pytest.approx(record["loss_before"], abs=1e-5)
    assert shrinks[0]["overlap"] is None and shrinks[1]["overlap"] == 0.0 and shrinks[1]["faded"]
    kinds = [r["kind"] for r in amgp_fx.metrics.read_metrics(tmp_path / "m.jsonl")]
    assert kinds.count("amgp_fade_start") == 2 and kinds.count("amgp_ramp_end") == 2


def test_grow_late_zero_recipe_grows_without_a_jump_and_leaves_the_regrown_units_to_learn(rows):
    """amgp-grow-late-zero: one preserving growth with no ramp; the kept units keep their (rescaled)
    weights, the regrown ones start at zero outgoing weights and move away from zero by training."""
    torch.manual_seed(0)
    model = models.build_model("dcn_v2", "small", deep_mlp=(64, 40), dropout=0.0)
    graph = amgp_fx.analyze(model, model.example_inputs(4))
    config = AmgpConfig.from_recipe_name("amgp-grow-late-zero", total_steps=30)
    assert config.preserve_growth and config.grow_ramp_steps == 0
    hook = AmgpHook(graph, config, probe=rows[1])
    train(model, rows[0], None, TrainConfig(optimizer="adam", lr=1e-2, batch_size=64, steps=30),
          hooks=[hook], forward=hook.forward, progress=False)
    (grow,) = [s for s in hook.surgeries if s["action"] == "grow"]
    assert grow["loss_after"] == pytest.approx(grow["loss_before"], abs=1e-6)
    assert grow["step"] == 18 and not hook.switch.busy  # no ramp
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert all(g.size == g.full_size for g in hook.groups)
    for linear in linears:  # the regrown units' outgoing columns left zero at step 18 and trained since
        assert (linear.weight.abs().sum(dim=0) > 0).all(), "an input column stayed at zero"


def test_hook_without_fades_shows_the_jump(rows):
    torch.manual_seed(0)
    model = models.build_model("dcn_v2", "small", deep_mlp=(64, 40), dropout=0.0)
    graph = amgp_fx.analyze(model, model.example_inputs(4))
    config = AmgpConfig(AmgpSchedule(total_steps=30, warmup_steps=8, cycles=1, pruned_steps=8, dense_steps=8),
                        ratio=0.5, rescale=False)
    hook = AmgpHook(graph, config, probe=rows[1])
    train(model, rows[0], None, TrainConfig(optimizer="adam", lr=1e-2, batch_size=64, steps=30),
          hooks=[hook], forward=hook.forward, progress=False)
    shrink = next(s for s in hook.surgeries if s["action"] == "shrink")
    assert abs(shrink["loss_after"] - shrink["loss_before"]) > 1e-4


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_amgp_shrinks_of_a_concatenated_group_never_empty_a_table(ratio):
    """DCN's x0 = cat(5 tables, dense tower) is one group; an AMGP shrink keeps the same share of
    every segment, as one-shot pruning does, instead of dropping the low-scale tables whole."""
    from amgp_fx.importance import score
    from amgp_fx.schedule import AmgpConfig
    from amgp_fx.segments import group_segments
    from amgp_fx.surgery import grow_, shrink_
    from amgp_fx.switch import plan_keep
    from tests.fixtures.segment_models import DCNConcat, dcn_inputs

    model = DCNConcat().eval()
    inputs = dcn_inputs(8)
    reference = model(*inputs).detach()
    graph = amgp_fx.analyze(model, inputs)
    x0 = next(g for g in graph.prunable_groups() if len(group_segments(g)) > 1)
    config = AmgpConfig.from_recipe_name("amgp-half", total_steps=100, ratio=ratio, groups=(x0.id,),
                                         kinds=("hidden", "embedding"))
    scores = score(graph, "l2", groups=[x0])
    segments = group_segments(x0)
    keep = plan_keep(graph, [x0], config, 1.0, scores)[x0.id]
    # the negative control: a plain top-k of the same scores would drop whole tables
    top = set(torch.sort(scores[x0.id], descending=True, stable=True).indices[:len(keep)].tolist())
    assert any(not top.intersection(s.channels.tolist()) for s in segments)
    shares = [len(set(keep).intersection(s.channels.tolist())) / len(s.channels) for s in segments]
    assert min(shares) > 0 and max(shares) - min(shares) <= 1 / min(len(s.channels) for s in segments) + 1e-9
    record = shrink_(graph, {x0.id: keep})
    assert not [n for n, p in graph.module.named_parameters() if 0 in p.shape]
    assert graph.module(*inputs).shape == reference.shape
    grow_(graph, record)
    torch.testing.assert_close(graph.module(*inputs), reference, atol=0, rtol=0)

"""FLAP-style bias folding at a shrink (amgp_fx.bias_fold through amgp_fx.switch): removing units that
are constant on the data is exactly function-preserving with the fold and not without it; the fold
keeps each consumer's mean output through the rescale too; it is given back where the rescale is
(a restoring growth at once, a growth ramp in equal parts); a fade folds as it goes; and the hook
measures on the training step's batch."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

import amgp_fx
from amgp_fx.activations import consumer_inputs
from amgp_fx.amgp import AmgpError, AmgpHook
from amgp_fx.schedule import AmgpConfig, AmgpSchedule
from amgp_fx.switch import SwitchPolicy

CONSTANT = slice(8, 16)  # hidden units 8..15 of the first layer: zero incoming weights, positive bias


def _model(seed: int = 0, constant: bool = True) -> nn.Sequential:
    """Linear 6 -> 16 -> ReLU -> Linear 16 -> 12 -> ReLU -> Linear 12 -> 3; with ``constant`` the first
    layer's units 8..15 output their bias (0.5 to 1.5) on every row."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    if constant:
        with torch.no_grad():
            model[0].weight[CONSTANT] = 0.0
            model[0].bias[CONSTANT] = torch.linspace(0.5, 1.5, 8)
    return model


def _setup(constant: bool = True, **config):
    model = _model(constant=constant)
    x = torch.randn(64, 6)
    graph = amgp_fx.analyze(model, (x,))
    groups = graph.prunable_groups()
    policy = SwitchPolicy(graph, groups, AmgpConfig(AmgpSchedule(100, 10, 2, 20, 20), ratio=0.5, **config))
    return model, x, graph, groups, policy


def _drop_constant(groups) -> dict[str, list[int]]:
    """Keep units 0..7 of the first hidden layer (the constant ones go), all of the second."""
    return {groups[0].id: list(range(8))}


@pytest.mark.parametrize("rescale", [True, False])
def test_removing_constant_units_with_the_fold_is_exactly_function_preserving(rescale):
    model, x, graph, groups, policy = _setup(rescale=rescale, fold_bias=True)
    before = graph.module(x).detach().clone()
    policy.shrink(_drop_constant(groups), None, stats=consumer_inputs(graph, (x,)))
    assert groups[0].size == 8 and set(policy.folds) == {"2.bias"}
    torch.testing.assert_close(graph.module(x), before, atol=1e-5, rtol=1e-5)
    assert policy.scales.get(groups[0].id, 1.0) == pytest.approx(1.0, abs=1e-6)  # constant units: no variance lost


@pytest.mark.parametrize("rescale", [True, False])
def test_without_the_fold_the_same_shrink_changes_the_outputs(rescale):
    model, x, graph, groups, policy = _setup(rescale=rescale)
    before = graph.module(x).detach().clone()
    policy.shrink(_drop_constant(groups), None)
    assert (graph.module(x) - before).abs().max() > 1e-2  # the oracle above is not vacuous


def test_the_fold_is_the_removed_columns_times_the_constant():
    model, x, graph, groups, policy = _setup(rescale=False, fold_bias=True)
    bias = model[2].bias.detach().clone()
    expected = bias + model[2].weight.detach()[:, CONSTANT] @ model[0].bias.detach()[CONSTANT]
    policy.shrink(_drop_constant(groups), None, stats=consumer_inputs(graph, (x,)))
    torch.testing.assert_close(model[2].bias.detach(), expected)


def test_the_fold_keeps_the_consumers_mean_output_through_the_rescale():
    """Ordinary units (not constant): the rescale multiplies the kept units' outgoing weights by s > 1,
    which also moves their mean contribution; the fold takes that out too, so the last layer's
    mean output over the batch is what it was (exact for the layer right after the shrunk group)."""
    model, x, graph, groups, policy = _setup(constant=False, fold_bias=True)
    keep = {groups[1].id: [0, 1, 2, 3, 4, 6, 8, 10]}  # the second hidden layer (12 units) keeps 8
    before = graph.module(x).detach().mean(0)
    policy.shrink(keep, None, stats=consumer_inputs(graph, (x,)))
    assert policy.scales[groups[1].id] > 1.0
    torch.testing.assert_close(graph.module(x).detach().mean(0), before, atol=1e-5, rtol=1e-5)


def test_a_shrink_with_the_fold_needs_measurements():
    _, x, graph, groups, policy = _setup(fold_bias=True)
    with pytest.raises(ValueError, match="fold_bias .* needs stats="):
        policy.shrink(_drop_constant(groups), None)


def test_a_restoring_growth_gives_the_fold_back():
    model, x, graph, groups, policy = _setup(fold_bias=True)
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    record, _ = policy.shrink(_drop_constant(groups), None, stats=consumer_inputs(graph, (x,)))
    assert not torch.equal(model[2].bias, original["2.bias"])
    policy.grow(record, None)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, original[name], atol=1e-6, rtol=1e-6)
    assert policy.folds == {}


def test_a_growth_ramp_takes_the_fold_out_in_equal_parts():
    model, x, graph, groups, policy = _setup(fold_bias=True, preserve_growth=True, grow_ramp_steps=4)
    original = graph.module(x).detach().clone()
    original_bias = model[2].bias.detach().clone()
    record, _ = policy.shrink(_drop_constant(groups), None, stats=consumer_inputs(graph, (x,)))
    fold = model[2].bias.detach() - original_bias
    policy.grow(record, None)  # preserving: the regrown units enter with zero outgoing weights, the fold stays
    torch.testing.assert_close(graph.module(x), original, atol=1e-5, rtol=1e-5)
    for step in range(4):
        policy.step()
        torch.testing.assert_close(model[2].bias.detach(), original_bias + fold * (1 - (step + 1) / 4),
                                   atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(graph.module(x), original, atol=1e-5, rtol=1e-5)  # constant units: exact
    assert policy.ramp is None


def test_a_fade_folds_as_it_goes_so_every_step_keeps_the_outputs():
    model, x, graph, groups, policy = _setup(fold_bias=True)
    start = graph.module(x).detach().clone()
    keep = _drop_constant(groups)
    policy.begin_fade(keep, 4, stats=consumer_inputs(graph, (x,)))
    for _ in range(4):
        policy.step()
        torch.testing.assert_close(graph.module(x), start, atol=1e-5, rtol=1e-5)
    folded = {k: v.clone() for k, v in policy.fade.folded.items()}
    policy.shrink(keep, None)
    torch.testing.assert_close(graph.module(x), start, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(policy.folds["2.bias"], folded["2.bias"])


def test_a_fade_without_the_fold_changes_the_outputs_along_the_way():
    _, x, graph, groups, policy = _setup()
    start = graph.module(x).detach().clone()
    policy.begin_fade(_drop_constant(groups), 4)
    policy.step()
    assert (graph.module(x) - start).abs().max() > 1e-3


def test_a_fade_in_progress_resumes_with_its_measurements():
    model, x, graph, groups, policy = _setup(fold_bias=True)
    start = graph.module(x).detach().clone()
    keep = _drop_constant(groups)
    policy.begin_fade(keep, 4, stats=consumer_inputs(graph, (x,)))
    policy.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "switch": policy.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed_model, _, resumed_graph, resumed_groups, resumed = _setup(fold_bias=True)
    resumed_model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["switch"])
    for _ in range(3):
        resumed.step()
    resumed.shrink(keep, None)
    torch.testing.assert_close(resumed_graph.module(x), start, atol=1e-5, rtol=1e-5)
    assert np.array_equal(resumed.kept[groups[0].id], np.arange(8))


def test_a_consumer_without_a_bias_is_left_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3, bias=False))
    x = torch.randn(32, 6)
    graph = amgp_fx.analyze(model, (x,))
    (group,) = graph.prunable_groups()
    policy = SwitchPolicy(graph, [group], AmgpConfig(AmgpSchedule(100, 10, 2, 20, 20), ratio=0.5, fold_bias=True))
    names = {n for n, _ in model.named_parameters()}
    policy.shrink({group.id: list(range(8))}, None, stats=consumer_inputs(graph, (x,)))
    assert policy.folds == {} and {n for n, _ in model.named_parameters()} == names


# -- in the hook -------------------------------------------------------------------------------------
class _Context:
    def __init__(self, step, batch=None):
        self.step, self.batch = step, batch


def test_the_hook_measures_on_the_steps_batch_and_refuses_without_one():
    from amgp_fx.data.batch import Batch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 1))
    graph = amgp_fx.analyze(model, (torch.randn(4, 4),))
    config = AmgpConfig(AmgpSchedule(10, warmup_steps=2, cycles=1, pruned_steps=4), fold_bias=True,
                        criterion="activation")
    hook = AmgpHook(graph, config, plan_sync=lambda keep: keep)
    with pytest.raises(AmgpError, match="no .batch and the hook no probe"):
        hook._consumer_inputs(_Context(2))
    batch = Batch(torch.rand(16, 4), torch.zeros(16, 0, dtype=torch.long), torch.zeros(16))
    stats = hook._consumer_inputs(_Context(2, batch))
    expected = torch.relu(model[0](batch.dense)).detach().double()
    torch.testing.assert_close(stats["linear_1"].mean, expected.mean(0))

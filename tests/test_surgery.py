"""Physical shrink/grow: parameters stay the same objects, optimizer state follows, fresh growth
keeps the function, errors name the problem."""
import copy

import pytest
import torch

import amgp_fx
from amgp_fx.surgery import SurgeryError
from op_family_models import FAMILIES


def _mlp():
    model, args = FAMILIES["mlp"]()
    return model, args, amgp_fx.analyze(model, args)


OPTIMIZERS = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_state_is_sliced_with_the_parameters(name):
    model, args, graph = _mlp()
    optimizer = OPTIMIZERS[name](model.parameters())
    graph.module(*args).sum().backward()
    optimizer.step()
    weight = model.net[0].weight
    state_before = {k: v.clone() for k, v in optimizer.state[weight].items() if torch.is_tensor(v) and v.dim()}
    group = graph.group("net.0.weight[0]")
    keep = [1, 3, 4, 9, 15]
    amgp_fx.shrink_(graph, {group.id: keep}, optimizer)
    assert model.net[0].weight is weight and weight.shape == (5, 6)
    for key, value in state_before.items():
        torch.testing.assert_close(optimizer.state[weight][key], value[keep])
    # the same optimizer object keeps training the smaller model
    optimizer.zero_grad()
    graph.module(*args).sum().backward()
    optimizer.step()
    assert model.net[3].weight.grad.shape == (12, 5)


def test_grow_fresh_keeps_the_function_of_hidden_units():
    model, args, graph = _mlp()
    graph.module.eval()
    group = graph.group("net.0.weight[0]")
    amgp_fx.shrink_(graph, {group.id: list(range(8))})
    record = amgp_fx.shrink_(graph, {group.id: list(range(4))})
    four_units = graph.module(*args)
    amgp_fx.grow_(graph, record, init="fresh", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(graph.module(*args), four_units, atol=1e-6, rtol=1e-5)
    assert model.net[0].weight.shape == (8, 6)
    regrown_rows = model.net[0].weight[4:]
    assert regrown_rows.abs().sum() > 0, "incoming weights of new units must be random, not zero"
    assert model.net[3].weight[:, 4:].abs().sum() == 0, "outgoing weights of new units start at zero"


def test_grow_fresh_output_equals_the_pruned_model():
    model, args, graph = _mlp()
    graph.module.eval()
    group = graph.group("net.3.weight[0]")
    record = amgp_fx.shrink_(graph, {group.id: [0, 2, 5, 7, 11]})
    pruned = graph.module(*args)
    amgp_fx.grow_(graph, record, init="fresh")
    torch.testing.assert_close(graph.module(*args), pruned, atol=1e-6, rtol=1e-5)
    assert model.net[3].weight.shape == (12, 16)


def test_grow_reset_zeroes_optimizer_state_of_regrown_units():
    model, args, graph = _mlp()
    optimizer = torch.optim.Adam(model.parameters())
    graph.module(*args).sum().backward()
    optimizer.step()
    original = optimizer.state[model.net[0].weight]["exp_avg"].clone()
    group = graph.group("net.0.weight[0]")
    record = amgp_fx.shrink_(graph, {group.id: list(range(0, 16, 2))}, optimizer)
    amgp_fx.grow_(graph, record, optimizer, optimizer_state="reset")
    state = optimizer.state[model.net[0].weight]["exp_avg"]
    torch.testing.assert_close(state[0::2], original[0::2])
    assert state[1::2].abs().sum() == 0


def test_nested_shrinks_grow_in_reverse_order():
    model, args, graph = _mlp()
    graph.module.eval()
    reference = graph.module(*args)
    group = graph.group("net.0.weight[0]")
    first = amgp_fx.shrink_(graph, {group.id: list(range(12))})
    second = amgp_fx.shrink_(graph, {group.id: [0, 5, 6]})
    assert graph.group(group.id).size == 3
    with pytest.raises(SurgeryError, match="most recent shrink"):
        amgp_fx.grow_(graph, first)
    amgp_fx.grow_(graph, second)
    amgp_fx.grow_(graph, first)
    torch.testing.assert_close(graph.module(*args), reference, atol=0, rtol=0)


def test_snapshot_lives_on_the_cpu_and_reports_its_size():
    model, args, graph = _mlp()
    record = amgp_fx.shrink_(graph, {graph.group("net.0.weight[0]").id: [0, 1]})
    saved = [t for ts in record.tensors for slices in ts.saved.values() for t in slices]
    assert saved and all(t.device.type == "cpu" for t in saved)
    # 14 removed rows of (6 weights + 1 bias) and 14 removed columns of the (12, 16) consumer
    assert record.nbytes == (14 * 6 + 14 + 12 * 14) * 4


def test_slices_kept_on_the_device_are_copies_and_restore_exactly():
    model, args, graph = _mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    graph.module(*args).sum().backward()
    optimizer.step()
    weight = model.net[0].weight
    rows = weight.detach().clone()
    moments = {k: v.clone() for k, v in optimizer.state[weight].items() if v.dim()}
    record = amgp_fx.shrink_(graph, {graph.group("net.0.weight[0]").id: [0, 1]}, optimizer, saved_device=None)
    with torch.no_grad():  # writes to the live (shrunk) storage must not reach the saved slices
        for parameter in model.parameters():
            parameter.zero_()
    amgp_fx.grow_(graph, record, optimizer)
    removed = list(range(2, 16))
    torch.testing.assert_close(weight[removed], rows[removed], rtol=0, atol=0)
    for key, value in moments.items():
        torch.testing.assert_close(optimizer.state[weight][key][removed], value[removed], rtol=0, atol=0)


@pytest.mark.parametrize("keep, message", [
    ([], "would empty it"),
    ([0, 0], "distinct"),
    ([99], r"\[0, 16\)"),
])
def test_bad_keep_requests_raise_clear_errors(keep, message):
    _, _, graph = _mlp()
    with pytest.raises(SurgeryError, match=message):
        amgp_fx.shrink_(graph, {graph.group("net.0.weight[0]").id: keep})


def test_frozen_group_cannot_be_shrunk():
    _, _, graph = _mlp()
    frozen = next(g for g in graph.groups if not g.prunable)
    with pytest.raises(SurgeryError, match="cannot be pruned"):
        amgp_fx.shrink_(graph, {frozen.id: [0]})


def test_eager_module_attributes_follow_the_surgery():
    model, args, graph = _mlp()
    amgp_fx.shrink_(graph, {graph.group("net.0.weight[0]").id: [0, 1, 2]})
    assert model.net[0].out_features == 3 and model.net[3].in_features == 3
    assert "out_features=3" in repr(model)


def test_train_and_eval_switch_dropout_in_the_graph():
    model, args, graph = _mlp()
    graph.module.eval()
    a, b = graph.module(*args), graph.module(*args)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    graph.module.train()
    torch.manual_seed(0)
    c = graph.module(*args)
    assert not torch.equal(a, c)  # dropout active again


def test_graph_runs_any_batch_size_after_shrink():
    model, args, graph = _mlp()
    amgp_fx.shrink_(graph, {graph.group("net.0.weight[0]").id: [0, 1, 2]})
    assert graph.module(torch.randn(17, 6)).shape == (17,)


def test_training_continues_while_an_old_graph_is_still_referenced():
    """A loss from before the shrink keeps autograd's gradient accumulators alive; they must not
    impose the old shapes on the next backward."""
    model, args, graph = _mlp()
    optimizer = torch.optim.Adam(model.parameters())
    loss = graph.module(*args).sum()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    record = amgp_fx.shrink_(graph, {graph.group("net.0.weight[0]").id: [0, 1, 2]}, optimizer)
    loss = graph.module(*args).sum()  # the old loss (and its graph) is released only after this
    loss.backward()
    optimizer.step()
    amgp_fx.grow_(graph, record, optimizer)
    loss = graph.module(*args).sum()
    loss.backward()
    assert model.net[0].weight.grad.shape == (16, 6)


def _adam_after_a_late_growth(policy: str):
    """An MLP trained 200 Adam steps with half of ``net.0``'s units removed, then grown back with ``policy``."""
    torch.manual_seed(0)
    model, args, graph = _mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    group = graph.group("net.0.weight[0]")
    record = amgp_fx.shrink_(graph, {group.id: list(range(0, 16, 2))}, optimizer)
    for _ in range(200):
        optimizer.zero_grad()
        graph.module(*args).square().mean().backward()
        optimizer.step()
    amgp_fx.grow_(graph, record, optimizer, optimizer_state=policy)
    return model, args, graph, optimizer


def test_grow_mean_gives_regrown_units_the_kept_units_mean_second_moments():
    model, _, _, optimizer = _adam_after_a_late_growth("mean")
    producer = optimizer.state[model.net[0].weight]  # grown along dim 0 (its rows)
    torch.testing.assert_close(producer["exp_avg_sq"][1::2], producer["exp_avg_sq"][0::2].mean(0, keepdim=True).expand(8, -1))
    assert producer["exp_avg"][1::2].abs().sum() == 0
    consumers = [p for p in model.parameters() if p.dim() == 2 and p.shape[1] == 16]
    assert consumers, "the MLP has a consumer of net.0's units"
    for weight in consumers:  # grown along dim 1 (its columns)
        state = optimizer.state[weight]
        torch.testing.assert_close(state["exp_avg_sq"][:, 1::2], state["exp_avg_sq"][:, 0::2].mean(1, keepdim=True).expand(-1, 8))
        assert state["exp_avg"][:, 1::2].abs().sum() == 0


def test_grow_mean_keeps_the_first_adam_updates_of_regrown_units_as_small_as_the_kept_ones():
    """With zero moments, Adam's bias correction (counted per tensor, 200 steps in) turns a regrown slot's
    first gradient into a step of ~1.6x the rate in its sign; mean second moments keep it in scale."""
    updates = {}
    for policy in ("reset", "mean"):
        model, args, graph, optimizer = _adam_after_a_late_growth(policy)
        weight = model.net[0].weight
        before = weight.detach().clone()
        optimizer.zero_grad()
        graph.module(*args).square().mean().backward()
        optimizer.step()
        step = (weight.detach() - before).abs()
        updates[policy] = step[1::2].max().item()
    lr = 1e-2
    assert updates["reset"] > 1.2 * lr  # the sign step the option exists to avoid
    assert updates["mean"] < lr / 2 and updates["mean"] < updates["reset"] / 3

"""One-shot pruning plans: widths (ratio, cap, rounding), which channels, FLOPs targets, re-application,
JSON round trip and refusals. Expected widths and FLOPs come from formulas, not golden numbers."""
from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import amgp_fx
from amgp_fx.pruning_plan import PlanError, PruningPlan, _round_width, apply_plan, plan_pruning, prune_

B, IN, H1, H2 = 4, 8, 64, 20


def mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(IN, H1), torch.nn.ReLU(), torch.nn.Linear(H1, H2), torch.nn.ReLU(),
                               torch.nn.Linear(H2, 1))


def inputs() -> tuple[torch.Tensor]:
    return (torch.randn(B, IN, generator=torch.Generator().manual_seed(1)),)


def mlp_flops(width1: int, width2: int) -> int:
    """FlopCounterMode's count for the MLP: 2 * B * (in * out) per Linear (bias adds are not counted)."""
    return 2 * B * (IN * width1 + width1 * width2 + width2 * 1)


def widths(plan: PruningPlan, graph) -> list[int]:
    kept = {g.id: len(g.keep) for g in plan.groups}
    return [kept.get(g.id, g.full_size) for g in graph.prunable_groups()]


@pytest.mark.parametrize("ratio, multiple, expected", [
    (0.5, 8, [32, 8]),    # 20 * 0.5 = 10 rounds to 8
    (0.3, 8, [48, 16]),   # 44.8 -> 48, 14 -> 16
    (0.5, 1, [32, 10]),
    (0.95, 8, [8, 8]),    # capped at 0.9: 6.4 -> 8 and 2 -> 8, never 0
])
def test_widths_follow_ratio_cap_and_rounding(ratio, multiple, expected):
    graph = amgp_fx.analyze(mlp(), inputs())
    assert [g.full_size for g in graph.prunable_groups()] == [H1, H2]
    assert widths(plan_pruning(graph, ratio, multiple=multiple), graph) == expected


def test_group_no_larger_than_the_multiple_rounds_to_whole_channels():
    model = torch.nn.Sequential(torch.nn.Linear(IN, 6), torch.nn.ReLU(), torch.nn.Linear(6, 1))
    graph = amgp_fx.analyze(model, inputs())
    assert widths(plan_pruning(graph, 0.5), graph) == [3]


@given(raw=st.floats(0.0, 400.0), full=st.integers(1, 300), multiple=st.integers(1, 16))
def test_rounded_width_is_never_zero_and_never_too_wide(raw, full, multiple):
    width = _round_width(min(raw, full), full, multiple)
    assert 1 <= width <= full
    assert width % multiple == 0 or width == full or full <= multiple


def test_kept_channels_are_the_highest_scoring():
    graph = amgp_fx.analyze(mlp(), inputs())
    scores = amgp_fx.score(graph, "l2")
    plan = plan_pruning(graph, 0.5)
    for entry in plan.groups:
        order = torch.argsort(scores[entry.id], descending=True)[: len(entry.keep)]
        assert list(entry.keep) == sorted(order.tolist())


def test_pruned_model_equals_dense_model_with_removed_units_zeroed():
    """Mask oracle: removing hidden units == zeroing their incoming weights and biases (ReLU(0) = 0)."""
    model = mlp()
    masked = copy.deepcopy(model)
    graph = amgp_fx.analyze(model, inputs())
    plan, _ = prune_(graph, 0.5)
    for entry, layer in zip(plan.groups, (masked[0], masked[2]), strict=True):
        removed = sorted(set(range(entry.full_size)) - set(entry.keep))
        with torch.no_grad():
            layer.weight[removed] = 0
            layer.bias[removed] = 0
    torch.testing.assert_close(graph.module(*inputs()), masked(*inputs()))
    assert plan.stats["flops_before"] == mlp_flops(H1, H2)
    assert plan.stats["flops_after"] == mlp_flops(32, 8)
    assert plan.stats["params_after"] == sum(p.numel() for p in graph.module.parameters())


def test_plan_reapplies_to_a_fresh_copy_through_json(tmp_path):
    model = mlp()
    fresh = copy.deepcopy(model)
    graph = amgp_fx.analyze(model, inputs())
    plan, _ = prune_(graph, 0.4)
    plan.save(tmp_path / "plan.json")
    loaded = PruningPlan.load(tmp_path / "plan.json")
    assert loaded == plan
    other = amgp_fx.analyze(fresh, inputs())
    apply_plan(other, loaded)
    torch.testing.assert_close(other.module(*inputs()), graph.module(*inputs()))


def test_plan_matches_groups_by_name_when_ids_differ():
    graph = amgp_fx.analyze(mlp(), inputs())
    plan = plan_pruning(graph, 0.5)
    renamed = dataclasses.replace(plan, groups=tuple(dataclasses.replace(g, id=f"x{g.id}") for g in plan.groups))
    apply_plan(graph, renamed)
    assert [g.size for g in graph.prunable_groups()] == [32, 8]


@pytest.mark.parametrize("target", [0.5, 0.2])
def test_flops_target_is_met_by_the_smallest_ratio(target):
    graph = amgp_fx.analyze(mlp(), inputs())
    plan = plan_pruning(graph, flops_target=target, multiple=1)
    width1, width2 = widths(plan, graph)
    assert plan.stats["flops_after"] == mlp_flops(width1, width2) <= target * mlp_flops(H1, H2)
    less = plan_pruning(graph, plan.ratio - 0.9 / 1000, multiple=1)  # the grid step below the answer
    assert mlp_flops(*widths(less, graph)) > target * mlp_flops(H1, H2)
    assert [g.size for g in graph.prunable_groups()] == [H1, H2]  # the search leaves the graph as it was


@pytest.mark.parametrize("options, message", [
    (dict(ratio=1.5), r"ratio 1.5 is outside \(0, 1\)"),
    (dict(ratio=0.0), r"ratio 0.0 is outside \(0, 1\)"),
    (dict(ratio=math.nan), "outside"),
    (dict(flops_target=1.0), r"FLOPs target 1.0 is outside"),
    (dict(ratio=0.97, max_layer_ratio=1.0), r"ratio 0.97 would empty group g1 \(2.weight\[0\], hidden, 20 channels\)"),
    (dict(ratio=0.5, groups=["g2"]), r"group g2 \(4.weight\[0\]\) cannot be pruned: model output"),
    (dict(ratio=0.5, groups=["nope"]), "no group 'nope'"),
    (dict(ratio=0.5, kinds=["heads"]), "no prunable group of kind heads"),
    (dict(ratio=0.5, flops_target=0.5), "exactly one of"),
    (dict(flops_target=0.001), "out of reach"),
    (dict(ratio=0.5, multiple=0), "positive integer"),
    (dict(ratio=0.5, criterion="fisher"), "unknown importance criterion"),
])
def test_refusals(options, message):
    graph = amgp_fx.analyze(mlp(), inputs())
    with pytest.raises(PlanError, match=message):
        plan_pruning(graph, **options)


def test_per_group_ratio_overrides_the_global_one():
    graph = amgp_fx.analyze(mlp(), inputs())
    assert widths(plan_pruning(graph, 0.5, group_ratios={"g0": 0.25}), graph) == [48, 8]
    assert widths(plan_pruning(graph, group_ratios={"0.weight[0]": 0.75}), graph) == [16, H2]


def test_plan_for_another_model_is_refused():
    graph = amgp_fx.analyze(mlp(), inputs())
    plan = plan_pruning(graph, 0.5)
    other = amgp_fx.analyze(torch.nn.Sequential(torch.nn.Linear(IN, 48), torch.nn.ReLU(), torch.nn.Linear(48, 1)),
                            inputs())
    with pytest.raises(PlanError, match="not in this model"):
        apply_plan(other, plan)
    apply_plan(graph, plan)
    with pytest.raises(PlanError, match="already pruned"):
        apply_plan(graph, plan)


@pytest.mark.parametrize("edit, message", [
    (lambda d: {**d, "version": 99}, "version 99 is not supported"),
    (lambda d: {**d, "format": "other"}, "not an amgp-fx pruning plan"),
    (lambda d: {**d, "groups": [{"id": "g0"}]}, "malformed pruning plan"),
    (lambda d: {**d, "groups": [{**d["groups"][0], "keep": [3, 1]}]}, "distinct, ascending"),
])
def test_malformed_plans(edit, message):
    graph = amgp_fx.analyze(mlp(), inputs())
    data = plan_pruning(graph, 0.5).to_dict()
    with pytest.raises(PlanError, match=message):
        PruningPlan.from_dict(edit(data))

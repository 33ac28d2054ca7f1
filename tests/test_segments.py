"""Balanced pruning of groups that span concatenated segments (issue 13, item 4), on a DCN-style model
whose x0 concatenates five embedding tables and a dense tower. Oracles: tensor shapes after the shrink,
per-segment shares computed from the segment sizes, importance order within each segment, the mask
oracle (removing equals zeroing) and the per-member size table against the real tensors."""
from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import amgp_fx
from amgp_fx.export import export_onnx
from amgp_fx.importance import score
from amgp_fx.pruning_plan import GroupKeep, PlanError, PruningPlan, apply_plan, plan_pruning, prune_
from amgp_fx.segments import group_segments, keep_channels
from amgp_fx.surgery import grow_, shrink_
from amgp_fx.testing import assert_round_trip, masked_copy
from tests.fixtures.segment_models import DCNConcat, dcn_factory, dcn_inputs


def analysed():
    model, inputs = dcn_factory()
    return model, inputs, amgp_fx.analyze(model, inputs)


def x0_group(graph):
    return next(g for g in graph.prunable_groups() if len(group_segments(g)) > 1)


def zero_size_dims(module: torch.nn.Module) -> list[str]:
    return [f"{name} {tuple(p.shape)}" for name, p in module.named_parameters() if 0 in p.shape]


def test_the_x0_group_has_one_segment_per_table_and_one_for_the_tower():
    _, _, graph = analysed()
    group = x0_group(graph)
    owners = [s.owner for s in group_segments(group)]
    assert owners == [f"emb.{i}.weight[1]" for i in range(5)] + ["dense.2.weight[0]"]
    assert sum(len(s.channels) for s in group_segments(group)) == group.full_size == 96


@pytest.mark.parametrize("ratio, multiple", [(0.5, 8), (0.5, 1), (0.75, 8), (0.9, 1)])
def test_balanced_default_keeps_every_segments_share_and_never_empties_a_tensor(ratio, multiple):
    model, inputs, graph = analysed()
    group = x0_group(graph)
    segments = group_segments(group)
    scores = score(graph, "l2", groups=[group])[group.id]
    plan = plan_pruning(graph, ratio, multiple=multiple)
    entry = next(g for g in plan.groups if g.id == group.id)
    assert entry.policy == "balanced"
    kept = np.asarray(entry.keep)
    share = len(kept) / group.full_size
    for segment in segments:
        mine = np.intersect1d(kept, segment.channels)
        assert 1 <= len(mine) and abs(len(mine) - share * len(segment.channels)) < 1, segment.owner
        dropped = np.setdiff1d(segment.channels, mine)  # within a segment: the most important are kept
        if len(dropped):
            assert scores[mine].min() >= scores[dropped].max()
    expected_shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    apply_plan(graph, plan)
    assert zero_size_dims(graph.module) == []
    for member in entry.members:  # the reported sizes are the real sizes after the shrink
        tensor = dict(graph.module.named_parameters())[member["tensor"]]
        assert member["before"] == expected_shapes[member["tensor"]][member["dim"]]
        assert member["after"] == tensor.shape[member["dim"]], member
    assert graph.module(*inputs).shape == model(*inputs).shape


def test_global_top_k_would_empty_tables_and_is_repaired_unless_allowed():
    _, _, graph = analysed()
    group = x0_group(graph)
    allowed = plan_pruning(graph, 0.5, policy="global", allow_empty=True)
    emptied = [m["tensor"] for g in allowed.groups for m in g.members if m["after"] == 0]
    assert emptied, "the fixture's unequal tables must make a plain top-k drop whole tables"
    repaired = plan_pruning(graph, 0.5, policy="global")
    entry = next(g for g in repaired.groups if g.id == group.id)
    assert all(m["after"] >= 1 for m in entry.members)
    assert len(entry.keep) == len(next(g for g in allowed.groups if g.id == group.id).keep)


def test_allow_empty_is_explicit_and_apply_plan_refuses_an_emptying_plan():
    _, _, graph = analysed()
    group = x0_group(graph)
    table3 = next(s for s in group_segments(group) if s.owner == "emb.3.weight[1]")
    keep = tuple(sorted(set(range(group.full_size)) - set(table3.channels.tolist())))
    plan = PruningPlan((GroupKeep(group.id, group.name, group.kind, group.full_size, keep),))
    with pytest.raises(PlanError, match=r"empties emb\.3\.weight .*--allow-empty-members"):
        apply_plan(graph, plan)
    apply_plan(graph, PruningPlan.from_dict({**plan.to_dict(), "allow_empty": True}))
    assert dict(graph.module.named_parameters())["emb.3.weight"].shape[1] == 0


def test_flops_target_planner_keeps_segments_too():
    _, inputs, graph = analysed()
    plan, _ = prune_(graph, flops_target=0.3, multiple=1)
    assert plan.stats["flops_after"] <= 0.3 * plan.stats["flops_before"]
    assert zero_size_dims(graph.module) == []
    entry = next(g for g in plan.groups if g.id == x0_group(graph).id)
    assert entry.policy == "balanced" and all(m["after"] >= 1 for m in entry.members)


def test_mask_oracle_holds_for_the_balanced_keep():
    model, inputs, graph = analysed()
    group = x0_group(graph)
    plan = plan_pruning(graph, 0.5, groups=[group.id])
    keep = plan.groups[0].keep
    reference_model, _ = dcn_factory()
    dropped = np.setdiff1d(np.arange(group.full_size), keep)
    masked = masked_copy(reference_model, amgp_fx.analyze(reference_model, inputs).group(group.id), dropped).eval()
    shrink_(graph, {group.id: list(keep)})
    with torch.no_grad():
        torch.testing.assert_close(graph.module(*inputs), masked(*inputs), atol=1e-5, rtol=1e-4)


def test_plan_json_round_trip_keeps_policy_and_member_sizes(tmp_path):
    _, _, graph = analysed()
    plan = plan_pruning(graph, 0.5, policy="balanced")
    plan.save(tmp_path / "plan.json")
    loaded = PruningPlan.load(tmp_path / "plan.json")
    assert loaded == plan and loaded.groups[0].members and loaded.policy == "balanced"


def test_unknown_policy_is_refused():
    _, _, graph = analysed()
    with pytest.raises(PlanError, match="unknown pruning policy"):
        plan_pruning(graph, 0.5, policy="even")


def test_a_width_below_one_per_segment_keeps_one_channel_of_each():
    model = DCNConcat()
    graph = amgp_fx.analyze(model, dcn_factory()[1])
    group = x0_group(graph)
    plan = plan_pruning(graph, group_ratios={group.id: 0.97}, max_layer_ratio=1.0, multiple=1)
    assert len(plan.groups[0].keep) == len(group_segments(group))


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 12), min_size=1, max_size=6), fraction=st.floats(0.0, 1.0),
       policy=st.sampled_from(["balanced", "global"]), seed=st.integers(0, 1000))
def test_keep_channels_width_and_no_empty_segment(sizes, fraction, policy, seed):
    bounds = np.cumsum([0, *sizes])
    segments = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(sizes))]
    scores = torch.rand(int(bounds[-1]), generator=torch.Generator().manual_seed(seed))
    width = max(1, round(fraction * bounds[-1]))
    kept = keep_channels(scores, width, segments, policy)
    assert kept == sorted(set(kept)) and len(kept) == max(width, len(sizes))
    counts = [np.intersect1d(kept, s).size for s in segments]
    assert min(counts) >= 1
    if policy == "balanced":  # no one-channel move between two segments brings the split closer to the shares
        shares = [len(kept) * size / bounds[-1] for size in sizes]
        for i, j in itertools.permutations(range(len(sizes)), 2):
            if counts[i] > 1 and counts[j] < sizes[j]:
                now = (counts[i] - shares[i]) ** 2 + (counts[j] - shares[j]) ** 2
                moved = (counts[i] - 1 - shares[i]) ** 2 + (counts[j] + 1 - shares[j]) ** 2
                assert moved >= now - 1e-9, (counts, shares)


def test_balanced_split_of_a_clipped_segment_gets_no_extra_channel():
    """The case hypothesis found: a segment raised to its one-channel floor must not also win a remainder."""
    sizes = [9, 10, 2, 12, 7, 4]
    bounds = np.cumsum([0, *sizes])
    segments = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(sizes))]
    kept = keep_channels(torch.ones(int(bounds[-1])), 19, segments, "balanced")
    assert [np.intersect1d(kept, s).size for s in segments] == [4, 4, 1, 5, 3, 2]


def _outputs(module, inputs):
    with torch.no_grad():
        return module.eval()(*inputs)


def test_balanced_plan_grows_back_exactly_with_the_optimizer_state():
    """Shrink to the balanced plan, grow with restore: outputs and Adam state bit-identical."""
    model, inputs, graph = analysed()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    graph.module(*inputs).pow(2).sum().backward()
    optimizer.step()
    before, state = _outputs(graph.module, inputs), optimizer.state_dict()
    state = {pid: {k: v.clone() for k, v in s.items()} for pid, s in state["state"].items()}
    record = apply_plan(graph, plan_pruning(graph, 0.5, multiple=1), optimizer)
    assert zero_size_dims(graph.module) == [] and graph.module(*inputs).shape == before.shape
    grow_(graph, record, optimizer)
    torch.testing.assert_close(_outputs(graph.module, inputs), before, atol=0, rtol=0)
    for pid, entries in optimizer.state_dict()["state"].items():
        for key, value in entries.items():
            torch.testing.assert_close(value, state[pid][key], atol=0, rtol=0)


def test_random_keeps_of_every_group_round_trip():
    model, inputs, graph = analysed()
    assert_round_trip(graph, inputs, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))


@pytest.mark.filterwarnings("ignore")
def test_balanced_pruned_model_exports_to_onnx_with_ort_parity(tmp_path):
    import onnxruntime as ort

    _, inputs, graph = analysed()
    plan, _ = prune_(graph, 0.5, measure_flops=False)
    assert zero_size_dims(graph.module) == []
    report = export_onnx(graph.module, inputs, tmp_path / "dcn.onnx")
    assert report.max_abs_diff <= report.atol
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    other = dcn_inputs(5, seed=7)  # another batch than the traced one
    (actual,) = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), other)})
    np.testing.assert_allclose(actual, _outputs(graph.module, other).numpy(), atol=1e-4, rtol=1e-3)


@functools.lru_cache(maxsize=1)
def _shared_analysis():
    """One analysis for the property test below (each example shrinks it and grows it back)."""
    model, inputs, graph = analysed()
    return graph, inputs, _outputs(graph.module, inputs)


@settings(max_examples=40, deadline=None)
@given(ratio=st.floats(0.05, 0.95), policy=st.sampled_from(["auto", "balanced", "global"]),
       multiple=st.sampled_from([1, 2, 4, 8]), cap=st.sampled_from([0.9, 1.0]),
       x0_only=st.booleans())
def test_no_plan_leaves_a_zero_size_dim_on_the_dcn_pattern(ratio, policy, multiple, cap, x0_only):
    """Over ratios, policies, roundings and layer caps: every member tensor keeps at least one channel,
    the plan's per-member sizes are the real sizes, the model runs, and growing back restores it."""
    graph, inputs, reference = _shared_analysis()
    shapes = {name: tuple(p.shape) for name, p in graph.module.named_parameters()}
    x0 = x0_group(graph)
    requests = {"group_ratios": {x0.id: ratio}} if x0_only else {"ratio": ratio}
    plan = plan_pruning(graph, policy=policy, multiple=multiple, max_layer_ratio=cap, **requests)
    record = apply_plan(graph, plan)
    try:
        assert zero_size_dims(graph.module) == []
        real = dict(graph.module.named_parameters())
        for entry in plan.groups:
            assert all(m["after"] >= 1 for m in entry.members), entry.members
            for member in entry.members:
                assert member["after"] == real[member["tensor"]].shape[member["dim"]], member
                assert member["before"] == shapes[member["tensor"]][member["dim"]], member
        assert graph.module(*inputs).shape == reference.shape
    finally:
        grow_(graph, record)
    torch.testing.assert_close(_outputs(graph.module, inputs), reference, atol=0, rtol=0)

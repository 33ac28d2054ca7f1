"""tools/probe_growth_jump.py: the growth it probes changes no output, and every run is recorded."""
import json

import pytest
from tool_loader import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("probe_growth_jump")


def test_growth_is_lossless_and_each_width_policy_and_rewarm_is_recorded(tool, tmp_path):
    out = tmp_path / "jump.json"
    results = tool.main(["--widths", "8", "24", "--policies", "reset", "mean", "--rewarm", "0", "3", "--seeds", "1",
                         "--batch-size", "64", "--steps", "14", "--grow-at", "8", "--out", str(out)])
    assert {(r["width"], r["policy"], r["rewarm"]) for r in results} == {
        (w, p, k) for w in (8, 24) for p in ("reset", "mean") for k in (0, 3)}
    for r in results:
        assert r["loss_at_growth"] == pytest.approx(r["loss_before_growth"], rel=1e-5)  # fresh growth: same function
        assert r["jump"] == pytest.approx(r["worst_in_30_steps"] / r["loss_before_growth"] - 1)
    same = {(r["width"], r["policy"]): r for r in results if r["rewarm"] == 0}
    assert same[(8, "reset")]["loss_before_growth"] == same[(8, "mean")]["loss_before_growth"]  # same run up to it
    assert len(json.loads(out.read_text())["results"]) == len(results)


def test_growth_step_must_be_inside_the_run(tool, tmp_path):
    with pytest.raises(SystemExit):
        tool.main(["--steps", "10", "--grow-at", "10", "--out", str(tmp_path / "x.json")])


def test_unit_rewarm_scales_only_the_regrown_entries_updates_and_then_stops(tool):
    import torch

    weight = torch.nn.Parameter(torch.zeros(2, 3))
    mask = torch.tensor([[True, False, False], [True, False, False]])
    optimizer = torch.optim.SGD([weight], lr=1.0)
    tool.ramp_regrown_updates(optimizer, {weight: mask}, steps=2)
    moves = []
    for _ in range(3):
        before = weight.detach().clone()
        weight.grad = -torch.ones(2, 3)  # every entry would move by +1
        optimizer.step()
        moves.append(weight.detach() - before)
    assert torch.equal(moves[0][mask], torch.full((2,), 0.5)) and torch.equal(moves[0][~mask], torch.ones(4))
    assert torch.equal(moves[1], torch.ones(2, 3)) and torch.equal(moves[2], torch.ones(2, 3))  # ramp over


def test_regrown_masks_mark_what_the_growth_brought_back(tool):
    import torch

    import amgp_fx

    model = tool.Mlp(4, 8, 2)
    graph = amgp_fx.analyze(model, (torch.randn(2, 4),))
    first = graph.prunable_groups(("hidden",))[0]
    record = amgp_fx.shrink_(graph, {first.id: [0, 1, 2, 3]})
    amgp_fx.grow_(graph, record)
    masks = tool.regrown_masks(graph, record)
    assert masks and all(mask.any() and not mask.all() for mask in masks.values())
    counts = sorted(int(mask.sum()) for mask in masks.values())
    assert counts == sorted(int(m.numel() // 2) for m in masks.values())  # half of each touched tensor came back

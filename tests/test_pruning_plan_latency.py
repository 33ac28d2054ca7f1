"""Latency-target pruning plans (issue 16): the pruned model's *predicted* latency (amgp_fx.latency_model on
fixed DeviceConstants, never calibrated here) is at most target x the dense model's, the next-less-pruned
candidate is above it, the embedding dim is what reaches a target that hidden units alone cannot, saved
plans re-apply, old plans load, and the CLI's refusals are one line with their exit codes.

Oracles: every predicted latency is re-measured here by exporting the model to ONNX and calling
predict_latency, independently of the search; no latency number is hard-coded.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import amgp_fx
from amgp_fx import models
from amgp_fx.cli import main
from amgp_fx.export import export_onnx
from amgp_fx.latency_model import DeviceConstants, predict_latency
from amgp_fx.pruning_plan import (DEFAULT_LATENCY_BATCH, PlanError, PruningPlan, apply_plan, count_parameters,
                                  plan_pruning)

# A device where GEMMs are nearly free and bytes cost: the small DLRM's gathers, interaction and copies
# dominate its predicted latency, which hidden-unit pruning does not shrink.
GATHER_BOUND = DeviceConstants("gather-bound test device", {"float32": 1e12}, 1e11, 1e11, 0.0)
TARGET = 0.6
CAP = 0.9  # the default max_layer_ratio: the search's grid is CAP * k / 1000
BOTH = ("hidden", "embedding")


def fresh_graph():
    """The same small DLRM (same seed, same weights) analysed anew."""
    torch.manual_seed(0)
    model = models.build_model("dlrm", "small")
    return amgp_fx.analyze(model, model.example_inputs(8))


def predicted(graph, folder: Path, name: str, batch: int = DEFAULT_LATENCY_BATCH) -> float:
    """The oracle: export the graph module (dynamic batch) and predict its latency at ``batch`` rows."""
    path = folder / f"{name}.onnx"
    export_onnx(graph.module, graph.traced.args, path, parity=False, check=False)
    return predict_latency(path, batch, GATHER_BOUND).seconds


def widths(graph, plan: PruningPlan) -> dict[str, int]:
    kept = {g.id: len(g.keep) for g in plan.groups}
    return {g.id: kept.get(g.id, g.full_size) for g in graph.prunable_groups()}


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """The latency-target plan over hidden and embedding groups, and the dense predicted latency."""
    folder = tmp_path_factory.mktemp("latency")
    graph = fresh_graph()
    dense = predicted(graph, folder, "dense")
    plan = plan_pruning(graph, latency_target=TARGET, latency_constants=GATHER_BOUND, kinds=BOTH)
    return graph, plan, dense, folder


def test_latency_target_is_met_by_the_least_pruning_that_meets_it(searched):
    graph, plan, dense, folder = searched
    assert all(g.size == g.full_size for g in graph.groups)  # the search regrew every candidate
    assert plan.latency_target == TARGET and plan.flops_target is None
    assert plan.stats["latency_batch"] == DEFAULT_LATENCY_BATCH
    assert plan.stats["latency_constants"] == GATHER_BOUND.to_dict()

    pruned = fresh_graph()
    apply_plan(pruned, plan)
    after = predicted(pruned, folder, "chosen")
    assert after <= TARGET * dense
    assert plan.stats["latency_before_s"] == pytest.approx(dense, rel=1e-9)
    assert plan.stats["latency_after_s"] == pytest.approx(after, rel=1e-9)

    # the bisection's neighbour: the width vector of the grid point just below the chosen ratio
    step = round(plan.ratio * 1000 / CAP)
    assert plan.ratio == pytest.approx(CAP * step / 1000)
    if step == 1:  # the neighbour is the dense model itself, above any target < 1
        return
    neighbour_graph = fresh_graph()
    neighbour = plan_pruning(neighbour_graph, CAP * (step - 1) / 1000, kinds=BOTH)
    assert widths(neighbour_graph, neighbour) != widths(neighbour_graph, plan)  # a distinct, less pruned candidate
    assert all(widths(neighbour_graph, neighbour)[k] >= v for k, v in widths(neighbour_graph, plan).items())
    apply_plan(neighbour_graph, neighbour)
    assert predicted(neighbour_graph, folder, "neighbour") > TARGET * dense


def test_embedding_dim_reaches_a_target_hidden_units_cannot(searched):
    graph, plan, dense, folder = searched
    assert "embedding" in {g.kind for g in plan.groups}
    with pytest.raises(PlanError, match="latency target 0.6 is out of reach") as caught:
        plan_pruning(graph, latency_target=TARGET, latency_constants=GATHER_BOUND, kinds=("hidden",))
    message = str(caught.value)
    assert "--kinds hidden,embedding" in message and "--max-layer-ratio" in message
    reached = float(re.search(r"leaves ([0-9.e-]+) of the dense model's predicted latency", message).group(1))
    # oracle: the most hidden-only pruning allowed, measured here
    hidden_most = fresh_graph()
    apply_plan(hidden_most, plan_pruning(hidden_most, CAP, kinds=("hidden",)))
    most = predicted(hidden_most, folder, "hidden-most") / dense
    assert reached == pytest.approx(most, rel=2e-3) and most > TARGET


def test_saved_plan_reapplies_to_the_same_widths_on_a_fresh_model(searched, tmp_path):
    graph, plan, _, _ = searched
    plan.save(tmp_path / "plan.json")
    loaded = PruningPlan.load(tmp_path / "plan.json")
    assert loaded == plan
    first, second = fresh_graph(), fresh_graph()
    apply_plan(first, plan)
    apply_plan(second, loaded)
    assert {g.id: g.size for g in second.groups} == {g.id: g.size for g in first.groups}
    assert {g.id: g.size for g in second.prunable_groups()} == widths(graph, plan)
    shapes = {name: p.shape for name, p in second.module.named_parameters()}
    for entry in plan.groups:
        for member in entry.members:
            assert shapes[member["tensor"]][member["dim"]] == member["after"]
    assert count_parameters(second.module) == count_parameters(first.module) < count_parameters(graph.module)
    inputs = graph.traced.args
    torch.testing.assert_close(second.module(*inputs), first.module(*inputs))


def test_plan_without_latency_fields_still_loads(searched, tmp_path):
    _, plan, _, _ = searched
    old = plan.to_dict()
    del old["latency_target"]
    old["stats"] = {k: v for k, v in old["stats"].items() if not k.startswith("latency_")}
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = PruningPlan.load(tmp_path / "old.json")
    assert loaded.latency_target is None and loaded.groups == plan.groups
    graph = fresh_graph()
    apply_plan(graph, loaded)
    assert {g.id: g.size for g in graph.groups if g.id in {e.id for e in plan.groups}} == {
        e.id: len(e.keep) for e in plan.groups}


@pytest.mark.parametrize("options, message", [
    (dict(latency_target=0.5), "needs the device's constants"),
    (dict(latency_target=0.5, latency_constants={"device": "cpu"}), "must be a DeviceConstants"),
    (dict(latency_target=0.5, flops_target=0.5, latency_constants=GATHER_BOUND), "exactly one of"),
    (dict(ratio=0.5, latency_target=0.5, latency_constants=GATHER_BOUND), "exactly one of"),
    (dict(latency_target=1.0, latency_constants=GATHER_BOUND), r"latency target 1.0 is outside \(0, 1\)"),
    (dict(latency_target=0.5, latency_constants=GATHER_BOUND, latency_batch=0), "latency batch 0"),
    (dict(ratio=0.5, latency_constants=GATHER_BOUND), "pass latency_target too"),
])
def test_refusals(searched, options, message):
    graph = searched[0]
    with pytest.raises(PlanError, match=message):
        plan_pruning(graph, **options)


# ------------------------------------------------------------------------------------------------ CLI


def cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(["prune", "--model", "dlrm", *args])
    return code, capsys.readouterr().err


@pytest.fixture()
def constants_file(tmp_path) -> Path:
    path = tmp_path / "constants.json"
    path.write_text(json.dumps(GATHER_BOUND.to_dict()))
    return path


def bad_files(folder: Path) -> dict[str, Path]:
    files = {"missing": folder / "nope.json", "not-json": folder / "text.json", "pickle": folder / "c.pkl",
             "incomplete": folder / "incomplete.json", "negative": folder / "negative.json",
             "list": folder / "list.json"}
    files["not-json"].write_text("gemm fast, copies slow")
    files["pickle"].write_bytes(b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.")
    files["incomplete"].write_text(json.dumps({"device": "cpu", "launch_s": 1e-6}))
    files["negative"].write_text(json.dumps({**GATHER_BOUND.to_dict(), "bandwidth_bytes_per_s": -1.0}))
    files["list"].write_text("[1, 2]")
    return files


@pytest.mark.parametrize("which", ["missing", "not-json", "pickle", "incomplete", "negative", "list"])
def test_cli_refuses_a_bad_constants_file(which, tmp_path, capsys):
    path = bad_files(tmp_path)[which]
    code, err = cli(["--latency-target", "0.5", "--device-constants", str(path), "-o", str(tmp_path / "out")],
                    capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("amgp-compress: error: ") and str(path) in lines[0]
    assert "--device-constants" in lines[0]  # the fix names the option
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, code, message", [
    (["--latency-target", "1.5"], 7, "latency target '1.5' is outside (0, 1)"),
    (["--latency-target", "0"], 7, "latency target '0' is outside (0, 1)"),
    (["--latency-target", "fast"], 7, "latency target 'fast' is not a number"),
    (["--latency-target", "0.5", "--flops-target", "0.5"], 2, "not allowed with argument"),
    (["--latency-target", "0.5", "--ratio", "0.5"], 2, "not allowed with argument"),
    (["--ratio", "0.5", "--device-constants", "CONSTANTS"], 2, "--device-constants is used only with --latency-target"),
    (["--ratio", "0.5", "--latency-batch", "64"], 2, "--latency-batch is used only with --latency-target"),
    (["--latency-target", "0.5", "--latency-batch", "0"], 2, "--latency-batch"),
])
def test_cli_refusals_are_one_line_with_their_exit_code(args, code, message, constants_file, tmp_path, capsys):
    args = [str(constants_file) if a == "CONSTANTS" else a for a in args]
    exit_code, err = cli([*args, "-o", str(tmp_path / "out")], capsys)
    lines = err.strip().splitlines()
    assert exit_code == code and len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("amgp-compress: error: ") and message in lines[0]


def test_cli_latency_target_writes_a_plan_that_meets_it(searched, constants_file, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["prune", "--model", "dlrm", "--latency-target", str(TARGET), "--device-constants",
                 str(constants_file), "--kinds", "hidden,embedding", "--latency-batch", "4096", "-q", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    plan = PruningPlan.load(out / "plan.json")
    assert plan.latency_target == TARGET and plan.stats["latency_batch"] == 4096
    assert plan.stats["latency_after_s"] <= TARGET * plan.stats["latency_before_s"]
    report = json.loads((out / "prune_report.json").read_text())
    assert report["latency_batch"] == 4096
    # the saved pruned model has the plan's widths, and its predicted latency is the plan's
    pruned = torch.export.load(str(out / "pruned.pt2")).module()
    graph = fresh_graph()
    apply_plan(graph, plan)
    shapes = {n: p.shape for n, p in graph.module.named_parameters()}
    assert {n: p.shape for n, p in pruned.named_parameters()} == shapes
    assert predicted(graph, tmp_path, "cli", batch=4096) == pytest.approx(plan.stats["latency_after_s"], rel=1e-9)


@pytest.mark.parametrize("static", [True, False], ids=["static-batch", "dynamic-batch"])
def test_cli_unreachable_target_advice_fits_the_model(static, constants_file, tmp_path, capsys):
    """The advice names only what can change: a static-batch model cannot be predicted at another
    --latency-batch (prune refuses one), so it is told to re-save the model with a dynamic batch; a
    dynamic one is told to predict at a larger --latency-batch. --kinds is not suggested when the
    embedding groups are already pruned (the default)."""
    from amgp_fx.model_io import save_pt2

    torch.manual_seed(0)
    model = models.build_model("dlrm", "small")
    path = tmp_path / "model.pt2"
    if static:
        torch.export.save(torch.export.export(model, model.example_inputs(8), strict=False), str(path))
    else:
        save_pt2(model, model.example_inputs(8), path)
    code = main(["prune", str(path), "--latency-target", "0.01", "--device-constants", str(constants_file), "-q",
                 "-o", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 7 and len(lines) == 1 and "out of reach" in lines[0]
    assert ("predict at a larger --latency-batch" in lines[0]) != static
    assert ("dynamic batch" in lines[0]) == static
    assert "--kinds" not in lines[0]

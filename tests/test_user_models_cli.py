"""Third-party-style models of a user's own (tests/fixtures/user_models/models.py) through
``amgp-compress`` as a user drives it: saved as .pt2, pruned, exported and trained on a small CSV.

Regressions:
* a static-batch ``nn.MultiheadAttention`` model: its heads and head dims both shrink the in-projection,
  and the plan counted a row dropped by both twice, refusing ``prune --ratio 0.5`` as "empties
  attn.in_proj_weight" (and writing wrong sizes into plan.json);
* a model that makes a tensor in ``forward`` (``torch.zeros(B, 8)`` for a missing optional dict key):
  the AMGP training-FLOPs count ran the graph on meta tensors and stopped with an internal error on
  the graph's ``device=cpu`` tensor;
* a multi-task model returning a tuple or a dict of per-task logits: ``train`` stopped with an internal
  error (``'tuple' object has no attribute 'dim'``).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from amgp_fx.flops import count_training_flops
from amgp_fx.groups.analyze import analyze
from amgp_fx.model_io import save_pt2
from amgp_fx.testing import masked_copy
from tests.fixtures.user_models import models

REPO = Path(__file__).resolve().parents[1]
FAST_TRAIN = ["--steps", "8", "--rows", "300", "--train-batch", "32"]


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "amgp_fx.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def succeeded(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("user-models")
    for name in ("mmoe", "mmoe_tuple", "mmoe_dict", "wide_deep", "residual_attention"):
        save_pt2(models.build(name), models.positional_batch(4), folder / f"{name}.pt2")
    model = models.build("residual_attention")
    torch.export.save(torch.export.export(model, models.positional_batch(4), strict=False),
                      folder / "residual_attention_static.pt2")
    save_pt2(models.build("optional_dict"), models.dict_batch(4, context=False), folder / "optional_dict.pt2")
    rng = random.Random(0)
    lines = ["click,conv,d1,d2,d3,d4,d5,user,item,c1,c2"]
    for _ in range(300):
        lines.append(",".join([str(rng.randint(0, 1)), str(rng.randint(0, 1)),
                               *(f"{rng.gauss(0, 1):.3f}" for _ in range(5)),
                               f"u{rng.randint(0, 80)}", f"i{rng.randint(0, 60)}", f"c{rng.randint(0, 9)}",
                               f"k{rng.randint(0, 9)}"]))
    (folder / "data.csv").write_text("\n".join(lines) + "\n")
    dense = 'dense = ["d1", "d2", "d3", "d4", "d5"]\n'
    (folder / "one_task.toml").write_text(f'label = "click"\n{dense}categorical = ["user", "item", "c1", "c2"]\n')
    (folder / "two_tasks.toml").write_text(f'label = ["click", "conv"]\n{dense}'
                                           'categorical = ["user", "item", "c1", "c2"]\n')
    (folder / "no_context.toml").write_text(f'label = "click"\n{dense}categorical = ["user", "item"]\n')
    return folder


def test_static_batch_multihead_attention_prunes_heads_and_head_dims(workspace):
    succeeded(run_cli(["prune", "residual_attention_static.pt2", "--ratio", "0.5", "-o", "ra-static"], workspace))
    plan = json.loads((workspace / "ra-static" / "plan.json").read_text())
    kinds = {group["kind"] for group in plan["groups"]}
    assert {"heads", "head_dim"} <= kinds  # both shrink attn.in_proj_weight's rows
    pruned = torch.export.load(workspace / "ra-static" / "pruned.pt2").module()
    shapes = {name: tuple(t.shape) for name, t in pruned.state_dict().items()}
    assert shapes["attn.in_proj_weight"][0] == 3 * 1 * 2  # q, k, v x 1 of 2 heads x 2 of 4 head dims
    for group in plan["groups"]:
        for member in group["members"]:  # the plan's sizes are the pruned model's
            assert member["after"] == shapes[member["tensor"]][member["dim"]], (group["id"], member)
    export = succeeded(run_cli(["export", "ra-static/pruned.pt2", "-o", "ra-static-onnx"], workspace))
    assert "parity max" in export.stdout


@pytest.mark.parametrize("name", ["wide_deep", "mmoe"])
def test_pruned_model_equals_the_masked_model(workspace, name):
    graph = analyze(models.build(name), models.positional_batch(6, seed=7))
    exact = [g.id for g in graph.prunable_groups() if g.mask_equivalent]  # not the LayerNorm'd experts
    succeeded(run_cli(["prune", f"{name}.pt2", "--ratio", "0.5", "--groups", ",".join(exact), "-o", f"p-{name}"],
                      workspace))
    plan = json.loads((workspace / f"p-{name}" / "plan.json").read_text())
    assert {g["id"] for g in plan["groups"]} == set(exact)
    model, args = models.build(name).eval(), models.positional_batch(6, seed=7)
    masked = model
    for entry in plan["groups"]:
        group = graph.group(entry["id"])
        assert group.name == entry["name"] and 0 < len(entry["keep"]) < entry["full_size"]
        masked = masked_copy(masked, group, np.setdiff1d(np.arange(entry["full_size"]), entry["keep"]))
    pruned = torch.export.load(workspace / f"p-{name}" / "pruned.pt2").module()
    with torch.no_grad():
        torch.testing.assert_close(pruned(*args), masked.eval()(*args), atol=1e-5, rtol=1e-4)
    export = succeeded(run_cli(["export", f"p-{name}/pruned.pt2", "-o", f"e-{name}"], workspace))
    assert "parity max" in export.stdout


def test_training_flops_count_a_tensor_made_in_forward():
    model = models.build("optional_dict")
    flops = count_training_flops(model, models.dict_batch(4, context=False), batch_size=8)
    assert flops.forward == 2 * 8 * ((models.NUM_DENSE + 24) * 16 + 16 * 1)


def test_optional_dict_key_model_trains_with_amgp(workspace):
    succeeded(run_cli(["train", "optional_dict.pt2", "--data", "data.csv", "--columns", "no_context.toml",
                       *FAST_TRAIN, "--amgp", "-o", "t-optional"], workspace))
    summary = json.loads((workspace / "t-optional" / "train_summary.json").read_text())
    assert 0 < summary["amgp"]["flops_vs_full_width"] < 1


@pytest.mark.parametrize("name", ["mmoe_tuple", "mmoe_dict"])
def test_multitask_model_returning_a_tuple_or_dict_trains(workspace, name):
    succeeded(run_cli(["train", f"{name}.pt2", "--data", "data.csv", "--columns", "two_tasks.toml", *FAST_TRAIN,
                       "--amgp", "-o", f"t-{name}"], workspace))
    summary = json.loads((workspace / f"t-{name}" / "train_summary.json").read_text())
    assert {"auc_task0", "auc_task1"} <= set(summary["eval"])
    result = run_cli(["train", f"{name}.pt2", "--data", "data.csv", "--columns", "one_task.toml", *FAST_TRAIN,
                      "-o", f"t-{name}-one"], workspace)  # one label for two outputs: the counts error
    assert result.returncode == 9 and "has 2 outputs" in result.stderr, result.stderr
    assert not (workspace / f"t-{name}-one").exists()


def test_a_parameter_the_trace_never_uses_is_not_offered_for_pruning():
    """The optional-dict model traced without its optional key: that key's table stays in the module but
    no traced op reads it, so its groups are frozen with a reason instead of offered (pruning them saves
    nothing the trace can see); the tables it does read stay prunable."""
    model = models.build("optional_dict")
    graph = analyze(model, models.dict_batch(4, context=False))
    unused = {name for name, _ in model.named_parameters()} - {
        n.target for n in graph.module.graph.nodes if n.op == "get_attr" and n.users}
    assert unused, "the fixture must hold a parameter this trace leaves out"
    by_tensor = {}
    for group in graph.groups:
        for member in group.members:
            by_tensor.setdefault(member.tensor, []).append(group)
    for name in unused:
        assert by_tensor[name] and all(not g.prunable and "not used by the traced forward" in g.reason
                                       for g in by_tensor[name]), name
    assert any(g.prunable for g in graph.groups)

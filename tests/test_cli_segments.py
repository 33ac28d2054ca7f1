"""CLI side of balanced pruning (issue 13, item 4): the prune summary and analyze list every member tensor
with its sizes, and --allow-empty-members / --policy reach the planner. Runs ``main`` in-process."""
from __future__ import annotations

import json

from safetensors.torch import load_file

from amgp_fx.cli import main

MODEL = ["--factory", "tests.fixtures.segment_models:DCNConcat", "--input-shape", "float32[B,13];int64[B,5]:0..5"]


def _printed_member_rows(printed: str) -> dict[tuple[str, int], tuple[int, int]]:
    """The summary's member table (| group | tensor | dim | role | before | after |), parsed."""
    rows = {}
    for line in printed.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[2].isdigit() and cells[4].isdigit():
            rows[(cells[1], int(cells[2]))] = (int(cells[4]), int(cells[5]))
    return rows


def _sizes(report: dict) -> dict[tuple[str, int], tuple[int, int]]:
    return {(m["tensor"], m["dim"]): (m["before"], m["after"]) for g in report["groups"] for m in g["members"]}


def test_prune_summary_lists_every_member_tensor_and_empties_none(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(".")
    assert main(["prune", *MODEL, "--ratio", "0.5", "-q", "-o", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    sizes = _sizes(json.loads((tmp_path / "prune_report.json").read_text()))
    for table in range(5):
        assert f"emb.{table}.weight" in printed
        before, after = sizes[(f"emb.{table}.weight", 1)]
        assert before == 16 and 0 < after < before
    assert all(after > 0 for _, after in sizes.values())
    assert _printed_member_rows(printed) == {(t, d): s for (t, d), s in sizes.items()}  # the summary lists them all
    saved = load_file(str(tmp_path / "pruned.safetensors"))
    for (tensor, dim), (_, after) in sizes.items():  # the sizes reported are the saved tensors' sizes
        assert saved[tensor].shape[dim] == after, tensor


def test_allow_empty_members_with_global_policy_may_drop_whole_tables(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(".")
    assert main(["prune", *MODEL, "--ratio", "0.5", "--policy", "global", "--allow-empty-members", "-q",
                 "-o", str(tmp_path)]) == 0
    sizes = _sizes(json.loads((tmp_path / "prune_report.json").read_text()))
    assert any(after == 0 for _, after in sizes.values())
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["allow_empty"] is True and plan["policy"] == "global"


def test_analyze_shows_the_segments_of_the_concatenated_group(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(".")
    assert main(["analyze", *MODEL, "--json", str(tmp_path / "groups.json"), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "segment of" in printed and "dense.2.weight" in printed
    groups = json.loads((tmp_path / "groups.json").read_text())["groups"]
    x0 = next(g for g in groups if len({m["segment"] for m in g["member_tensors"]}) > 2)
    held = [m["channels"] for m in x0["member_tensors"] if m["segment"].startswith("emb.")]
    assert held == [16] * 5


def test_unknown_policy_is_one_line_usage_error(capsys):
    assert main(["prune", *MODEL, "--ratio", "0.5", "--policy", "even"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("amgp-compress: error: argument --policy")

"""tools/summarize_sweeps.py: each variant at its best rate over several sweep files, paired per seed
with dense at dense's best rate, offline and in the recurring stage; a best rate at the grid's edge
is flagged."""
from __future__ import annotations

import json

import pytest
from tool_loader import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("summarize_sweeps")


def _record(variant: str, method: str, lr: float, aucs, recurring, flops: float) -> dict:
    runs = [{"seed": s, "auc": a, "recurring_auc": r, "recurring_flops": flops, "width_final": 1.0}
            for s, (a, r) in enumerate(zip(aucs, recurring))]
    return {"model": "dlrm", "variant": variant, "method": method, "lr": lr, "auc_mean": sum(aucs) / len(aucs),
            "auc_std": 0.0, "per_seed": runs, "train_flops": flops, "width_scale": 0.7}


def test_each_variant_at_its_best_rate_paired_with_dense(tool, tmp_path):
    files = []
    for lr, shift in ((3e-4, -0.01), (1e-3, 0.0), (3e-3, -0.02)):
        records = [_record("dense", "dense", lr, [0.80 + shift, 0.81 + shift], [0.70, 0.71], 10.0),
                   # amgp is best at the top rate, where dense is not
                   _record("grow-late", "amgp", lr, [0.79 - shift, 0.80 - shift], [0.72, 0.70], 10.0),
                   _record("small-dense-80", "small_dense", lr, [0.78, 0.79], [0.69, 0.69], 4.0)]
        path = tmp_path / f"sweep_{lr:g}.json"
        path.write_text(json.dumps(records))
        files.append(str(path))
    rerun = tmp_path / "rerun.json"  # a one-seed rerun of dense beside another variant: the 2-seed record wins
    rerun.write_text(json.dumps([_record("dense", "dense", 1e-3, [0.5], [0.5], 10.0)]))
    best = {r["method"]: r for r in tool.main([*files, str(rerun), "--out", str(tmp_path / "best.json")])}
    assert [g["lr"] for g in best["dense"]["lr_grid"]] == [3e-4, 1e-3, 3e-3]
    assert best["dense"]["lr"] == 1e-3 and best["dense"]["lr_bracketed"]
    assert best["grow-late"]["lr"] == 3e-3 and not best["grow-late"]["lr_bracketed"]
    # paired against dense at 1e-3 (0.80, 0.81), not dense at 3e-3
    assert best["grow-late"]["paired_vs_dense"]["per_seed"] == pytest.approx([0.01, 0.01])
    assert best["grow-late"]["recurring_paired_vs_dense"]["per_seed"] == pytest.approx([0.02, -0.01])
    assert best["grow-late"]["recurring_paired_vs_dense"]["wins"] == 1
    assert best["small-dense-80"]["flops_vs_dense"] == pytest.approx(0.4)
    assert best["small-dense-80"]["recurring_flops_vs_dense"] == pytest.approx(0.4)
    assert json.loads((tmp_path / "best.json").read_text())[0]["method"] == "dense"
    assert "small (0.70 width)" in tool.table(list(best.values()))

"""tools/bench_amgp_real.py --tiny on a small fake MovieLens-shaped dataset (no download, CPU, < 30 s)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from amgp_fx.data import Batch, DatasetSpec, save_npy_dataset

ROOT = Path(__file__).resolve().parents[1]
TABLES = (60, 90, 3, 12, 7)
REQUIRED = {"model", "method", "dataset", "auc_mean", "auc_std", "logloss_mean", "logloss_std", "train_flops",
            "wall_clock_s", "samples", "seeds", "device", "command"}


def load_tool():
    spec = importlib.util.spec_from_file_location("bench_amgp_real_tool", ROOT / "tools" / "bench_amgp_real.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_fake_movielens(directory: Path, rows: int = 4096) -> None:
    """Random ids with a learnable per-id effect, so AUC is above chance and the run is a real one."""
    generator = torch.Generator().manual_seed(0)
    sparse = torch.stack([torch.randint(0, size, (rows,), generator=generator) for size in TABLES], dim=1)
    dense = torch.rand(rows, 4, generator=generator)
    effects = [torch.randn(size, generator=generator) for size in TABLES]
    logit = sum(effect[sparse[:, f]] for f, effect in enumerate(effects)) + dense[:, 0]
    label = (torch.rand(rows, generator=generator) < torch.sigmoid(logit)).float()
    spec = DatasetSpec("movielens100k_ctr", 4, TABLES)
    save_npy_dataset(directory / "movielens100k_ctr", Batch(dense, sparse, label), spec)


def test_tiny_real_benchmark_writes_matched_records(tmp_path):
    write_fake_movielens(tmp_path / "data")
    out = tmp_path / "amgp_{dataset}.json"
    tool = load_tool()
    tool.main(["--tiny", "--data-dir", str(tmp_path / "data"), "--out", str(out)])
    records = json.loads((tmp_path / "amgp_movielens.json").read_text())
    assert [(r["model"], r["method"]) for r in records] == [("dlrm", m) for m in
                                                           ("dense", "amgp", "prune_only", "small_dense")]
    for record in records:
        assert REQUIRED <= set(record), REQUIRED - set(record)
        assert record["dataset"] == "movielens100k_ctr" and record["seeds"] == [0, 1]
        assert record["samples"] == 2 * record["train_rows"] and record["test_rows"] == round(4096 * 0.2)
        assert 0.5 < record["auc_mean"] < 1 and record["logloss_mean"] > 0 and record["wall_clock_s"] > 0
        assert record["command"].startswith("python tools/bench_amgp_real.py")
    by_method = {r["method"]: r for r in records}
    dense_flops = by_method["dense"]["train_flops"]
    assert by_method["amgp"]["train_flops"] < 0.8 * dense_flops
    for method in ("prune_only", "small_dense"):  # matched to AMGP's training FLOPs within a few %
        assert by_method[method]["train_flops"] < dense_flops
        assert by_method[method]["train_flops"] == pytest.approx(by_method["amgp"]["train_flops"], rel=0.05)


def test_recurring_stage_trains_on_the_past_and_tests_on_the_future(tmp_path):
    """--recurring-share holds the newest rows back, by timestamp: the offline split never sees them, and each
    final model is scored after training on their older half; a dataset without timestamps is refused."""
    write_fake_movielens(tmp_path / "data")
    directory = tmp_path / "data" / "movielens100k_ctr"
    tool = load_tool()
    for bad in (["--recurring-share", "1.5"], ["--recurring-share", "0.2", "--recurring-epochs", "0"]):
        with pytest.raises(SystemExit):
            tool.parse_args(bad)
    with pytest.raises(SystemExit, match="has no time.npy"):
        tool.load_split(str(tmp_path / "data"), "movielens", None, 0.25)
    when = torch.randperm(4096, generator=torch.Generator().manual_seed(1)).numpy() * 10  # shuffled timestamps
    import numpy as np
    np.save(directory / "time.npy", when)
    rows, _ = tool.load_npy_dataset(directory)
    train, test, _, (later, latest) = tool.load_split(str(tmp_path / "data"), "movielens", None, 0.25)
    assert (later.num_rows, latest.num_rows) == (512, 512) and train.num_rows + test.num_rows == 3072
    stamp = {tuple(r): t for r, t in zip(torch.cat([rows.sparse, rows.dense.mul(1e6).long()], 1).tolist(), when)}
    key = lambda batch: [stamp[tuple(r)] for r in torch.cat([batch.sparse, batch.dense.mul(1e6).long()], 1).tolist()]
    assert max(key(train) + key(test)) < min(key(later)) and max(key(later)) < min(key(latest))
    out = tmp_path / "amgp_{dataset}.json"
    tool.main(["--tiny", "--data-dir", str(tmp_path / "data"), "--methods", "dense", "amgp", "--seeds", "1",
               "--recurring-share", "0.25", "--out", str(out)])
    records = json.loads((tmp_path / "amgp_movielens.json").read_text())
    for record in records:
        assert 0.5 < record["recurring_auc_mean"] < 1 and record["recurring_share"] == 0.25
        assert record["per_seed"][0]["recurring_steps"] == -(-512 // 256)  # one epoch of the older half, batch 256
        assert "drift" not in record



def test_lr_grid_reports_each_method_at_its_best_rate_with_paired_intervals(tmp_path):
    """--lr-grid: every (method, rate) is kept in <out>.grid.json; the main file holds each method once, at the
    rate with its best mean AUC, and AMGP's paired per-seed differences to the others at their own best rates."""
    write_fake_movielens(tmp_path / "data")
    tool = load_tool()
    for bad in (["--lr-grid", "1e-3", "0"], ["--lr-grid", "1e-3", "1e-3"]):  # a rate of 0, a rate twice
        with pytest.raises(SystemExit):
            tool.parse_args(bad)
    tool.main(["--tiny", "--data-dir", str(tmp_path / "data"), "--methods", "dense", "amgp", "small_dense",
               "--lr-grid", "1e-3", "3e-2", "--out", str(tmp_path / "amgp_{dataset}.json")])
    grid = json.loads((tmp_path / "amgp_movielens.grid.json").read_text())
    assert sorted((r["method"], r["lr"]) for r in grid) == sorted(
        (m, lr) for m in ("dense", "amgp", "small_dense") for lr in (1e-3, 3e-2))
    best = {r["method"]: r for r in json.loads((tmp_path / "amgp_movielens.json").read_text())}
    assert set(best) == {"dense", "amgp", "small_dense"}
    for method, record in best.items():
        rates = {r["lr"]: r["auc_mean"] for r in grid if r["method"] == method}
        assert rates[1e-3] != rates[3e-2], "the two rates should train differently"
        assert record["lr"] == max(rates, key=rates.get) and record["auc_mean"] == max(rates.values())
    for other in ("dense", "small_dense"):
        paired = best["amgp"]["paired_vs"][other]["auc"]
        expected = [a["auc"] - b["auc"] for a, b in zip(best["amgp"]["per_seed"], best[other]["per_seed"])]
        assert paired["per_seed"] == pytest.approx(expected) and paired["seeds"] == 2
    assert best["amgp"]["auc_vs_dense"] == pytest.approx(best["amgp"]["auc_mean"] - best["dense"]["auc_mean"])

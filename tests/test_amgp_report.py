"""AMGP reporting: phase and comparison tables, the PNG, and the tiny benchmark's records."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from amgp_fx.amgp_report import comparison_table, phase_records, phase_table, plot_run

ROOT = Path(__file__).resolve().parents[1]


def _phase(name, cycle, start, end, width, flops_per_step, label="amgp"):
    return {"kind": "amgp_phase", "label": label, "phase": name, "cycle": cycle, "start": start, "end": end,
            "steps": end - start, "width": width, "flops_per_step": flops_per_step,
            "flops": (end - start) * flops_per_step, "wall_clock_s": 0.01 * (end - start), "peak_memory_bytes": 2**20}


RUN = [_phase("warmup", -1, 0, 10, 1.0, 4e9), _phase("pruned", 0, 10, 30, 0.5, 1e9),
       _phase("final", 1, 30, 40, 1.0, 4e9), {"kind": "eval", "step": 40, "auc": 0.78},
       {"kind": "train", "step": 40, "loss": 0.45}]


def test_phase_table_has_a_row_per_phase_and_a_total():
    table = phase_table(RUN)
    lines = table.splitlines()
    assert len(lines) == 2 + 3 + 1
    total = [cell.strip() for cell in lines[-1].split("|")[1:-1]]
    assert total[0] == "total" and total[2] == "40"
    assert float(total[4]) == pytest.approx((10 * 4 + 20 * 1 + 10 * 4) / 40)  # mean GFLOPs per step
    assert float(total[5]) == pytest.approx(100)


def test_phase_records_read_a_metrics_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in reversed(RUN)))
    assert [p["phase"] for p in phase_records(path)] == ["warmup", "pruned", "final"]


def test_comparison_table_reports_differences_to_dense():
    records = [dict(model="m", method="dense", auc_mean=0.8, auc_std=0.0010, logloss_mean=0.45, train_flops=2e12,
                    wall_clock_s=10.0, samples=100, seeds=[0, 1, 2]),
               dict(model="m", method="amgp", auc_mean=0.7995, auc_std=0.0012, logloss_mean=0.451, train_flops=1.2e12,
                    wall_clock_s=7.5, samples=100, seeds=[0, 1, 2])]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in comparison_table(records).splitlines()[2:]]
    assert rows[1][:4] == ["m", "amgp", "0.7995 +- 0.0012", "-0.0005"]
    assert rows[1][6] == "0.60x" and rows[1][8] == "0.75x"


def test_plot_writes_a_png(tmp_path):
    records = RUN + [_phase("final", 0, 0, 40, 1.0, 4e9, label="dense")]
    path = plot_run(records, tmp_path / "run.png", title="toy")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    dense = plot_run([{"kind": "train", "step": s, "loss": 1 / s} for s in (1, 2, 3)]
                     + [{"kind": "eval", "step": 3, "auc": 0.5}], tmp_path / "dense.png")  # no AMGP: loss and AUC
    assert dense.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no amgp_phase, train or eval records"):
        plot_run([{"kind": "amgp_surgery", "step": 1}], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


REQUIRED = {"model", "method", "auc_mean", "auc_std", "logloss_mean", "train_flops", "wall_clock_s", "samples",
            "seeds", "device", "command"}


def test_tiny_benchmark_produces_records_with_all_fields(tmp_path):
    out = tmp_path / "amgp.json"
    command = [sys.executable, str(ROOT / "tools" / "bench_amgp.py"), "--tiny", "--models", "dcn_v2", "--seeds", "2",
               "--samples", "6144", "--out", str(out), "--plot-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [(r["model"], r["method"]) for r in records] == [("dcn_v2", m) for m in
                                                           ("dense", "amgp", "prune_only", "small_dense")]
    for record in records:
        assert REQUIRED <= set(record), REQUIRED - set(record)
        assert record["seeds"] == [0, 1] and record["samples"] == 6144 and 0.5 < record["auc_mean"] < 1
        assert record["command"].startswith("python tools/bench_amgp.py --tiny")
    by_method = {r["method"]: r for r in records}
    dense_flops = by_method["dense"]["train_flops"]
    assert by_method["amgp"]["train_flops"] < 0.8 * dense_flops
    for method in ("prune_only", "small_dense"):  # matched to AMGP's training FLOPs within 5%
        assert by_method[method]["train_flops"] == pytest.approx(by_method["amgp"]["train_flops"], rel=0.05)
    assert by_method["amgp"]["train_flops"] == by_method["amgp"]["predicted_train_flops"]
    assert (tmp_path / "amgp_train_dcn_v2.png").exists() and (tmp_path / "amgp_auc_vs_flops_dcn_v2.png").exists()
    assert all(r["lr"] == 1e-2 and [g["lr"] for g in r["lr_grid"]] == [1e-2] for r in records)
    assert by_method["amgp"]["paired_vs_dense"]["seeds"] == 2


def test_sweep_runs_each_variant_on_one_data_set_and_pairs_it_with_dense(tmp_path):
    out = tmp_path / "sweep.json"
    command = [sys.executable, str(ROOT / "tools" / "sweep_amgp.py"), "--tiny", "--model", "dlrm", "--seeds", "2",
               "--samples", "3072", "--variants", "dense", "base", "one-cycle", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [(r["variant"], r["method"]) for r in records] == [("dense", "dense"), ("base", "amgp"),
                                                              ("one-cycle", "amgp")]
    for record in records:
        assert REQUIRED <= set(record) and record["seeds"] == [0, 1] and record["samples"] == 3072
    base, one_cycle = records[1]["amgp_config"]["schedule"], records[2]["amgp_config"]["schedule"]
    assert (base["cycles"], one_cycle["cycles"]) == (3, 1), "a fractions variant runs its own schedule"
    assert records[1]["amgp_config"]["rescale"] is True
    assert "vs dense" in done.stdout  # the summary pairs every variant with the dense run of its lr
    # --first-seed adds seeds to an earlier sweep: seed 1 alone is the run seed 1 was in the 2-seed sweep
    later = tmp_path / "later.json"
    more = subprocess.run(command[:command.index("--seeds")] + ["--seeds", "1", "--first-seed", "1", "--samples", "3072",
                                                                 "--variants", "dense", "base", "--out", str(later)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert more.returncode == 0, more.stderr[-3000:]
    added = json.loads(later.read_text())
    assert [r["seeds"] for r in added] == [[1], [1]]
    assert [r["per_seed"][0]["auc"] for r in added] == [r["per_seed"][1]["auc"] for r in records[:2]]


def test_sweep_refuses_a_negative_first_seed():
    command = [sys.executable, str(ROOT / "tools" / "sweep_amgp.py"), "--tiny", "--first-seed", "-1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "--first-seed must be >= 0" in done.stderr


@pytest.fixture
def proxy_sweep(monkeypatch):
    """(tools/sweep_amgp, a function variant name -> the AmgpConfig it runs at the CPU proxy's horizon, that
    horizon); the recipes variants register are undone afterwards."""
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import sweep_amgp

    from amgp_fx.schedule import RECIPES, AmgpConfig

    own, base = sweep_amgp.parse_args(["--cpu-proxy"])
    monkeypatch.setattr(sweep_amgp, "RECIPES", dict(RECIPES))  # variants register recipes: keep the real one clean
    steps = base.samples // base.batch_size

    def resolve(name: str) -> AmgpConfig:
        args = sweep_amgp.variant_args(base, name, sweep_amgp.VARIANTS[name])
        monkeypatch.setitem(RECIPES, args.recipe, sweep_amgp.RECIPES[args.recipe])
        return AmgpConfig.from_recipe_name(args.recipe, steps, ratio=args.ratio, criterion=args.criterion,
                                           grow_init=args.grow_init, optimizer_state=args.optimizer_state,
                                           rescale=args.rescale, pruned_lr_scale=args.pruned_lr_scale,
                                           **sweep_amgp.bench_amgp.switch_options(args, steps))

    return sweep_amgp, resolve, steps


def test_every_sweep_variant_resolves_to_a_valid_amgp_config(proxy_sweep):
    """A variant is a dict of bench_amgp overrides: each AMGP one must resolve to an AmgpConfig (fractions that
    add up, known options), at the proxy's horizon, before anyone spends a CPU or GPU run on it."""
    sweep_amgp, resolve, steps = proxy_sweep
    names = [name for name, overrides in sweep_amgp.VARIANTS.items() if overrides.get("method", "amgp") == "amgp"]
    for name in names:
        assert resolve(name).schedule.total_steps == steps, name
    assert len(names) >= 40


def test_the_grow_earlier_recipe_is_the_variant_that_was_measured(proxy_sweep):
    """amgp-grow-earlier-rewarm ships what the sweep measured as grow-earlier-r60 (docs/benchmarks.md)."""
    from amgp_fx.schedule import AmgpConfig

    _, resolve, steps = proxy_sweep
    shipped = AmgpConfig.from_recipe_name("amgp-grow-earlier-rewarm", steps)
    assert shipped.to_dict() == resolve("grow-earlier-r60").to_dict()


def test_the_dip_control_is_the_default_recipe_with_nothing_removed(proxy_sweep):
    """dense-rewarm-dip isolates the learning-rate dip of grow-late-zero-rewarm (the default recipe's schedule):
    the same switch steps and re-warm, ratio 0, so its only difference from dense is the dip."""
    _, resolve, steps = proxy_sweep
    control, amgp = resolve("dense-rewarm-dip").to_dict(), resolve("grow-late-zero-rewarm").to_dict()
    assert control["ratio"] == 0 and amgp["ratio"] == 0.5 and control["rewarm_steps"] > 0
    assert {k: v for k, v in control.items() if k != "ratio"} == {k: v for k, v in amgp.items() if k != "ratio"}


def test_sweep_refuses_a_cpu_proxy_of_another_model():
    command = [sys.executable, str(ROOT / "tools" / "sweep_amgp.py"), "--cpu-proxy", "--model", "dcn_v2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "--cpu-proxy shrinks the DLRM benchmark" in done.stderr


def test_rows_cache_gives_the_same_runs_and_is_written_once(tmp_path):
    """--rows-cache: GPU calls made back to back with --resume generate the rows once."""
    cache = tmp_path / "rows"
    base = [sys.executable, str(ROOT / "tools" / "bench_amgp.py"), "--tiny", "--models", "dlrm", "--methods", "dense",
            "--seeds", "1", "--samples", "2048", "--rows-cache", str(cache)]
    first = subprocess.run(base + ["--out", str(tmp_path / "a.json")], capture_output=True, text=True, timeout=300,
                           cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    files = {p.name: p.stat().st_mtime_ns for p in cache.glob("rows-*.safetensors")}
    assert len(files) == 2 and not list(cache.glob("*.partial"))  # training and held-out rows
    second = subprocess.run(base + ["--out", str(tmp_path / "b.json")], capture_output=True, text=True, timeout=300,
                            cwd=ROOT)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("rows-*.safetensors")} == files  # read, not rewritten
    auc = [json.loads((tmp_path / name).read_text())[0]["per_seed"][0]["auc"] for name in ("a.json", "b.json")]
    assert auc[0] == auc[1]
    more = subprocess.run(base[:-4] + ["--samples", "4096", "--rows-cache", str(cache), "--out", str(tmp_path / "c.json")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert more.returncode == 0 and len(list(cache.glob("rows-*.safetensors"))) == 3  # other rows, another file


def test_wider_cpu_proxy_scales_the_hidden_widths_and_keeps_the_interaction_dim():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import sweep_amgp
    finally:
        sys.path.remove(str(ROOT / "tools"))
    base, wide = sweep_amgp.PROXY_SPEC["overrides"], sweep_amgp.proxy_spec(2.0)["overrides"]
    assert wide["bottom_mlp"][-1] == base["bottom_mlp"][-1] == base["embedding_dim"]  # the interaction's dim
    assert list(wide["bottom_mlp"][:-1]) == [2 * w for w in base["bottom_mlp"][:-1]]
    assert list(wide["top_mlp"]) == [2 * w for w in base["top_mlp"]]
    assert sweep_amgp.proxy_spec(1.0) is sweep_amgp.PROXY_SPEC
    command = [sys.executable, str(ROOT / "tools" / "sweep_amgp.py"), "--proxy-mlp-scale", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "--proxy-mlp-scale needs --cpu-proxy" in done.stderr


def test_surgery_benchmark_times_both_places_for_the_saved_slices(tmp_path):
    out = tmp_path / "surgery.json"
    command = [sys.executable, str(ROOT / "tools" / "bench_surgery.py"), "--tiny", "--repeats", "2", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [r["saved_device"] for r in records] == ["cpu", "parameters' device"]
    assert records[0]["saved_bytes"] == records[1]["saved_bytes"] > 0  # the same removed slices either way
    assert all(r["shrink_s"] > 0 and r["grow_s"] > 0 and r["repeats"] == 2 for r in records)


def _grid_record(method, lr, aucs, flops=1e12):
    return dict(model="m", method=method, lr=lr, auc_mean=sum(aucs) / len(aucs), auc_std=0.0, train_flops=flops,
                per_seed=[{"seed": i, "auc": a} for i, a in enumerate(aucs)])


def test_best_per_method_picks_each_methods_own_rate_and_pairs_seeds_with_dense_at_its_best():
    from amgp_fx.amgp_report import best_per_method

    records = [_grid_record("dense", 1e-4, [0.70, 0.71, 0.72]), _grid_record("dense", 3e-4, [0.75, 0.74, 0.76]),
               _grid_record("small", 1e-4, [0.74, 0.73, 0.77]), _grid_record("small", 3e-4, [0.60, 0.61, 0.62])]
    best = {r["method"]: r for r in best_per_method(records)}
    assert best["dense"]["lr"] == 3e-4 and best["small"]["lr"] == 1e-4
    assert [g["lr"] for g in best["small"]["lr_grid"]] == [1e-4, 3e-4]
    paired = best["small"]["paired_vs_dense"]
    assert paired["per_seed"] == pytest.approx([-0.01, -0.01, 0.01]) and paired["wins"] == 1
    assert paired["mean"] == pytest.approx(-0.01 / 3) and paired["dense_lr"] == 3e-4
    assert "paired_vs_dense" not in best["dense"]


def test_best_per_method_compares_rates_on_the_seeds_they_share():
    """A grid cut short (rate 3e-4 ran seed 0 only): the rates are compared on seed 0, where 3e-4 is better,
    not on means over different seeds, where 1e-4's lucky seed 1 would win."""
    from amgp_fx.amgp_report import best_per_method

    records = [_grid_record("dense", 1e-4, [0.80, 0.84]), _grid_record("dense", 3e-4, [0.81])]
    best = best_per_method(records)[0]
    assert best["lr"] == 3e-4 and best["selected_on_seeds"] == [0]
    assert [(g["lr"], g["seeds"]) for g in best["lr_grid"]] == [(1e-4, 2), (3e-4, 1)]
    complete = best_per_method([_grid_record("dense", 1e-4, [0.80, 0.84]), _grid_record("dense", 3e-4, [0.81, 0.82])])
    assert complete[0]["lr"] == 1e-4 and complete[0]["selected_on_seeds"] == [0, 1]


def test_auc_vs_flops_plot_is_written(tmp_path):
    from amgp_fx.amgp_report import plot_auc_vs_flops

    records = [_grid_record("dense", 1e-4, [0.7, 0.71]), _grid_record("amgp", 1e-4, [0.69, 0.7], flops=6e11),
               _grid_record("amgp", 1e-4, [0.68, 0.69], flops=4e11)]
    path = plot_auc_vs_flops(records, tmp_path / "p.png")
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


def test_sweep_recurring_stage_scores_every_final_model_on_the_drifted_teacher(tmp_path):
    out = tmp_path / "recurring.json"
    command = [sys.executable, str(ROOT / "tools" / "sweep_amgp.py"), "--tiny", "--model", "dlrm", "--seeds", "1",
               "--samples", "3072", "--variants", "dense", "small-dense", "grow-late-lossless", "--recurring-steps", "6",
               "--drift", "0.5", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads(out.read_text())
    for record in records:
        run = record["per_seed"][0]
        assert run["recurring_steps"] == 6 and 0.3 < run["recurring_auc"] < 1 and run["recurring_flops"] > 0
        assert record["recurring_auc_mean"] == run["recurring_auc"] and record["drift"] == 0.5
    flops = {r["variant"]: r["per_seed"][0]["recurring_flops"] for r in records}
    assert flops["small-dense"] < flops["dense"] == flops["grow-late-lossless"]  # AMGP ends full-size


def test_flops_meter_compares_each_step_with_the_same_rows_at_full_width():
    from types import SimpleNamespace

    from amgp_fx.amgp_report import FlopsMeter

    class Hook:  # FLOPs of a step: 10 per row at full width, 4 per row at half width, plus 6 optimizer FLOPs
        width_now = 1.0

        def width(self):
            return self.width_now

        def step_flops(self, ctx, batch_size):
            return SimpleNamespace(total=(10 if self.width_now == 1.0 else 4) * batch_size + 6)

    def run(steps):
        meter = FlopsMeter(hook)
        for width, rows in steps:  # (width, rows) of each step
            hook.width_now = width
            meter.on_step_end(SimpleNamespace(batch=SimpleNamespace(num_rows=rows)))
        return meter.summary()

    hook = Hook()
    full_64, full_8, half_64, half_8 = 10 * 64 + 6, 10 * 8 + 6, 4 * 64 + 6, 4 * 8 + 6
    exact = run([(1.0, 64), (0.5, 64), (0.5, 8), (0.5, 64), (1.0, 8)])  # both row counts ran at full width
    assert exact["train_flops"] == full_64 + half_64 + half_8 + half_64 + full_8 and exact["steps"] == 5
    assert exact["full_width_train_flops"] == 3 * full_64 + 2 * full_8
    assert exact["flops_vs_full_width"] == pytest.approx(exact["train_flops"] / exact["full_width_train_flops"])
    scaled = run([(1.0, 64), (0.5, 64), (0.5, 8)])  # 8 rows never ran at full width: scaled from 64 by rows
    assert scaled["full_width_train_flops"] == int(2 * full_64 + full_64 * 8 / 64)
    assert run([(0.5, 64)])["flops_vs_full_width"] is None  # never at full width: no reference


def test_resume_keeps_the_finished_runs_and_runs_only_the_missing_seeds(tmp_path):
    """A comparison larger than one GPU call: the second call with --resume adds seed 1 to seed 0's runs."""
    out = tmp_path / "amgp.json"
    base = [sys.executable, str(ROOT / "tools" / "bench_amgp.py"), "--tiny", "--models", "dlrm", "--methods", "dense",
            "amgp", "--samples", "3072", "--out", str(out)]
    first = subprocess.run(base + ["--seeds", "1"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    before = {(r["method"], r["per_seed"][0]["seed"]): r["per_seed"][0] for r in json.loads(out.read_text())}
    second = subprocess.run(base + ["--seeds", "2", "--resume"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming: 2 runs" in second.stdout
    assert "seed 0:" not in second.stdout and "amgp        lr 0.01 seed 1:" in second.stdout  # only seed 1 ran
    records = {r["method"]: r for r in json.loads(out.read_text())}
    for method in ("dense", "amgp"):
        assert records[method]["seeds"] == [0, 1]
        assert records[method]["per_seed"][0] == before[(method, 0)]  # kept as it was, not re-run
    grid = json.loads((tmp_path / "amgp.grid.json").read_text())
    assert sorted((r["method"], len(r["per_seed"])) for r in grid) == [("amgp", 2), ("dense", 2)]
    # every run finished: the report is rebuilt from the file alone (no rows generated, no run), and the
    # curve plot, whose metrics logs stayed with the calls that ran, is left out instead of failing
    third = subprocess.run(base + ["--seeds", "2", "--resume", "--plot-dir", str(tmp_path / "plots")],
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "generating" not in third.stdout and not re.search(r"lr \S+ seed \d+:", third.stdout)
    assert "no curve plot for dlrm" in third.stdout and (tmp_path / "plots" / "amgp_auc_vs_flops_dlrm.png").is_file()
    assert {m: r["per_seed"] for m, r in records.items()} == {
        r["method"]: r["per_seed"] for r in json.loads(out.read_text())}
    recipe = subprocess.run(base + ["--seeds", "2", "--resume", "--recipe", "amgp-half"], capture_output=True,
                            text=True, timeout=300, cwd=ROOT)  # the recipe is not a setting of the file: checked per run
    assert recipe.returncode != 0 and "amgp runs with another schedule or recipe" in recipe.stderr
    other = subprocess.run(base + ["--seeds", "2", "--resume", "--sparse-lr", "0.1"], capture_output=True, text=True,
                           timeout=300, cwd=ROOT)
    assert other.returncode != 0 and "other settings (sparse_lr)" in other.stderr


def test_a_resume_keeps_the_runs_it_does_not_ask_for(tmp_path):
    """A call that asks for fewer methods, rates or seeds than the file holds (or stops on its budget before
    it reaches them) must not drop those runs from the file: they are earlier GPU calls' work."""
    out = tmp_path / "amgp.json"
    base = [sys.executable, str(ROOT / "tools" / "bench_amgp.py"), "--tiny", "--samples", "3072", "--out", str(out)]
    first = subprocess.run(base + ["--models", "dlrm", "dcn_v2", "--methods", "dense", "amgp", "--lr-grid", "1e-2",
                                   "--seeds", "2"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    by_key = lambda path: {(r["model"], r["method"], r["lr"]): r["per_seed"] for r in json.loads(path.read_text())}
    before = by_key(tmp_path / "amgp.grid.json")
    second = subprocess.run(base + ["--models", "dlrm", "--methods", "dense", "--lr-grid", "3e-3", "1e-2", "--seeds",
                                    "1", "--resume"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert second.returncode == 0, second.stderr[-3000:]
    assert re.findall(r"lr \S+ seed \d+:", second.stdout) == ["lr 0.003 seed 0:"]  # the one missing run
    after = by_key(tmp_path / "amgp.grid.json")
    new = ("dlrm", "dense", 3e-3)
    assert {k: v for k, v in after.items() if k != new} == before and len(before) == 4  # dcn_v2, amgp, seed 1 kept
    assert [r["seed"] for r in after[new]] == [0]
    assert {r["method"] for r in json.loads(out.read_text())} == {"dense", "amgp"}  # both in the table


def test_deterministic_flag_turns_on_deterministic_kernels_for_the_runs(monkeypatch):
    """--deterministic: torch refuses (warns about) nondeterministic kernels while the runs train, so a
    GPU run reproduces itself; without it nothing is changed."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import bench_amgp
    finally:
        sys.path.remove(str(ROOT / "tools"))
    import torch

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        for flag, expected in (([], before[0]), (["--deterministic"], True)):
            args = bench_amgp.parse_args(["--tiny", "--samples", "512", *flag])
            bench_amgp.prepare_data(args, 2, lambda *_: None)
            assert torch.are_deterministic_algorithms_enabled() is expected
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # a kernel without one warns, the run goes on
        assert bench_amgp.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_paired_differences_give_students_interval_and_call_a_tie_a_tie():
    from amgp_fx.paired_stats import describe_interval, paired_differences, t_quantile_975

    tie = paired_differences({0: 0.81, 1: 0.80, 2: 0.83, 5: 0.9}, {0: 0.80, 1: 0.80, 2: 0.80, 3: 0.7})
    assert tie["per_seed"] == pytest.approx([0.01, 0.0, 0.03]) and tie["seeds"] == 3 and tie["wins"] == 2
    half = 4.303 * tie["std"] / 3 ** 0.5  # t(0.975, 2 dof) on the sample std of the three differences
    assert tie["std"] == pytest.approx(0.0152753, rel=1e-5)
    assert tie["ci95"] == pytest.approx([0.04 / 3 - half, 0.04 / 3 + half]) and tie["verdict"] == "tie"
    assert paired_differences({0: 0.82, 1: 0.83, 2: 0.825}, {0: 0.80, 1: 0.80, 2: 0.80})["verdict"] == "above"
    assert paired_differences({0: 0.79, 1: 0.78}, {0: 0.80, 1: 0.80})["verdict"] == "tie"  # 1 dof: t = 12.7
    below = paired_differences({s: 0.79 + 0.001 * (s % 2) for s in range(6)}, {s: 0.80 for s in range(6)})
    assert below["verdict"] == "below" and below["ci95"][1] < 0 and "below, 95% CI [-0.0" in describe_interval(below)
    one = paired_differences({0: 0.9}, {0: 0.8})
    assert one["ci95"] is None and one["verdict"] == "tie" and "one seed" in describe_interval(one)
    with pytest.raises(ValueError, match="degree of freedom"):
        t_quantile_975(0)
    stats = pytest.importorskip("scipy.stats")
    for dof in (1, 2, 3, 5, 10, 29, 30, 31, 45, 100, 1000):
        assert t_quantile_975(dof) == pytest.approx(stats.t.ppf(0.975, dof), rel=2e-3), dof


def test_init_jitter_perturbs_the_run_by_its_size_and_resume_refuses_another_jitter(tmp_path):
    """--init-jitter: the same seed with another jitter seed starts from weights that differ by about EPS
    relative (a butterfly test), jitter seed 0 twice starts identically, and a resume with another jitter, or
    with other kernels (--deterministic), is refused rather than mixed."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import bench_amgp
    finally:
        sys.path.remove(str(ROOT / "tools"))
    import torch

    def weights(jitter_seed):
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 1))
        torch.manual_seed(0)
        for p in model.parameters():
            torch.nn.init.normal_(p)
        bench_amgp.jitter_(model, 1e-4, jitter_seed)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    torch.manual_seed(0)
    plain = torch.cat([torch.nn.init.normal_(torch.empty(s)).flatten() for s in ((64, 64), (64,), (1, 64), (1,))])
    first, again, other = weights(1), weights(1), weights(2)
    assert torch.equal(first, again) and not torch.equal(first, other)
    relative = ((first - plain) / plain).std().item()
    assert 0.5e-4 < relative < 2e-4  # the perturbation has the size asked for
    out = tmp_path / "j.json"
    base = [sys.executable, str(ROOT / "tools" / "bench_amgp.py"), "--tiny", "--models", "dlrm", "--methods", "dense",
            "--seeds", "1", "--samples", "1024", "--out", str(out)]
    runs = [subprocess.run(base + extra, capture_output=True, text=True, timeout=300, cwd=ROOT)
            for extra in (["--init-jitter", "1e-3", "--jitter-seed", "1"], ["--resume"],
                          ["--init-jitter", "1e-3", "--jitter-seed", "1", "--deterministic", "--resume"])]
    assert runs[0].returncode == 0, runs[0].stderr[-2000:]
    assert json.loads(out.read_text())[0]["init_jitter"] == 1e-3
    assert runs[1].returncode != 0 and "init_jitter" in runs[1].stderr + runs[1].stdout
    # deterministic and default kernels do not mix in one grid either (a run on other kernels is another measurement)
    assert runs[2].returncode != 0 and "(deterministic)" in runs[2].stderr + runs[2].stdout


def test_merge_from_joins_parts_run_in_parallel_and_refuses_a_conflicting_seed(tmp_path):
    """One comparison split into a process per method (on one GPU, say): --merge-from joins the parts into one
    grid with every method's runs as they were, pairs AMGP with dense, and runs nothing with --budget-s 0; a part
    whose seed gave another result is refused rather than silently taking one of the two."""
    base = [sys.executable, str(ROOT / "tools" / "bench_amgp.py"), "--tiny", "--models", "dlrm", "--samples", "3072",
            "--seeds", "2"]
    parts = {}
    for method in ("dense", "amgp"):
        out = tmp_path / f"part_{method}.json"
        done = subprocess.run(base + ["--methods", method, "--out", str(out)], capture_output=True, text=True,
                              timeout=300, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-3000:]
        parts[method] = json.loads((tmp_path / f"part_{method}.grid.json").read_text())
    out = tmp_path / "merged.json"
    merge = base + ["--methods", "dense", "amgp", "--out", str(out), "--budget-s", "0", "--merge-from",
                    str(tmp_path / "part_dense.grid.json"), str(tmp_path / "part_amgp.grid.json")]
    merged = subprocess.run(merge, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert "generating" not in merged.stdout and not re.search(r"lr \S+ seed \d+:", merged.stdout)
    grid = {r["method"]: r for r in json.loads((tmp_path / "merged.grid.json").read_text())}
    for method, part in parts.items():
        assert grid[method]["per_seed"] == part[0]["per_seed"]
    amgp = {r["method"]: r for r in json.loads(out.read_text())}["amgp"]
    dense_auc = [run["auc"] for run in parts["dense"][0]["per_seed"]]
    expected = [run["auc"] - d for run, d in zip(parts["amgp"][0]["per_seed"], dense_auc)]
    assert amgp["paired_vs_dense"]["per_seed"] == pytest.approx(expected)
    assert amgp["paired_vs"]["dense"]["auc"]["per_seed"] == pytest.approx(expected)
    # the same part twice is fine (the same runs); a part whose seed 1 gave another AUC is not
    again = subprocess.run(merge + [str(tmp_path / "part_amgp.grid.json")], capture_output=True, text=True,
                           timeout=300, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    parts["amgp"][0]["per_seed"][1]["auc"] += 1e-3
    (tmp_path / "conflict.grid.json").write_text(json.dumps(parts["amgp"]))
    conflict = subprocess.run(merge + [str(tmp_path / "conflict.grid.json")], capture_output=True, text=True,
                              timeout=300, cwd=ROOT)
    assert conflict.returncode != 0 and "dlrm/amgp/lr 0.01/seed 1 with another result" in conflict.stderr


def test_a_call_cut_by_its_budget_keeps_the_later_models_finished_runs(tmp_path):
    """A resumed call whose budget runs out on the first model must still write the other models' finished
    runs back to the grid: they are earlier GPU calls' work, and the table must still show them."""
    out = tmp_path / "amgp.json"
    base = [sys.executable, str(ROOT / "tools" / "bench_amgp.py"), "--tiny", "--samples", "3072", "--out", str(out),
            "--models", "dlrm", "dcn_v2", "--methods", "dense", "amgp"]
    first = subprocess.run(base + ["--seeds", "1"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    before = {(r["model"], r["method"]): r["per_seed"] for r in json.loads((tmp_path / "amgp.grid.json").read_text())}
    cut = subprocess.run(base + ["--seeds", "2", "--resume", "--budget-s", "0"], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert cut.returncode == 0, cut.stderr[-3000:]
    assert "budget: skipping dlrm" in cut.stdout and not re.search(r"lr \S+ seed \d+:", cut.stdout)
    after = {(r["model"], r["method"]): r["per_seed"] for r in json.loads((tmp_path / "amgp.grid.json").read_text())}
    assert after == before and len(after) == 4
    table = json.loads(out.read_text())
    assert {(r["model"], r["method"]) for r in table} == set(before) and all(r["incomplete"] for r in table)


def test_add_paired_pairs_amgp_with_every_method_of_its_model_by_seed_offline_and_recurring():
    from amgp_fx.amgp_report import add_paired

    rows = [dict(model="m", method="amgp", per_seed=[{"seed": 0, "auc": 0.80, "recurring_auc": 0.70},
                                                     {"seed": 1, "auc": 0.82, "recurring_auc": 0.71}]),
            dict(model="m", method="small_dense", per_seed=[{"seed": 1, "auc": 0.81, "recurring_auc": 0.69},
                                                            {"seed": 0, "auc": 0.79, "recurring_auc": 0.72}]),
            dict(model="other", method="dense", per_seed=[{"seed": 0, "auc": 0.5, "recurring_auc": 0.5}])]
    paired = add_paired(rows)[0]["paired_vs"]
    assert set(paired) == {"small_dense"}  # another model's dense is not a partner
    assert paired["small_dense"]["auc"]["per_seed"] == pytest.approx([0.01, 0.01])  # matched by seed, not position
    assert paired["small_dense"]["auc"]["wins"] == 2
    assert paired["small_dense"]["recurring_auc"]["per_seed"] == pytest.approx([-0.02, 0.02])
    assert "paired_vs" not in rows[1]


def test_parallel_parts_give_the_serial_runs_bit_for_bit(tmp_path):
    """tools/bench_amgp_parallel.sh (one process per method, then --merge-from) must publish the runs that one
    serial bench_amgp call makes: same seeds, same AUCs to the last bit, and a part seeded from an earlier grid
    keeps that grid's runs rather than re-running them."""
    common = ["--tiny", "--samples", "3072", "--seeds", "2", "--lr-grid", "1e-2", "--threads", "1",
              "--rows-cache", str(tmp_path / "rows")]
    serial = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_amgp.py"), *common, "--models", "dlrm",
                             "--methods", "dense", "amgp", "--out", str(tmp_path / "serial.json")],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert serial.returncode == 0, serial.stderr[-3000:]
    seed_grid = json.loads((tmp_path / "serial.grid.json").read_text())
    for record in seed_grid:  # an earlier call's grid with seed 0 only: the parts must add seed 1
        record["per_seed"] = record["per_seed"][:1]
    (tmp_path / "seed.grid.json").write_text(json.dumps(seed_grid))
    env = {**os.environ, "PARTS": str(tmp_path / "parts"), "SEED_GRID": str(tmp_path / "seed.grid.json"),
           "PYTHON": sys.executable}
    parallel = subprocess.run(["bash", str(ROOT / "tools" / "bench_amgp_parallel.sh"), str(tmp_path / "par.json"),
                               "dlrm", "dense amgp", *common], capture_output=True, text=True, timeout=300, cwd=ROOT,
                              env=env)
    assert parallel.returncode == 0, parallel.stdout[-3000:] + parallel.stderr[-3000:]
    assert not re.search(r"lr \S+ seed 0:", parallel.stdout)  # seed 0 came from the seed grid
    runs = lambda path: {(r["method"], run["seed"]): (run["auc"], run["logloss"])
                         for r in json.loads(path.read_text()) for run in r["per_seed"]}
    assert runs(tmp_path / "par.grid.json") == runs(tmp_path / "serial.grid.json") and len(runs(tmp_path / "par.grid.json")) == 4

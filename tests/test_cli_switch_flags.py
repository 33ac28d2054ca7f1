"""The AMGP switch flags (--preserve-growth, --grow-ramp, --fade, --selection, --fold-bias) and the learning-rate
schedule flags (--lr-schedule, --lr-warmup) of ``train`` and ``run``: what they set, and the errors
for flags that would do nothing or shares out of range."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from amgp_fx.cli.parser import build_parser
from amgp_fx.cli.train import amgp_config, lr_schedule_options
from amgp_fx.errors import UsageError
from amgp_fx.schedule import AmgpConfig

REPO = Path(__file__).resolve().parents[1]


def _args(*flags: str):
    return build_parser().parse_args(["train", "--model", "dlrm", *flags])


def _config(args, steps: int = 200) -> AmgpConfig:
    return amgp_config(args, steps)


def test_switch_flags_set_the_config_with_shares_of_a_pruned_phase():
    args = _args("--amgp", "--amgp-recipe", "amgp-half", "--preserve-growth", "--grow-ramp", "0.25", "--fade", "0.5",
                 "--selection", "rotate")
    config = _config(args)
    phase = config.schedule.pruned_steps
    assert phase > 4
    assert config.preserve_growth and config.selection == "rotate"
    assert config.grow_ramp_steps == round(0.25 * phase) and config.fade_steps == round(0.5 * phase)


def test_rewarm_flag_sets_the_rewarm_as_a_share_of_a_pruned_phase_and_zero_turns_it_off():
    default = _config(_args("--amgp"))  # the default recipe re-warms
    assert default.rewarm_steps == round(0.1 * default.schedule.pruned_steps) > 0
    assert _config(_args("--amgp", "--rewarm", "0")).rewarm_steps == 0
    cyclic = _config(_args("--amgp", "--amgp-recipe", "amgp-half", "--rewarm", "0.5"))
    assert cyclic.rewarm_steps == round(0.5 * cyclic.schedule.pruned_steps) > 0


def test_fold_bias_flag_sets_the_config_and_its_absence_keeps_the_recipe():
    assert _config(_args("--amgp", "--amgp-recipe", "amgp-half", "--fold-bias")).fold_bias is True
    assert _config(_args("--amgp", "--amgp-recipe", "amgp-half")).fold_bias is False


def test_grow_init_flag_sets_the_config_and_refuses_what_it_cannot_do():
    assert _config(_args("--amgp")).grow_init.value == "restore"  # the recipe's
    assert _config(_args("--amgp", "--grow-init", "gradmax")).grow_init.value == "gradmax"  # the default preserves
    assert _config(_args("--amgp", "--grow-init", "split")).grow_init.value == "split"
    with pytest.raises(UsageError, match="--preserve-growth"):
        _config(_args("--amgp", "--amgp-recipe", "amgp-half", "--grow-init", "gradmax"))
    with pytest.raises(UsageError, match="nothing to ramp"):
        _config(_args("--amgp", "--amgp-recipe", "amgp-grow-late", "--grow-init", "split"))  # its growth ramps
    ramp_off = _config(_args("--amgp", "--amgp-recipe", "amgp-grow-late", "--grow-init", "split", "--grow-ramp", "0"))
    assert ramp_off.grow_init.value == "split" and ramp_off.grow_ramp_steps == 0


def test_flags_not_given_keep_the_recipe():
    plain = _config(_args("--amgp", "--amgp-recipe", "amgp-grow-late"))
    recipe = AmgpConfig.from_recipe_name("amgp-grow-late", total_steps=200)
    assert plain == recipe and plain.preserve_growth and plain.grow_ramp_steps > 0
    # a ramp for a recipe that already preserves growth needs no --preserve-growth
    ramped = _config(_args("--amgp", "--amgp-recipe", "amgp-grow-late", "--grow-ramp", "0"))
    assert ramped.preserve_growth and ramped.grow_ramp_steps == 0


def test_lr_schedule_flags_give_warmup_steps_as_a_share_of_the_run():
    assert lr_schedule_options(_args("--lr-schedule", "cosine", "--lr-warmup", "0.1"), 300) == {
        "lr_schedule": "cosine", "lr_warmup_steps": 30}
    assert lr_schedule_options(_args(), 300) == {"lr_schedule": "constant", "lr_warmup_steps": 0}


@pytest.mark.parametrize("flags, words", [
    (["--amgp-recipe", "amgp-half", "--grow-ramp", "0.2"], "--preserve-growth"),  # a ramp of a restoring growth
    (["--fade", "1.5"], "[0, 1]"),
    (["--fade", "nan"], "[0, 1]"),
    (["--rewarm", "-0.1"], "[0, 1]"),
    (["--amgp-recipe", "amgp-grow-late", "--fade", "0.25"], "nothing to fade"),  # its one shrink is at step 0
    (["--amgp-recipe", "amgp-grow-late", "--fold-bias"], "nothing to fold"),  # the same: untrained means
])
def test_bad_switch_values_are_usage_errors(flags, words):
    with pytest.raises(UsageError, match=words.replace("[", r"\[").replace("]", r"\]")):
        _config(_args("--amgp", *flags))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "amgp_fx.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("command, flags", [("train", ["--fade", "0.25"]), ("train", ["--preserve-growth"]),
                                            ("train", ["--selection", "balanced"]), ("train", ["--fold-bias"]),
                                            ("run", ["--fold-bias"]), ("train", ["--rewarm", "0.1"]),
                                            ("train", ["--grow-init", "gradmax"])])
def test_switch_flags_without_amgp_exit_2_with_one_line(tmp_path, command, flags):
    result = _cli(command, "--model", "dlrm", "--steps", "4", "--rows", "400", *flags, "-o", "out", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("amgp-compress: error:")
    assert "--amgp" in lines[0] and "Traceback" not in result.stderr and not (tmp_path / "out").exists()
    assert flags[0] in lines[0]


def test_faded_shrink_reaches_the_training_log(tmp_path):
    result = _cli("train", "--model", "dlrm", "--amgp", "--amgp-recipe", "amgp-half", "--fade", "0.5",
                  "--lr-schedule", "cosine", "--lr-warmup", "0.1", "--steps", "40", "--rows", "3000",
                  "--train-batch", "64", "-q", "-o", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "train_metrics.jsonl").read_text().splitlines()]
    fades = [r for r in records if r["kind"] == "amgp_fade_start"]
    shrinks = [r for r in records if r.get("action") == "shrink"]
    assert fades and shrinks and shrinks[0]["faded"] is True
    assert fades[0]["step"] < shrinks[0]["step"]


def test_the_data_aware_cyclic_recipe_trains_through_the_cli(tmp_path):
    """amgp-cycles-data scores and folds on each switch's training batch: the CLI must hand the hook its batches."""
    config = _config(_args("--amgp", "--amgp-recipe", "amgp-cycles-data"))
    assert (config.criterion, config.fold_bias, config.schedule.cycles) == ("activation", True, 3)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "amgp_fx.cli", "train", "--model", "dlrm", "--amgp", "--amgp-recipe",
                             "amgp-cycles-data", "--steps", "40", "--rows", "2000", "--train-batch", "64", "-q", "-o",
                             "out"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "train_metrics.jsonl").read_text().splitlines()]
    surgeries = [r for r in records if r.get("kind") == "amgp_surgery"]
    assert [s["action"] for s in surgeries] == ["shrink", "grow"] * 3
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert summary["amgp"]["recipe"] == "amgp-cycles-data" and summary["amgp"]["width_final"] == 1.0


def test_the_rewarm_flag_reaches_the_run_and_its_summary(tmp_path):
    """A user's --rewarm (here on the cyclic recipe, which has none) is what the run used, and the summary says so."""
    result = _cli("train", "--model", "dlrm", "--amgp", "--amgp-recipe", "amgp-half", "--rewarm", "0.5",
                  "--steps", "40", "--rows", "2000", "--train-batch", "64", "-q", "-o", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())["amgp"]
    expected = _config(_args("--amgp", "--amgp-recipe", "amgp-half", "--rewarm", "0.5"), steps=40)
    assert summary["config"]["rewarm_steps"] == expected.rewarm_steps > 0
    assert summary["config"]["schedule"]["cycles"] == 3


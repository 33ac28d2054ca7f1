"""Packaging: the reference models install as ``amgp_fx.models`` (no top-level ``models`` that a
user's own ``models.py`` would shadow), and pyproject.toml lists every package under amgp_fx/."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package_and_the_models_live_inside_amgp_fx():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "amgp_fx").rglob("__init__.py")}
    assert set(config["packages"]) == on_disk
    # inside amgp_fx/, so a copy of the tree on PYTHONPATH (the GPU machine, no install) imports them too
    assert "amgp_fx.models" in on_disk and "package-dir" not in config
    assert not (REPO / "models").exists()


def test_cli_runs_from_a_folder_with_its_own_models_module(tmp_path):
    """A user's models.py and models/ package in the working folder do not hide the reference models."""
    (tmp_path / "models.py").write_text("raise ImportError('this is the user models.py')\n")
    # the user's folder first; the checkout after it, for machines that run the tests without installing it
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    result = subprocess.run([sys.executable, "-m", "amgp_fx.cli", "run", "--steps", "5", "--finetune-steps", "0",
                             "--rows", "400", "--train-batch", "64", "--batch-sizes", "2", "--iters", "1",
                             "--warmup", "1", "--no-parity", "-q", "-o", "out"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "out" / "compact.pt2").is_file() and (tmp_path / "out" / "report.md").is_file()
    summary = (tmp_path / "out" / "summary.json").read_text()
    assert "amgp_fx.models:build_model" in summary  # the reference model was built, not the user's module
    (tmp_path / "models.py").unlink()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("build_model = None\n")
    result = subprocess.run([sys.executable, "-m", "amgp_fx.cli", "analyze", "--model", "dlrm", "--prunable-only"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "prunable" in result.stdout

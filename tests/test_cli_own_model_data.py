"""A user's own model trained on the user's own file (issue 14's last combination): the dict-input and
the positional model of tests/fixtures/own_models.py, saved as .pt2 and as safetensors + factory, through
``train --amgp`` and ``run`` on a CSV and a Parquet file with a column spec, via the installed CLI.

The categorical values are text ("u17", "city-3", ...) hashed into each table's size, which the CLI reads
off the model; the commands run three at a time when the first test asks for them.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from amgp_fx.model_io import save_pt2, save_state_dict
from tests.fixtures import own_models

REPO = Path(__file__).resolve().parents[1]
DENSE = [f"d{i}" for i in range(own_models.NUM_DENSE)]
CATEGORICAL = ["user", "item", "city", "device", "hour"]
FAST = ["--steps", "12", "--rows", "700", "--train-batch", "64"]
BENCH = ["--finetune-steps", "4", "--batch-sizes", "1,4", "--iters", "2", "--warmup", "1"]
COMMANDS = {
    "dict-csv-amgp": ["train", "dict.pt2", "--data", "my.csv", "--columns", "spec.json", "--amgp", *FAST],
    "pos-sd-parquet-amgp": ["train", "pos.safetensors", "--factory", "my_pos.py:build_positional", "--data",
                            "my.parquet", "--columns", "spec.json", "--amgp", *FAST],
    "dict-parquet-run": ["run", "dict.pt2", "--data", "my.parquet", "--columns", "spec.json", "--amgp", *FAST,
                         *BENCH],
    "pos-csv-run": ["run", "pos.pt2", "--data", "my.csv", "--columns", "spec.json", *FAST, *BENCH],
}


def _rows(count: int, seed: int = 0) -> list[list]:
    """Rows of a plausible log: a click label, 13 numbers (some missing), 5 text categories."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        dense = [round(rng.gauss(0, 1), 3) if rng.random() > 0.05 else None for _ in DENSE]
        cats = [f"u{rng.randrange(300)}", f"i{rng.randrange(90)}", f"city-{rng.randrange(25)}",
                rng.choice(["ios", "android", "web"]), str(rng.randrange(24))]
        rows.append([int(rng.random() < 0.3 + 0.2 * (dense[0] or 0) ** 2 / 4), *dense, *cats])
    return rows


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("own-model-data")
    shutil.copy(Path(own_models.__file__), folder / "my_pos.py")
    for stem, build, batch in (("pos", own_models.build_positional, own_models.positional_batch),
                               ("dict", own_models.build_dict, own_models.dict_batch)):
        save_pt2(build(), batch(4), folder / f"{stem}.pt2")
        save_state_dict(build(), folder / f"{stem}.safetensors")
    rows = _rows(900)
    header = ["click", *DENSE, *CATEGORICAL]
    lines = [",".join(header)] + [",".join("" if v is None else str(v) for v in row) for row in rows]
    (folder / "my.csv").write_text("\n".join(lines) + "\n")
    columns = list(zip(*rows))
    pq.write_table(pa.table({name: pa.array(list(values)) for name, values in zip(header, columns)}),
                   folder / "my.parquet")
    (folder / "spec.json").write_text(json.dumps({"label": "click", "dense": DENSE, "categorical": CATEGORICAL}))
    return folder


@pytest.fixture(scope="module")
def results(workspace):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}

    def run(name: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "amgp_fx.cli", *COMMANDS[name], "-o", name], cwd=workspace,
                              env=env, capture_output=True, text=True, timeout=600)

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(run, name) for name in COMMANDS}
        yield futures


def _ok(results, name: str) -> subprocess.CompletedProcess:
    result = results[name].result()
    assert result.returncode == 0, f"{name} exited {result.returncode}:\n{result.stderr}"
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    return result


@pytest.mark.parametrize("name", ["dict-csv-amgp", "pos-sd-parquet-amgp"])
def test_amgp_training_of_an_own_model_on_an_own_file(results, workspace, name):
    _ok(results, name)
    summary = json.loads((workspace / name / "train_summary.json").read_text())
    assert summary["steps"] == 12 and 0.0 <= summary["eval"]["auc"] <= 1.0
    # AMGP ran: its FLOPs are below the full-width run's
    assert 0.0 < summary["amgp"]["flops_vs_full_width"] < 1.0
    records = [json.loads(line) for line in (workspace / name / "train_metrics.jsonl").read_text().splitlines()]
    assert any(r.get("action") == "shrink" for r in records)


@pytest.mark.parametrize("name", ["dict-parquet-run", "pos-csv-run"])
def test_run_of_an_own_model_on_an_own_file(results, workspace, name):
    _ok(results, name)
    out = workspace / name
    assert {"dense.pt2", "compact.pt2", "compact.onnx", "report.md", "summary.json"} <= {p.name for p in out.iterdir()}
    source = "my.parquet" if "parquet" in name else "my.csv"
    assert source in (out / "report.md").read_text()

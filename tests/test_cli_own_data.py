"""``amgp-compress train --data my.csv --columns spec.json`` (and Parquet, inline column lists) through
a real subprocess; a malformed file ends with exit code 9, one stderr line naming the file, line
and column, no traceback and no output folder.

The subprocesses start together (two at a time) when the first test asks for them.
"""
from __future__ import annotations

import json
import random
import re
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from amgp_fx.model_io import load_model
from test_cli import run_cli

FAST = ["--model", "dlrm", "--preset", "small", "--steps", "5", "--train-batch", "32", "-q"]
HEADER = ["click", "d1", "d2", "d3", "d4", "user", "item", "city", "device", "note"]


def _rows(count: int, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    return [[str(rng.randint(0, 1)), f"{rng.random():.3f}", "" if i % 7 == 0 else f"{rng.random():.3f}",
             str(rng.randint(0, 9)), f"{rng.gauss(0, 1):.3f}", f"u{rng.randint(0, 500)}", f"item{rng.randint(0, 80)}",
             f"c{rng.randint(0, 30)}", f"dev{rng.randint(0, 3)}", "free text"] for i in range(count)]


def _csv(path: Path, rows) -> None:
    path.write_text("\n".join(",".join(row) for row in [HEADER, *rows]) + "\n")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("own-data")
    rows = _rows(300)
    _csv(folder / "my.csv", rows)
    (folder / "spec.json").write_text(json.dumps({"label": "click", "dense": ["d1", "d2", "d3", "d4"],
                                                   "categorical": ["user", "item", "city", "device"]}))
    columns = list(zip(*rows))
    pq.write_table(pa.table({"click": pa.array([int(v) for v in columns[0]]),
                             **{name: pa.array([float(v) if v else None for v in columns[i]])
                                for i, name in enumerate(HEADER[1:5], 1)},
                             **{name: pa.array(columns[i]) for i, name in enumerate(HEADER[5:9], 5)}}),
                   folder / "my.parquet")
    broken = [list(row) for row in rows]
    broken[40][2] = "1.2.3"  # data row 41 is line 42 (the header is line 1)
    _csv(folder / "bad.csv", broken)
    return folder


COMMANDS: dict[str, list[str]] = {
    "csv-spec": ["train", *FAST, "--data", "my.csv", "--columns", "spec.json", "-o", "csv-spec"],
    "parquet-inline": ["train", *FAST, "--data", "my.parquet", "--label", "click", "--dense", "d1,d2,d3,d4",
                       "--categorical", "user,item,city,device", "--encoding", "vocab", "-o", "parquet-inline"],
    "bad-row": ["train", *FAST, "--data", "bad.csv", "--columns", "spec.json", "-o", "bad-row"],
    "bad-row-skipped": ["train", *FAST, "--data", "bad.csv", "--columns", "spec.json", "--skip-malformed",
                        "-o", "bad-row-skipped"],
    "missing-column": ["train", *FAST, "--data", "my.csv", "--columns", "spec.json", "--dense", "d1,d2,d3,weight",
                       "-o", "missing-column"],
    "no-spec": ["train", *FAST, "--data", "my.csv", "-o", "no-spec"],
}


@pytest.fixture(scope="module")
def results(workspace):
    pool = ThreadPoolExecutor(max_workers=2)
    futures: dict[str, Future] = {name: pool.submit(run_cli, args, workspace) for name, args in COMMANDS.items()}
    yield futures
    pool.shutdown(wait=True)


def _ok(results, name: str):
    result = results[name].result()
    assert result.returncode == 0, f"{name} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


def _failed(results, workspace: Path, name: str, code: int, pattern: str) -> str:
    result = results[name].result()
    assert result.returncode == code, f"{name} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.fullmatch(r"amgp-compress: error: .+\. .+\.", lines[0]), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    assert not (workspace / name).exists()  # no output folder, not even an empty one
    return lines[0]


@pytest.mark.parametrize("name, labels", [("csv-spec", ["click"]), ("parquet-inline", ["click"])])
def test_train_on_own_file_writes_the_model_with_its_column_spec(results, workspace, name, labels):
    _ok(results, name)
    out = workspace / name
    assert {"trained.pt2", "trained.safetensors", "train_summary.json"} <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 5
    data = load_model(out / "trained.pt2").metadata["data"]
    assert data["columns"]["labels"] == labels and data["table_sizes"] == [20, 50, 100, 30]
    assert [c["name"] for c in data["columns"]["categorical"]] == ["user", "item", "city", "device"]
    assert {c["encoding"] for c in data["columns"]["categorical"]} == {"hash" if name == "csv-spec" else "vocab"}


def test_malformed_row_exits_9_naming_file_line_and_column(results, workspace):
    line = _failed(results, workspace, "bad-row", 9, r"bad\.csv, line 42, column 'd2': '1\.2\.3' is not a finite number")
    assert "--skip-malformed" in line


def test_skip_malformed_trains_on_the_other_rows(results):
    result = _ok(results, "bad-row-skipped")
    assert re.search(r"bad\.csv: skipped 1 malformed rows .*line 42, column 'd2'", result.stderr)


def test_missing_declared_column_exits_9(results, workspace):
    _failed(results, workspace, "missing-column", 9, r"my\.csv, line 1, column 'weight': no such column; the file has "
                                                     r"the columns click, d1, .*Check the column spec")


def test_csv_without_a_spec_says_which_flag_to_add(results, workspace):
    _failed(results, workspace, "no-spec", 2, r"my\.csv needs a column spec\. Pass --columns")

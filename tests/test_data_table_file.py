"""A user's own CSV/TSV/Parquet file with a column spec: every format gives the same rows, ids are
stable and in range, vocabularies map unseen values to the reserved id, and every class of
malformed row names the file, the line and the column (or is skipped and counted)."""
from __future__ import annotations

import gzip
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from amgp_fx.data import (Batch, ColumnSpec, ColumnSpecError, TableFileReader, TableFormatError,
                          column_spec_from_options, load_column_spec, read_table_file, table_file_format)
from amgp_fx.data.criteo_tsv import DataFormatError
from amgp_fx.data.table_file import hash_ids
from amgp_fx.errors import DataError, as_cli_error

HEADER = ["click", "like", "price", "count", "user", "city"]
ROWS = [  # click, like, price, count, user, city; "" = missing
    ["1", "0", "2.5", "3", "u1", "paris"],
    ["0", "1", "", "10", "u2", "rome"],
    ["1", "1", "-1.25", "", "u1", ""],
    ["0", "0", "4e2", "0", "u3", "paris"],
    ["1", "0", " 7 ", "5", "u2", "paris"],
]
SPEC = ColumnSpec(["click"], ["price", "count"], ["user", "city"])
SIZES = (50, 20)


def write_text(path: Path, rows, delimiter=",", header=HEADER) -> Path:
    lines = ([delimiter.join(header)] if header else []) + [delimiter.join(row) for row in rows]
    text = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def write_parquet(path: Path, rows) -> Path:
    columns = {name: [row[i] for row in rows] for i, name in enumerate(HEADER)}
    table = pa.table({
        "click": pa.array([int(v) for v in columns["click"]], pa.int64()),
        "like": pa.array([v == "1" for v in columns["like"]], pa.bool_()),
        "price": pa.array([float(v) if v.strip() else None for v in columns["price"]], pa.float64()),
        "count": pa.array([int(v) if v else None for v in columns["count"]], pa.int32()),
        "user": pa.array(columns["user"], pa.string()),
        "city": pa.array([v or None for v in columns["city"]], pa.string()),
    })
    pq.write_table(table, path)
    return path


def expected_rows(spec: ColumnSpec, sizes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the reader must return, computed from ROWS directly."""
    index = {name: i for i, name in enumerate(HEADER)}
    label = np.array([[float(row[index[n]]) for n in spec.labels] for row in ROWS], np.float32)
    dense = np.array([[float(row[index[n]]) if row[index[n]].strip() else spec.dense_default for n in spec.dense]
                      for row in ROWS], np.float32)
    sparse = np.array([[0 if not row[index[c.name]] else int(hash_ids([row[index[c.name]]], c.name, size,
                                                                        spec.hash_key)[0])
                        for c, size in zip(spec.categorical, sizes)] for row in ROWS], np.int64)
    return label, dense, sparse


@pytest.mark.parametrize("name", ["data.csv", "data.tsv", "data.csv.gz", "data.tsv.gz", "data.parquet"])
def test_every_format_reads_the_rows_written(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".parquet"):
        write_parquet(path, ROWS)
    else:
        write_text(path, ROWS, "\t" if ".tsv" in name else ",")
    rows, stats = read_table_file(path, SPEC, SIZES)
    label, dense, sparse = expected_rows(SPEC, SIZES)
    assert isinstance(rows, Batch) and stats.rows == len(ROWS) and stats.skipped == 0
    rows.validate()
    assert rows.label.shape == (len(ROWS),) and rows.label.tolist() == label[:, 0].tolist()
    np.testing.assert_array_equal(rows.dense.numpy(), dense)
    np.testing.assert_array_equal(rows.sparse.numpy(), sparse)


def test_multi_label_spec_gives_one_label_column_per_task(tmp_path):
    spec = ColumnSpec(["click", "like"], ["price"], ["user", "city"])
    for path in (write_text(tmp_path / "a.csv", ROWS), write_parquet(tmp_path / "a.parquet", ROWS)):
        rows, _ = read_table_file(path, spec, SIZES)
        assert rows.label.shape == (len(ROWS), 2)
        np.testing.assert_array_equal(rows.label.numpy(), expected_rows(spec, SIZES)[0])


def test_missing_dense_values_take_the_spec_default_and_log1p_applies(tmp_path):
    path = write_text(tmp_path / "a.csv", ROWS)
    spec = ColumnSpec(["click"], ["price", "count"], ["user", "city"], dense_default=-3.0, dense_transform="log1p")
    rows, _ = read_table_file(path, spec, SIZES)
    raw = expected_rows(spec, SIZES)[1]
    np.testing.assert_allclose(rows.dense.numpy(), np.log1p(np.maximum(raw, 0.0)), rtol=1e-6)
    assert rows.dense[1, 0] == 0.0  # the missing price became -3.0, then log1p(max(-3, 0))
    plain, _ = read_table_file(path, ColumnSpec(["click"], ["price"], ["user", "city"], dense_default=-3.0), SIZES)
    assert plain.dense[1, 0] == -3.0 and plain.dense[2, 0] == -1.25


def test_hash_ids_are_in_range_and_spread(tmp_path):
    values = [f"v{i}" for i in range(50_000)]
    for size in (2, 3, 97, 1001):
        ids = hash_ids(values, "col", size, "k")
        assert ids.min() >= 1 and ids.max() < size
        counts = np.bincount(ids, minlength=size)[1:]
        expected = len(values) / (size - 1)  # >= 50 per bucket: a uniform hash fills each within +-60%
        assert counts.min() > 0.4 * expected and counts.max() < 1.6 * expected
    same = hash_ids(values, "col", 1001, "k")
    assert np.mean(same == hash_ids(values, "col", 1001, "other key")) < 0.01  # another key: another mapping
    assert np.mean(same == hash_ids(values, "other col", 1001, "k")) < 0.01


def test_hash_ids_are_the_same_in_another_process_with_another_hash_seed():
    values = ["paris", "rome", "u1", "", "ünïcode"]
    code = ("import sys, json; from amgp_fx.data.table_file import hash_ids; "
            f"print(json.dumps(hash_ids({values!r}, 'city', 1000, 'amgp-fx').tolist()))")
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(outputs) == 1
    assert json.loads(outputs.pop()) == hash_ids(values, "city", 1000, "amgp-fx").tolist()


def test_vocabulary_orders_by_frequency_and_maps_unseen_values_to_the_reserved_id(tmp_path):
    train = write_text(tmp_path / "train.csv", ROWS)
    spec = ColumnSpec(["click"], [], ["user", "city"], encoding="vocab")
    reader = TableFileReader(train, spec, (10, 10))
    rows = reader.read()
    # paris x3, rome x1; u1 x2, u2 x2, u3 x1 (ties by text)
    assert reader.vocabularies == {"user": ("u1", "u2", "u3"), "city": ("paris", "rome")}
    assert rows.sparse[:, 1].tolist() == [1, 2, 0, 1, 1]  # the missing city is id 0
    assert rows.sparse[:, 0].tolist() == [1, 2, 1, 3, 2]
    other = write_text(tmp_path / "eval.csv", [["1", "0", "1", "1", "u9", "rome"], ["0", "0", "1", "1", "u3", "oslo"]])
    again, _ = read_table_file(other, spec, (10, 10), vocabularies=reader.vocabularies)
    assert again.sparse.tolist() == [[0, 2], [3, 0]]  # u9 and oslo are unseen -> 0


def test_vocabulary_keeps_the_most_frequent_values_that_fit_the_table(tmp_path):
    path = write_text(tmp_path / "a.csv", ROWS)
    reader = TableFileReader(path, ColumnSpec(["click"], [], ["city", "user"], encoding="vocab"), (2, 3))
    rows = reader.read()
    assert reader.vocabularies == {"city": ("paris",), "user": ("u1", "u2")}
    assert rows.sparse[:, 0].tolist() == [1, 0, 0, 1, 1] and rows.sparse[:, 1].tolist() == [1, 2, 1, 0, 2]
    assert reader.dataset_spec.table_sizes == (2, 3)
    sized = TableFileReader(path, ColumnSpec(["click"], [], ["city"], encoding="vocab"))
    sized.read()
    assert sized.dataset_spec.table_sizes == (3,)  # no size given: vocabulary + the reserved id


def test_headerless_file_with_column_names_and_a_custom_delimiter(tmp_path):
    path = write_text(tmp_path / "a.txt", ROWS, ";", header=None)
    spec = ColumnSpec(["click"], ["price", "count"], ["user", "city"], delimiter=";", column_names=HEADER)
    rows, _ = read_table_file(path, spec, SIZES)
    np.testing.assert_array_equal(rows.sparse.numpy(), expected_rows(SPEC, SIZES)[2])
    bad = write_text(tmp_path / "b.txt", ROWS[:2] + [["x"] + ROWS[2][1:]], ";", header=None)
    with pytest.raises(TableFormatError) as caught:
        read_table_file(bad, spec, SIZES)
    assert (caught.value.line, caught.value.column) == (3, "click")  # no header: data starts at line 1


def test_max_rows_keeps_the_first_good_rows(tmp_path):
    rows, stats = read_table_file(write_text(tmp_path / "a.csv", ROWS), SPEC, SIZES, max_rows=3)
    assert rows.num_rows == 3 == stats.rows
    np.testing.assert_array_equal(rows.dense.numpy(), expected_rows(SPEC, SIZES)[1][:3])


# -- malformed rows --------------------------------------------------------------------------------------
MALFORMED = {  # name: (the broken row, column, words of the reason)
    "too-few-columns": (["1", "0", "2", "3", "u1"], None, "expected 6 comma-separated columns, found 5"),
    "too-many-columns": (["1", "0", "2", "3", "u1", "rome", "x"], None, "expected 6 comma-separated columns, found 7"),
    "dense-not-a-number": (["1", "0", "12abc", "3", "u1", "rome"], "price", "'12abc' is not a finite number"),
    "dense-overflows": (["1", "0", "1e999", "3", "u1", "rome"], "price", "'1e999' is not a finite number"),
    "dense-infinite": (["1", "0", "2", "inf", "u1", "rome"], "count", "'inf' is not a finite number"),
    "label-not-a-number": (["yes", "0", "2", "3", "u1", "rome"], "click", "'yes' is not a number"),
    "label-not-binary": (["2", "0", "2", "3", "u1", "rome"], "click", "'2' is not 0 or 1"),
    "label-missing": (["", "0", "2", "3", "u1", "rome"], "click", "the label is missing"),
    "empty-line": ([""], None, "expected 6 comma-separated columns, found 1"),
}


def _broken(tmp_path: Path, row, name="bad.csv") -> Path:
    return write_text(tmp_path / name, ROWS[:2] + [row] + ROWS[2:])  # header line 1, the bad row is line 4


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_each_malformed_row_names_the_file_line_and_column(tmp_path, case):
    row, column, words = MALFORMED[case]
    if case == "empty-line":
        path = tmp_path / "bad.csv"
        text = "\n".join([",".join(HEADER)] + [",".join(r) for r in ROWS[:2]] + [""] + [",".join(r) for r in ROWS[2:]])
        path.write_text(text + "\n")
        words, column = "the label is missing", "click"  # an empty line is a row of empty fields
    else:
        path = _broken(tmp_path, row)
    with pytest.raises(TableFormatError) as caught:
        read_table_file(path, SPEC, SIZES)
    error = caught.value
    assert isinstance(error, DataFormatError) and isinstance(error, ValueError)
    assert (error.path, error.line, error.column) == (str(path), 4, column)
    assert words in error.reason and str(error).startswith(f"{path}, line 4")
    cli = as_cli_error(error)  # what amgp-compress prints, with exit code 9
    assert isinstance(cli, DataError) and cli.exit_code == 9 and "--skip-malformed" in cli.line()
    assert pickle.loads(pickle.dumps(error)).args == error.args  # crosses process boundaries intact


@pytest.mark.parametrize("case", sorted(set(MALFORMED) - {"empty-line"}))
def test_skip_malformed_skips_exactly_the_bad_row_and_counts_it(tmp_path, case):
    path = _broken(tmp_path, MALFORMED[case][0])
    rows, stats = read_table_file(path, SPEC, SIZES, skip_malformed=True)
    assert (stats.rows, stats.skipped, rows.num_rows) == (len(ROWS), 1, len(ROWS))
    assert len(stats.first_errors) == 1 and stats.first_errors[0].startswith(f"{path}, line 4")
    np.testing.assert_array_equal(rows.dense.numpy(), expected_rows(SPEC, SIZES)[1])


def test_lines_after_a_dropped_row_are_still_numbered_right(tmp_path):
    rows = ROWS[:1] + [["1", "0"]] + ROWS[1:3] + [["1", "0", "oops", "1", "u", "c"]] + ROWS[3:]
    path = write_text(tmp_path / "a.csv", rows)
    with pytest.raises(TableFormatError) as caught:
        read_table_file(path, SPEC, SIZES)
    assert caught.value.line == 3 and caught.value.column is None  # the first problem, in file order
    kept, stats = read_table_file(path, SPEC, SIZES, skip_malformed=True)
    assert stats.skipped == 2 and kept.num_rows == len(ROWS)
    assert [error.split(":")[0] for error in stats.first_errors] == [f"{path}, line 3", f"{path}, line 6, column 'price'"]


def test_many_malformed_rows_over_several_blocks_are_all_counted(tmp_path):
    good = ["1", "0", "1.5", "2", "u1", "rome"]
    rows = [good if i % 10 else ["1", "0", "bad", "2", "u1", "rome"] for i in range(30_000)]
    path = write_text(tmp_path / "big.csv.gz", rows)
    kept, stats = read_table_file(path, SPEC, SIZES, skip_malformed=True)
    assert (stats.skipped, kept.num_rows) == (3000, 27_000) and len(stats.first_errors) == 10
    assert stats.first_errors[1].startswith(f"{path}, line 12, column 'price'")  # rows 0, 10, ... lines 2, 12, ...
    with pytest.raises(TableFormatError) as caught:
        read_table_file(write_text(tmp_path / "late.csv", [good] * 29_999 + [good[:3]]), SPEC, SIZES)
    assert caught.value.line == 30_001


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_declared_column_the_file_lacks_is_an_error_even_when_skipping(tmp_path, suffix):
    path = write_text(tmp_path / "a.csv", ROWS) if suffix == ".csv" else write_parquet(tmp_path / "a.parquet", ROWS)
    spec = ColumnSpec(["click"], ["price", "weight"], ["user"])
    with pytest.raises(TableFormatError) as caught:
        read_table_file(path, spec, (10,), skip_malformed=True)
    assert caught.value.column == "weight" and "no such column" in caught.value.reason
    assert "click, like, price" in caught.value.reason
    assert caught.value.line == (1 if suffix == ".csv" else None)


def test_parquet_rows_are_numbered_and_non_numeric_types_refused(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"click": [1, 0, 3], "price": [1.0, float("nan"), 2.0], "user": ["a", "b", "c"]}), path)
    spec = ColumnSpec(["click"], ["price"], ["user"])
    with pytest.raises(TableFormatError) as caught:
        read_table_file(path, spec, (10,))
    assert str(caught.value) == f"{path}, row 3, column 'click': '3' is not 0 or 1"
    rows, stats = read_table_file(path, spec, (10,), skip_malformed=True)
    assert rows.dense[:, 0].tolist() == [1.0, 0.0] and stats.skipped == 1  # NaN in Parquet is a missing value
    pq.write_table(pa.table({"click": [1], "price": pa.array([1], pa.date32()), "user": [5]}), path)
    with pytest.raises(TableFormatError, match="has type date32"):
        read_table_file(path, spec, (10,))


def test_files_that_are_not_tables_raise_data_format_errors(tmp_path):
    fake = tmp_path / "a.parquet"
    fake.write_bytes(b"not parquet at all")
    with pytest.raises(TableFormatError, match="not a readable Parquet file"):
        read_table_file(fake, SPEC, SIZES)
    truncated = tmp_path / "a.csv.gz"
    write_text(truncated, ROWS * 200)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(TableFormatError):
        read_table_file(truncated, SPEC, SIZES)
    assert table_file_format("x.CSV.gz") == "csv" and table_file_format("x.pq") == "parquet"
    assert table_file_format("x.tsv.bz2") is None
    with pytest.raises(ValueError, match="unknown table file type"):
        TableFileReader(tmp_path / "x.json", SPEC, SIZES)


# -- the spec --------------------------------------------------------------------------------------------
def test_spec_files_in_json_and_toml_give_the_same_spec(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({
        "label": ["click", "like"], "dense": ["price"], "encoding": "vocab", "dense_default": 1.5,
        "categorical": ["user", {"name": "city", "encoding": "hash", "size": 64}]}))
    (tmp_path / "s.toml").write_text(
        'label = ["click", "like"]\ndense = ["price"]\nencoding = "vocab"\ndense_default = 1.5\n'
        'categorical = ["user", {name = "city", encoding = "hash", size = 64}]\n')
    spec = load_column_spec(tmp_path / "s.json")
    assert spec == load_column_spec(tmp_path / "s.toml") == ColumnSpec.from_dict(spec.to_dict())
    assert [(c.name, c.encoding, c.size) for c in spec.categorical] == [("user", "vocab", None), ("city", "hash", 64)]
    assert spec.num_tasks == 2 and spec.dense_default == 1.5


@pytest.mark.parametrize("data, words", [
    ({"label": "a", "categorical": ["b"], "dense_defualt": 1}, "unknown key 'dense_defualt'"),
    ({"dense": ["a"], "categorical": ["b"]}, "no label column"),
    ({"label": "a"}, "no categorical column"),
    ({"label": "a", "dense": ["a"], "categorical": ["b"]}, "'a' is declared twice"),
    ({"label": "a", "categorical": ["b"], "encoding": "md5"}, "encoding must be one of hash, vocab"),
    ({"label": "a", "categorical": [{"name": "b", "size": 1}]}, "size must be an integer >= 2"),
    ({"label": "a", "categorical": ["b"], "dense_default": float("nan")}, "dense_default must be a finite number"),
    ({"label": "a", "categorical": ["b"], "delimiter": ",,"}, "delimiter must be one character"),
    ({"label": 3, "categorical": ["b"]}, "label must be a name or a list of names"),
    ([1, 2], "must be a table/object"),
])
def test_bad_specs_say_what_is_wrong(data, words):
    with pytest.raises(ColumnSpecError, match=words.replace("(", r"\(")):
        ColumnSpec.from_dict(data)


def test_spec_files_that_cannot_be_read(tmp_path):
    for name, text, words in (("s.json", "{", "not valid JSON"), ("s.toml", "label = ", "not valid TOML"),
                              ("s.json", "[" * 100_000, "nested too deeply|not valid JSON"),
                              ("s.yaml", "label: a", "must be a .json or .toml file")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ColumnSpecError, match=words):
            load_column_spec(tmp_path / name)
    with pytest.raises(ColumnSpecError, match="does not exist"):
        load_column_spec(tmp_path / "absent.toml")


def test_command_line_lists_replace_the_file_entries(tmp_path):
    (tmp_path / "s.toml").write_text('label = "click"\ndense = ["price"]\ncategorical = ["user"]\nhash_key = "k2"\n')
    assert column_spec_from_options() is None
    spec = column_spec_from_options(tmp_path / "s.toml", dense="price, count", categorical="user,city",
                                    encoding="vocab")
    assert spec.labels == ("click",) and spec.dense == ("price", "count") and spec.hash_key == "k2"
    assert [(c.name, c.encoding) for c in spec.categorical] == [("user", "vocab"), ("city", "vocab")]
    inline = column_spec_from_options(label="click,like", categorical="user")
    assert inline.labels == ("click", "like") and inline.dense == () and inline.categorical[0].encoding == "hash"


def test_module_examples_run():
    import doctest
    import importlib

    for name in ("amgp_fx.data.columns", "amgp_fx.data.table_file", "amgp_fx.data.model_tables"):
        result = doctest.testmod(importlib.import_module(name))
        assert result.attempted > 0 and result.failed == 0, name

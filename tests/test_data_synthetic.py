"""Synthetic Criteo-like data: determinism for any chunking, shapes, Zipf ids, teacher quality."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from amgp_fx.config import SyntheticConfig, capped_criteo_table_sizes, config_from_dict
from amgp_fx.data import BLOCK_ROWS, NpyDatasetWriter, NpyRowSource, StreamingLoader, SyntheticCriteo, concat_batches

SMALL = SyntheticConfig.from_preset("small")


@pytest.fixture(scope="module")
def small_data() -> SyntheticCriteo:
    return SyntheticCriteo(SMALL)


def _assert_batches_equal(left, right) -> None:
    for name, a, b in zip(("dense", "sparse", "label"), left, right):
        assert torch.equal(a, b), f"{name} differs"


@pytest.mark.parametrize("chunk_rows", [1000, 4095, BLOCK_ROWS, 4097, 6000])
def test_rows_identical_for_any_chunk_size(small_data, chunk_rows):
    start, count = 1234, 2 * BLOCK_ROWS + 500  # crosses two block boundaries
    whole = small_data.rows(start, start + count)
    chunked = concat_batches(list(small_data.chunks(count, chunk_rows, start=start)))
    _assert_batches_equal(whole, chunked)


def test_single_rows_match_bulk_rows(small_data):
    whole = small_data.rows(BLOCK_ROWS - 3, BLOCK_ROWS + 3)
    singles = concat_batches([small_data.rows(index, index + 1) for index in range(BLOCK_ROWS - 3, BLOCK_ROWS + 3)])
    _assert_batches_equal(whole, singles)


def test_same_seed_same_rows_new_seed_new_rows():
    first = SyntheticCriteo(SMALL).rows(0, 500)
    again = SyntheticCriteo(SyntheticConfig.from_preset("small")).rows(0, 500)
    other = SyntheticCriteo(SyntheticConfig.from_preset("small", seed=1)).rows(0, 500)
    _assert_batches_equal(first, again)
    assert not torch.equal(first.sparse, other.sparse)


def test_shapes_dtypes_and_ranges(small_data):
    batch = small_data.rows(0, 3000)
    batch.validate(small_data.spec)  # dtypes, shapes, ids inside their tables
    assert batch.dense.shape == (3000, 4) and batch.sparse.shape == (3000, 4) and batch.label.shape == (3000,)
    assert bool((batch.dense >= 0).all()), "dense features are log1p of non-negative counts"
    assert set(batch.label.unique().tolist()) <= {0.0, 1.0}
    zero_fraction = (batch.dense == 0).float().mean(0)
    # dense_zero_fraction=0.2 of zeros, plus small counts that floor to 0; and real spread above 0
    assert bool((zero_fraction > 0.15).all()) and bool((zero_fraction < 0.8).all())
    assert bool((batch.dense.max(0).values > 2.0).all())


def test_ids_are_heavy_tailed():
    data = SyntheticCriteo(SyntheticConfig.from_preset("small", table_sizes=(1000, 1000)))
    ids = data.rows(0, 20000).sparse[:, 0]
    counts = torch.bincount(ids, minlength=1000).double()
    # density ~ (x + 1) ** -1.05: id 0 is the mode, the head holds most of the mass
    assert counts.argmax().item() == 0
    assert counts[:10].sum() > 0.35 * counts.sum()
    assert counts[:100].mean() > 10 * counts[500:].mean()
    assert (counts > 0).sum() > 300, "the tail is still visited"


def test_default_spec_matches_capped_criteo():
    config = SyntheticConfig()
    assert config.num_dense == 13 and config.table_sizes == capped_criteo_table_sizes()
    assert len(config.table_sizes) == 26 and max(config.table_sizes) == 100_000


@pytest.mark.parametrize("preset", ["small", "default"])
def test_bayes_auc_is_learnable_but_not_perfect(preset):
    data = SyntheticCriteo(SyntheticConfig.from_preset(preset))
    batch, logits = data.rows_with_logits(0, 20000)
    bayes_auc = roc_auc_score(batch.label.numpy(), logits[:, 0].numpy())
    assert 0.72 < bayes_auc < 0.83
    assert abs(batch.label.mean().item() - 0.25) < 0.02  # target_ctr


def test_noise_lowers_bayes_auc():
    aucs = []
    for noise_std in (0.0, 1.0, 3.0):
        batch, logits = SyntheticCriteo(SyntheticConfig.from_preset("small", noise_std=noise_std)).rows_with_logits(0, 20000)
        aucs.append(roc_auc_score(batch.label.numpy(), logits[:, 0].numpy()))
    assert aucs[0] > aucs[1] + 0.02 > aucs[2] + 0.04


def test_multi_task_labels_are_related_but_distinct():
    data = SyntheticCriteo(SyntheticConfig.from_preset("small", num_tasks=3, task_correlation=0.7))
    batch = data.rows(0, 20000)
    assert batch.label.shape == (20000, 3) and data.spec.num_tasks == 3
    correlation = np.corrcoef(batch.label.numpy().T)
    off_diagonal = correlation[~np.eye(3, dtype=bool)]
    assert (off_diagonal > 0.05).all() and (off_diagonal < 0.9).all()


def test_streaming_loader_covers_every_row_once(small_data):
    loader = StreamingLoader(small_data, 5000, 256, chunk_rows=1500, shuffle=True, seed=3)
    batches = list(loader.epoch(0))
    assert len(batches) == len(loader)
    streamed = concat_batches(batches)
    reference = small_data.rows(0, 5000)
    # same multiset of rows: sort both by a row key built from the exact values
    def keys(batch):
        return sorted(zip(batch.sparse.tolist(), batch.dense.tolist(), batch.label.tolist()))
    assert keys(streamed) == keys(reference)
    assert not torch.equal(streamed.sparse, reference.sparse), "rows are shuffled"


def test_streaming_loader_resumes_mid_epoch(small_data):
    loader = StreamingLoader(small_data, 3000, 200, chunk_rows=700, shuffle=True, seed=5)
    full = list(loader.epoch(2))
    tail = list(loader.epoch(2, start_batch=7))
    assert len(tail) == len(full) - 7
    for left, right in zip(full[7:], tail):
        assert torch.equal(left.sparse, right.sparse)


def test_npy_writer_streams_rows_to_disk(small_data, tmp_path):
    writer = NpyDatasetWriter(tmp_path / "synthetic", small_data.spec, 2500, metadata={"seed": 0})
    for chunk in small_data.chunks(2500, 1000):
        writer.write(chunk)
    writer.close()
    source = NpyRowSource(tmp_path / "synthetic")
    assert source.spec == small_data.spec and source.num_rows == 2500
    _assert_batches_equal(source.rows(100, 2100), small_data.rows(100, 2100))


def test_npy_writer_refuses_short_write(small_data, tmp_path):
    writer = NpyDatasetWriter(tmp_path / "short", small_data.spec, 100)
    writer.write(small_data.rows(0, 50))
    with pytest.raises(ValueError, match="wrote 50 of 100 rows"):
        writer.close()
    with pytest.raises(FileNotFoundError, match="not a complete .npy dataset"):
        NpyRowSource(tmp_path / "short")


def test_synthetic_config_round_trip_and_validation():
    for preset in SyntheticConfig.PRESETS:
        config = SyntheticConfig.from_preset(preset)
        assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match=r"table_sizes\[1\] must be an integer"):
        SyntheticConfig(table_sizes=(10, 0))
    with pytest.raises(ValueError, match="noise_std must be a finite number >= 0"):
        SyntheticConfig(noise_std=math.nan)
    with pytest.raises(ValueError, match="unknown synthetic preset 'huge'"):
        SyntheticConfig.from_preset("huge")
    with pytest.raises(ValueError, match="unknown SyntheticConfig keys"):
        SyntheticConfig.from_dict({**SMALL.to_dict(), "colour": "red"})


# -- the dense-deep teacher term and the "wide_teacher" preset ----------------------------------------
# clean logits of rows 4094..4098 (across a block boundary) computed before the dense-deep term existed
_OLD_LOGITS = {
    "default": [-3.0357880201, -1.5383325771, -1.8641173434, -1.3595465363, -3.958856721],
    "small": [-1.7888965641, -1.6928402078, -2.9011780484, -1.4584591079, -1.0552886629],
    "capacity": [-3.1473017835, -2.5774208284, 3.5489951809, -4.4292131789, -2.2218496316],
}
_OLD_LABELS = {"default": [0, 0, 0, 0, 0], "small": [0, 0, 0, 1, 0], "capacity": [0, 0, 1, 0, 0]}
_OLD_FIRST_IDS = {"default": [42, 16, 401, 143, 220], "small": [0, 4, 11, 1, 13], "capacity": [42, 16, 401, 143, 220]}


@pytest.mark.parametrize("preset", sorted(_OLD_LOGITS))
def test_old_presets_rows_unchanged(preset):
    batch, logits = SyntheticCriteo(SyntheticConfig.from_preset(preset)).rows_with_logits(4094, 4099)
    # ids and labels are integers drawn from seeded generators: exact on every version. The logits are
    # float32 sums whose rounding depends on the BLAS build and the reduction order (1.2e-6 apart on
    # torch 2.11 / numpy 2.5): equal to float32 precision of their magnitude (~1e2 ulp), not bitwise.
    np.testing.assert_allclose(logits[:, 0].numpy(), _OLD_LOGITS[preset], rtol=1e-5, atol=1e-5)
    assert batch.label.tolist() == _OLD_LABELS[preset]
    assert batch.sparse[:, 0].tolist() == _OLD_FIRST_IDS[preset]


def test_dense_deep_knobs_ignored_while_its_scale_is_zero():
    base = SyntheticCriteo(SyntheticConfig.from_preset("small")).rows_with_logits(0, 300)
    knobs = SyntheticConfig.from_preset("small", dense_deep_hidden=7, dense_deep_layers=3, dense_deep_frequency=5.0)
    other = SyntheticCriteo(knobs).rows_with_logits(0, 300)
    _assert_batches_equal(base[0], other[0])
    assert torch.equal(base[1], other[1])


WIDE = SyntheticConfig.from_preset("wide_teacher", table_sizes=(1000, 50_000, 20, 200_000), num_dense=13)


@pytest.fixture(scope="module")
def wide_data() -> SyntheticCriteo:
    return SyntheticCriteo(WIDE)


@pytest.mark.parametrize("chunk_rows", [999, BLOCK_ROWS, 5000])
def test_wide_teacher_rows_identical_for_any_chunk_size(wide_data, chunk_rows):
    start, count = 3000, 2 * BLOCK_ROWS + 77
    whole = wide_data.rows(start, start + count)
    _assert_batches_equal(whole, concat_batches(list(wide_data.chunks(count, chunk_rows, start=start))))
    fresh = SyntheticCriteo(SyntheticConfig.from_dict(WIDE.to_dict())).rows(start + 5, start + 9)
    _assert_batches_equal(fresh, wide_data.rows(start + 5, start + 9))


def test_wide_teacher_label_rate_bayes_auc_and_dense_signal(wide_data):
    batch, logits = wide_data.rows_with_logits(0, 20000)
    assert abs(batch.label.mean().item() - 0.25) < 0.02
    bayes_auc = roc_auc_score(batch.label.numpy(), logits[:, 0].numpy())
    assert 0.86 < bayes_auc < 0.94, "learnable, but noise keeps it well below 1"
    # most of the signal is a function of the dense features alone: dropping the term costs AUC
    without = SyntheticCriteo(SyntheticConfig.from_dict({**WIDE.to_dict(), "dense_deep_scale": 0.0}))
    _, logits_without = without.rows_with_logits(0, 20000)
    assert roc_auc_score(batch.label.numpy(), logits_without[:, 0].numpy()) < bayes_auc - 0.08
    # ... and a wiggly one: a linear fit on the dense features explains little of the clean logit
    dense = np.c_[batch.dense.numpy().astype(np.float64), np.ones(20000)]
    residual = np.linalg.lstsq(dense, logits[:, 0].numpy(), rcond=None)[1][0]
    assert residual / (20000 * logits[:, 0].numpy().var()) > 0.7


def test_wide_teacher_multi_task_and_validation():
    data = SyntheticCriteo(SyntheticConfig.from_preset("wide_teacher", table_sizes=(100, 100), num_tasks=2))
    batch = data.rows(0, 5000)
    assert batch.label.shape == (5000, 2)
    assert 0.1 < float(np.corrcoef(batch.label.numpy().T)[0, 1]) < 0.95
    with pytest.raises(ValueError, match="dense_deep_layers must be a positive integer"):
        SyntheticConfig.from_preset("wide_teacher", dense_deep_layers=0)
    with pytest.raises(ValueError, match="dense_deep_frequency must be a finite number >= 0"):
        SyntheticConfig.from_preset("wide_teacher", dense_deep_frequency=-1.0)

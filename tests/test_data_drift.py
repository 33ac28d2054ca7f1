"""Drifted synthetic data for the recurring-training stage: a shifted teacher and new ids."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from amgp_fx.config import SyntheticConfig, config_from_dict
from amgp_fx.data import BLOCK_ROWS, SyntheticCriteo, concat_batches

SMALL = SyntheticConfig.from_preset("small")
ROWS = 8192  # two blocks; correlation std errors ~(1 - r^2) / sqrt(ROWS) <= 0.01, far below the tolerances


def _assert_same(left, right) -> None:
    for name, a, b in zip(("dense", "sparse", "label"), left, right):
        assert torch.equal(a, b), f"{name} differs"


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.numpy(), b.numpy())[0, 1])


@pytest.mark.parametrize("preset", ["small", "wide_teacher"])
def test_zero_drift_is_bitwise_the_undrifted_config(preset):
    config = SyntheticConfig.from_preset(preset, table_sizes=(30, 5000, 7), num_dense=5)
    batch, logits = SyntheticCriteo(config).rows_with_logits(BLOCK_ROWS - 100, BLOCK_ROWS + 100)
    # drift_seed is ignored while nothing drifts
    zero = config.drifted(0.0, new_id_share=0.0, seed=12345)
    other_batch, other_logits = SyntheticCriteo(zero).rows_with_logits(BLOCK_ROWS - 100, BLOCK_ROWS + 100)
    _assert_same(batch, other_batch)
    assert torch.equal(logits, other_logits)


def test_drift_changes_labels_only_and_new_ids_change_ids_only():
    base = SyntheticCriteo(SMALL).rows_with_logits(0, 3000)
    drifted = SyntheticCriteo(SMALL.drifted(0.5)).rows_with_logits(0, 3000)
    # paired rows: same features, and a different teacher
    assert torch.equal(base[0].dense, drifted[0].dense) and torch.equal(base[0].sparse, drifted[0].sparse)
    assert not torch.equal(base[1], drifted[1])
    new_ids = SyntheticCriteo(SMALL.drifted(0.0, new_id_share=0.2)).rows(0, 3000)
    assert torch.equal(base[0].dense, new_ids.dense) and not torch.equal(base[0].sparse, new_ids.sparse)


@pytest.mark.parametrize("drift", [0.3, 0.6])
def test_linear_term_correlates_by_sqrt_one_minus_drift_squared(drift):
    # first-order term only: linear in the per-id values, so corr = sqrt(1 - d^2) (the field
    # weights' small random part drifts too: measured 0.956 / 0.791 for 0.954 / 0.800)
    linear = SyntheticConfig.from_preset("small", interaction_scale=0.0, deep_scale=0.0)
    old = SyntheticCriteo(linear)
    batch, logits = SyntheticCriteo(linear.drifted(drift)).rows_with_logits(0, ROWS)
    assert abs(_corr(logits[:, 0], old.clean_logits(batch)[:, 0]) - math.sqrt(1 - drift**2)) < 0.025
    # pairwise products of two drifted embeddings: about 1 - d^2 (measured 0.903 / 0.586)
    products = SyntheticConfig.from_preset("small", first_order_scale=0.0, deep_scale=0.0)
    old = SyntheticCriteo(products)
    batch, logits = SyntheticCriteo(products.drifted(drift)).rows_with_logits(0, ROWS)
    assert abs(_corr(logits[:, 0], old.clean_logits(batch)[:, 0]) - (1 - drift**2)) < 0.07


def test_whole_logit_correlation_falls_with_drift():
    old = SyntheticCriteo(SMALL)
    correlations = []
    for drift in (0.0, 0.1, 0.3, 0.6, 0.9):
        batch, logits = SyntheticCriteo(SMALL.drifted(drift)).rows_with_logits(0, ROWS)
        correlations.append(_corr(logits[:, 0], old.clean_logits(batch)[:, 0]))
    assert correlations[0] == pytest.approx(1.0, abs=1e-9)
    assert all(a > b + 0.005 for a, b in zip(correlations, correlations[1:]))
    # never above the linear terms' sqrt(1 - d^2), about 1 - d^2 from the products (small: 0.903, 0.626)
    for drift, value in zip((0.3, 0.6), correlations[2:4]):
        assert (1 - drift**2) - 0.06 < value < math.sqrt(1 - drift**2)


def test_old_teacher_auc_on_drifted_rows_drops_monotonically():
    old = SyntheticCriteo(SMALL)
    old_aucs, own_aucs, ctrs = [], [], []
    for drift in (0.0, 0.3, 0.6):
        batch, logits = SyntheticCriteo(SMALL.drifted(drift)).rows_with_logits(0, 20000)
        if drift == 0.0:  # no drift: the same teacher, up to float32 rounding inside it
            assert (logits[:, 0] - old.clean_logits(batch)[:, 0]).abs().max() < 1e-5
        old_aucs.append(roc_auc_score(batch.label.numpy(), old.clean_logits(batch)[:, 0].numpy()))
        own_aucs.append(roc_auc_score(batch.label.numpy(), logits[:, 0].numpy()))
        ctrs.append(batch.label.mean().item())
    # measured 0.771, 0.712, 0.630 (8192 rows). At drift 0 both teachers compute the same logits by
    # different paths; float rounding may reorder a few near-equal logits, which moves the AUC by ~1e-8
    assert old_aucs[0] == pytest.approx(own_aucs[0], abs=1e-6)
    assert old_aucs[0] > old_aucs[1] + 0.02 and old_aucs[1] > old_aucs[2] + 0.04
    # the drifted teacher scores its own rows far better than the old one: the data moved, not the noise
    assert own_aucs[1] > old_aucs[1] + 0.01 and own_aucs[2] > old_aucs[2] + 0.05
    # the bias is re-picked, so the click rate stays; the kept normalisation lets the Bayes AUC move
    # with the realised W' (tiny tables: 0.77 -> 0.72), but the task stays learnable
    assert all(abs(ctr - 0.25) < 0.025 for ctr in ctrs)
    assert all(0.68 < auc < 0.83 for auc in own_aucs)


@pytest.mark.parametrize("share", [0.1, 0.3])
def test_new_ids_appear_with_the_requested_share_and_stay_in_range(share):
    config = SyntheticConfig.from_preset("small", table_sizes=(20, 1000, 100_000), num_dense=3)
    base = SyntheticCriteo(config).rows(0, 20000)
    data = SyntheticCriteo(config.drifted(0.0, new_id_share=share))
    batch = data.rows(0, 20000)
    batch.validate(data.spec)  # every id inside its table
    changed = (batch.sparse != base.sparse).double().mean(0)
    # binomial std <= 0.0033 at 20000 rows; the 20-id table also loses the new ids equal to the old one
    assert abs(changed[1].item() - share) < 0.015 and abs(changed[2].item() - share) < 0.015
    assert share * 0.8 < changed[0].item() < share + 0.015
    for column, size in enumerate(config.table_sizes):
        new = batch.sparse[:, column][batch.sparse[:, column] != base.sparse[:, column]]
        assert int(new.min()) >= size - size // 2 and int(new.max()) < size, "new ids come from the table's tail"
    # in a large table the offline rows (almost) never drew them, and a few new ids are popular
    big_new = batch.sparse[:, 2][batch.sparse[:, 2] != base.sparse[:, 2]]
    offline_counts = torch.bincount(base.sparse[:, 2], minlength=100_000)
    assert (offline_counts[big_new] == 0).double().mean().item() > 0.95
    assert (big_new == 99_999).double().mean().item() > 0.05, "new rank 0 is id size - 1, a new popular id"


def test_new_ids_without_drift_keep_the_teacher():
    # the old teacher knows every id (a trained model does not): on the new rows its logits are the new
    # teacher's up to the re-picked bias, a constant (normalisation is the undrifted one)
    config = SMALL.drifted(0.0, new_id_share=0.3)
    batch, logits = SyntheticCriteo(config).rows_with_logits(0, 3000)
    difference = (SyntheticCriteo(SMALL).clean_logits(batch) - logits).numpy()
    assert difference.std() < 1e-5 and abs(difference.mean()) < 0.5


def test_drift_is_deterministic_per_seed():
    config = SMALL.drifted(0.4, new_id_share=0.2, seed=3)
    first, again = SyntheticCriteo(config).rows(0, 2000), SyntheticCriteo(SMALL.drifted(0.4, 0.2, seed=3)).rows(0, 2000)
    _assert_same(first, again)
    other = SyntheticCriteo(SMALL.drifted(0.4, 0.2, seed=4)).rows(0, 2000)
    assert not torch.equal(first.sparse, other.sparse) and not torch.equal(first.label, other.label)
    assert torch.equal(first.dense, other.dense), "the seed of W (and of the features) is `seed`, not `drift_seed`"


@pytest.mark.parametrize("preset", ["small", "wide_teacher"])
def test_drifted_rows_identical_for_any_chunk_size(preset):
    config = SyntheticConfig.from_preset(preset, table_sizes=(50, 3000), num_dense=4).drifted(0.4, 0.25, seed=2)
    data = SyntheticCriteo(config)
    start, count = 1234, 2 * BLOCK_ROWS + 500
    whole = data.rows(start, start + count)
    for chunk_rows in (999, BLOCK_ROWS, 4097):
        _assert_same(whole, concat_batches(list(data.chunks(count, chunk_rows, start=start))))
    _assert_same(SyntheticCriteo(config).rows(start + 7, start + 9), data.rows(start + 7, start + 9))


def test_clean_logits_match_rows_with_logits_and_check_the_spec():
    data = SyntheticCriteo(SMALL.drifted(0.3, 0.2))
    batch, logits = data.rows_with_logits(100, 900)
    np.testing.assert_allclose(data.clean_logits(batch).numpy(), logits.numpy(), rtol=1e-5, atol=1e-5)
    bad = batch._replace(sparse=batch.sparse.clone())
    bad.sparse[0, 0] = SMALL.table_sizes[0]
    with pytest.raises(ValueError, match="outside table 0"):
        data.clean_logits(bad)


def test_drift_fields_round_trip_validate_and_old_dicts_load():
    config = SyntheticConfig.from_preset("wide_teacher").drifted(0.3, new_id_share=0.1, seed=9)
    assert (config.drift, config.new_id_share, config.drift_seed) == (0.3, 0.1, 9)
    assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.drifted(0.0, 0.0, seed=0) == SyntheticConfig.from_preset("wide_teacher")
    old_dict = {key: value for key, value in SMALL.to_dict().items() if key not in ("drift", "new_id_share", "drift_seed")}
    assert SyntheticConfig.from_dict(old_dict) == SMALL
    with pytest.raises(ValueError, match=r"drift must be in \[0, 1\]"):
        SMALL.drifted(1.5)
    with pytest.raises(ValueError, match=r"new_id_share must be in \[0, 1\]"):
        SMALL.drifted(0.1, new_id_share=-0.1)
    with pytest.raises(ValueError, match="drift_seed must be an integer >= 0"):
        SMALL.drifted(0.1, seed=-1)

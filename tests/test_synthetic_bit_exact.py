"""SyntheticCriteo's rows never change: pinned digests, and the teacher against a plain reference.

Saved benchmark results (docs/results) and row caches were made from these rows, so a speed-up of
the generator must leave every bit as it was. Two oracles:

* sha256 digests of (dense, sparse, label), computed with the implementation at commit 608fc95
  (before the generator was optimised). These are integers, float32 log-counts and 0/1 labels drawn
  from seeded generators: the same with 1 to 16 OpenBLAS threads and on numpy 1.26 and 2.4.
* The teacher's float64 terms and logits, bitwise against `_reference_raw_terms`: 608fc95's
  straightforward formulas (every id hashed, one concatenated field array, the same matrix products
  on the same shapes), run here on the same machine. The logits' last bits depend on the BLAS build
  and its thread count, so they cannot be pinned; this comparison holds on any machine.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from amgp_fx.config import SyntheticConfig
from amgp_fx.data import BLOCK_ROWS, SyntheticCriteo

BENCHMARK = SyntheticConfig.from_preset("wide_teacher", table_sizes=(200_000,) * 26)  # tools/bench_amgp.py's
CONFIGS = {
    "small": SyntheticConfig.from_preset("small"),
    "benchmark": BENCHMARK,
    "benchmark drifted": BENCHMARK.drifted(0.3, new_id_share=0.1, seed=1),
    "small 3 tasks drifted": SyntheticConfig.from_preset("small", num_tasks=3).drifted(0.5, new_id_share=0.2, seed=7),
    "wide 2 tasks drifted": SyntheticConfig.from_preset("wide_teacher", table_sizes=(100, 9000), num_tasks=2,
                                                        seed=3).drifted(0.6, seed=2),
}
# (config, start, stop, sha256 of dense, sparse and label bytes) from the implementation at 608fc95
PINNED = [
    ("small", 4000, 4200, "bea5779a83b7ff57439379f5cd5d407228ac5030b44df703355a36bf60144bba"),
    ("benchmark", 4090, 4100, "dad6c05d497266d7aed1966590377b42c801355ea9967e0227dd91c73a027153"),
    ("benchmark", 1 << 40, (1 << 40) + 5, "004fe671c79b4f3d6b199646856972ffb76e0c8342d07c5c32acca3ad6664be9"),
    ("benchmark drifted", 4090, 4100, "58d684045529f9397cfec9abc0b54c47f72c2a9b5e05a996e6d987950c0d6349"),
    ("benchmark drifted", 1 << 42, (1 << 42) + 7, "4de243340d37f58ad4a09858cf967981aeb0cc79ac0401675ea9e6b32bcb3d2f"),
    ("small 3 tasks drifted", 8190, 8200, "4f59921e2c6f501b3e2ceed0b4a9bb0113b80d593796dc7f26097e785388bb16"),
    ("wide 2 tasks drifted", 0, 300, "d6c84d665a7eb9f38bbb00549dc5ff0bbf624aa851a7e176f74811f0f9620647"),
]
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@pytest.fixture(scope="module")
def generators() -> dict[str, SyntheticCriteo]:
    return {name: SyntheticCriteo(config) for name, config in CONFIGS.items()}


@pytest.mark.parametrize(("name", "start", "stop", "digest"), PINNED)
def test_rows_equal_the_pinned_digests(generators, name, start, stop, digest):
    batch = generators[name].rows(start, stop)
    hashed = hashlib.sha256()
    for tensor in batch:
        hashed.update(np.ascontiguousarray(tensor.numpy()).tobytes())
    assert hashed.hexdigest() == digest, f"rows {start}:{stop} of {name!r} changed"


def _reference_values(data: SyntheticCriteo, ids: np.ndarray) -> np.ndarray:
    """608fc95's teacher values (N, F, K + 1) of every id, hashed without a cache."""
    def splitmix64(values):
        mixed = values.astype(np.uint64) + _GOLDEN
        mixed = (mixed ^ (mixed >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        mixed = (mixed ^ (mixed >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return mixed ^ (mixed >> np.uint64(31))

    def teacher_values(keys):
        hashed = splitmix64(keys[np.arange(ids.shape[1])[None, :]] ^ (ids[..., None].astype(np.uint64) * _GOLDEN))
        return np.sqrt(3.0) * (2.0 * ((hashed >> np.uint64(11)).astype(np.float64) * 2.0**-53) - 1.0)

    values = teacher_values(data._keys)
    if data.config.drift > 0:
        values = data._drift_keep * values + data.config.drift * teacher_values(data._drift_keys)
    return values


def _reference_raw_terms(data: SyntheticCriteo, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """608fc95's `_raw_terms`, (C, N, T) float64."""
    dim = data.config.teacher_dim
    values = _reference_values(data, ids)
    embeddings, first_order = values[:, :, :dim], values[:, :, dim]  # first_order strided, as it was
    standardized = (dense.astype(np.float64) - data._dense_mean) / data._dense_std
    dense_vector = 1.5 * np.tanh(standardized @ data._dense_projection)
    fields = np.concatenate([embeddings, dense_vector[:, None, :]], axis=1)
    weighted_sum = np.einsum("tp,npk->ntk", data._field_weights, fields)
    squared_norms = np.einsum("tp,np->nt", data._field_weights**2, (fields**2).sum(-1))
    interaction = 0.5 * ((weighted_sum**2).sum(-1) - squared_norms)
    flat_fields = fields.reshape(len(ids), -1).astype(np.float32)
    hidden = np.maximum(flat_fields @ data._hidden_weight + data._hidden_bias, 0.0)
    terms = [first_order @ data._first_order_weights.T, interaction, hidden.astype(np.float64) @ data._output_weight]
    if data.config.dense_deep_scale > 0:
        hidden = standardized.astype(np.float32)
        for weight, bias in data._dense_deep_layers:
            hidden = np.sin(hidden @ weight + bias)
        terms.append(hidden.astype(np.float64) @ data._dense_deep_output)
    return np.stack(terms)


def _same_bits(actual: np.ndarray, expected: np.ndarray) -> bool:
    return actual.dtype == expected.dtype and actual.shape == expected.shape and actual.tobytes() == expected.tobytes()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_raw_terms_bitwise_equal_the_reference(generators, name):
    """On the calibration sample (16384 rows, whose terms set the normalisation and the bias; a
    block's 4096 of them where 26 tables make the reference slow) and on sizes that `clean_logits`
    may see."""
    data, config = generators[name], CONFIGS[name]
    dense, ids = data._sample_features(np.random.default_rng(np.random.SeedSequence([config.seed, 2])), 16384)
    ids = data._with_new_ids(ids, np.random.SeedSequence([config.seed, 5, config.drift_seed]))
    for rows in (BLOCK_ROWS if len(config.table_sizes) > 4 else 16384, 257, 1):
        expected = _reference_raw_terms(data, dense[:rows], ids[:rows])
        assert _same_bits(data._raw_terms(dense[:rows], ids[:rows]), expected), f"{rows} rows"


@pytest.mark.parametrize("name", ["benchmark drifted", "small 3 tasks drifted", "wide 2 tasks drifted"])
def test_logits_bitwise_equal_the_reference(generators, name):
    """Each block's logits are the reference terms of the whole block, normalised, plus the bias;
    also through a window across the block boundary."""
    data, config = generators[name], CONFIGS[name]
    blocks, logits = data.rows_with_logits(BLOCK_ROWS, 3 * BLOCK_ROWS)
    terms = np.concatenate([_reference_raw_terms(data, blocks.dense.numpy()[rows], blocks.sparse.numpy()[rows])
                            for rows in (slice(0, BLOCK_ROWS), slice(BLOCK_ROWS, 2 * BLOCK_ROWS))], axis=1)
    scales = np.array([config.first_order_scale, config.interaction_scale, config.deep_scale,
                       config.dense_deep_scale][:len(terms)])
    normalized = (terms - data._term_mean[:, None, :]) / data._term_std[:, None, :]
    expected = np.einsum("c,cnt->nt", scales, normalized) + data._bias
    assert _same_bits(logits.numpy(), expected)
    start, stop = 2 * BLOCK_ROWS - 300, 2 * BLOCK_ROWS + 200
    assert _same_bits(data.rows_with_logits(start, stop)[1].numpy(), expected[start - BLOCK_ROWS:stop - BLOCK_ROWS])


def test_bench_amgps_parallel_rows_equal_one_process_rows(monkeypatch):
    """tools/bench_amgp.make_rows splits a large request into chunks for spawned workers (with an OpenBLAS
    setting in their environment): the rows must be those one process makes, and the variable must not
    outlive the call."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "tools"))  # the workers import it too
    import bench_amgp
    config = SyntheticConfig.from_preset("small", seed=11)
    start, count = 3 * BLOCK_ROWS + 17, 131_072 + 2_000  # two chunks, the second short, off block edges
    before = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
    parallel = bench_amgp.make_rows(config, start, count, workers=2)
    assert os.environ.get("OPENBLAS_THREAD_TIMEOUT") == before
    serial = SyntheticCriteo(config).rows(start, start + count)
    for name in ("dense", "sparse", "label"):
        assert torch.equal(getattr(parallel, name), getattr(serial, name)), name

"""Criteo-like synthetic click data whose labels come from a hidden teacher network.

Dim letters: N rows, F sparse fields, K teacher embedding width, H teacher hidden width, T tasks.

Why a teacher: random labels teach nothing, and labels from a linear rule make every model equal.
A teacher with per-id embeddings, pairwise dot interactions and an MLP gives a task where a model
can learn (AUC well above 0.5), cannot be perfect (logit noise caps the Bayes AUC), and where a
wider teacher makes a wider model pay off. An optional fourth term (`dense_deep_scale`), a sine MLP
over the dense features alone, is signal that every row teaches: with large tables trained for one
pass the id terms are capped by how far the embeddings got, and this term is where MLP width shows.

Determinism: rows are produced in fixed blocks of `BLOCK_ROWS`; block b is drawn from its own
generator seeded by (seed, b), and the teacher's per-id vectors are hashes of (seed, feature, id).
So row i depends only on (config, i), whatever chunk size the caller reads with.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..config import SyntheticConfig
from .batch import Batch, DatasetSpec

__all__ = ["BLOCK_ROWS", "SyntheticCriteo", "splitmix64"]

BLOCK_ROWS = 4096
_CALIBRATION_ROWS = 16384
_HEAD_IDS = 2048  # teacher values of ids below this are cached (Zipf: most lookups hit them)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a fast, well-mixed uint64 -> uint64 hash (wraps modulo 2**64).

    Example:
        >>> int(splitmix64(np.array([0], dtype=np.uint64))[0]) == 0xE220A8397B1DCDAF
        True
    """
    mixed = values.astype(np.uint64) + _GOLDEN
    mixed = (mixed ^ (mixed >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    mixed = (mixed ^ (mixed >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return mixed ^ (mixed >> np.uint64(31))


def _hash_uniform(keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) values, one per (key, id) pair, broadcasting `keys` against `ids`."""
    with np.errstate(over="ignore"):
        hashed = splitmix64(keys ^ (ids.astype(np.uint64) * _GOLDEN))
    return (hashed >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _teacher_values(keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per-(key, id) teacher values, uniform on [-sqrt(3), sqrt(3)] (unit variance), float64."""
    return np.sqrt(3.0) * (2.0 * _hash_uniform(keys, ids) - 1.0)


def _zipf_ids(uniform: np.ndarray, table_sizes: np.ndarray, exponent: float) -> np.ndarray:
    """Inverse CDF of density ~ (x + 1) ** -exponent on [0, size), floored to integer ids."""
    upper = table_sizes.astype(np.float64) + 1.0
    if abs(exponent - 1.0) < 1e-9:
        continuous = np.power(upper, uniform) - 1.0
    else:
        power = 1.0 - exponent
        continuous = np.power(1.0 + uniform * (np.power(upper, power) - 1.0), 1.0 / power) - 1.0
    return np.minimum(np.floor(continuous).astype(np.int64), table_sizes - 1)


class SyntheticCriteo:
    """Generator of Criteo-like rows: `rows(start, stop)` is row-exact for any slicing.

    Args:
        config: the data and teacher parameters; see `SyntheticConfig`.

    Example:
        >>> data = SyntheticCriteo(SyntheticConfig.from_preset("small"))
        >>> whole = data.rows(0, 10)
        >>> torch.equal(torch.cat([data.rows(0, 3).sparse, data.rows(3, 10).sparse]), whole.sparse)
        True
    """

    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config
        self.spec = DatasetSpec(config.name, config.num_dense, config.table_sizes, config.num_tasks)
        self._table_sizes = np.asarray(config.table_sizes, dtype=np.int64)
        self._build_teacher(np.random.default_rng(np.random.SeedSequence([config.seed, 0])))
        self._calibrate(np.random.default_rng(np.random.SeedSequence([config.seed, 2])))

    # ------------------------------------------------------------------ public
    def rows(self, start: int, stop: int) -> Batch:
        """Rows [start, stop) as a Batch on the CPU (label (N,) for one task, else (N, T))."""
        return self.rows_with_logits(start, stop)[0]

    def rows_with_logits(self, start: int, stop: int) -> tuple[Batch, torch.Tensor]:
        """Rows [start, stop) and the teacher's noise-free logits (N, T) float64.

        Ranking by these logits is the Bayes-optimal predictor (the noise is independent of the
        features), so their AUC against the labels is the best AUC any model can reach.

        Raises:
            ValueError: when not 0 <= start <= stop.
        """
        if not 0 <= start <= stop:
            raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
        first_block, last_block = start // BLOCK_ROWS, max(start, stop - 1) // BLOCK_ROWS
        parts = [self._block(block) for block in range(first_block, last_block + 1)]
        offset = first_block * BLOCK_ROWS
        window = slice(start - offset, stop - offset)
        dense, sparse, label, logits = (np.concatenate([part[index] for part in parts])[window] for index in range(4))
        if self.config.num_tasks == 1:
            label = label[:, 0]
        batch = Batch(torch.from_numpy(dense), torch.from_numpy(sparse), torch.from_numpy(label))
        return batch, torch.from_numpy(logits)

    def chunks(self, num_rows: int, chunk_rows: int, start: int = 0) -> Iterator[Batch]:
        """Rows [start, start + num_rows) in chunks of `chunk_rows`, never all in memory at once."""
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        for chunk_start in range(start, start + num_rows, chunk_rows):
            yield self.rows(chunk_start, min(chunk_start + chunk_rows, start + num_rows))

    # ----------------------------------------------------------------- teacher
    def _build_teacher(self, rng: np.random.Generator) -> None:
        config = self.config
        num_fields, dim, tasks = len(config.table_sizes) + 1, config.teacher_dim, config.num_tasks
        self._dense_mu = rng.uniform(0.0, 4.0, config.num_dense)
        self._dense_sigma = rng.uniform(0.5, 1.5, config.num_dense)
        # hash keys: (feature, component); components 0..K-1 embed, K is the first-order weight
        self._keys = rng.integers(0, 2**63, size=(len(config.table_sizes), dim + 1), dtype=np.uint64)
        head_ids = np.arange(_HEAD_IDS, dtype=np.int64)
        self._head_values = _teacher_values(self._keys[:, None, :], head_ids[None, :, None])  # (F, HEAD, K + 1)
        self._dense_projection = rng.standard_normal((config.num_dense, dim)) / np.sqrt(config.num_dense)

        def task_mix(shape: tuple[int, ...]) -> np.ndarray:
            shared = rng.standard_normal(shape)
            own = rng.standard_normal((tasks, *shape))
            weight = np.sqrt(config.task_correlation)
            return weight * shared + np.sqrt(1.0 - config.task_correlation) * own

        self._field_weights = 1.0 + 0.5 * task_mix((num_fields,))  # (T, F + 1)
        self._first_order_weights = 1.0 + 0.5 * task_mix((num_fields - 1,))  # (T, F)
        hidden_weight = rng.standard_normal((num_fields * dim, config.teacher_hidden)) / np.sqrt(num_fields * dim)
        self._hidden_weight = hidden_weight.astype(np.float32)
        self._hidden_bias = (0.5 * rng.standard_normal(config.teacher_hidden)).astype(np.float32)
        self._output_weight = task_mix((config.teacher_hidden,)).T  # (H, T)
        self._build_dense_deep(np.random.default_rng(np.random.SeedSequence([config.seed, 3])))
        self._term_mean = np.zeros((self._num_terms, tasks))
        self._term_std = np.ones((self._num_terms, tasks))
        self._dense_mean = np.zeros(config.num_dense)
        self._dense_std = np.ones(config.num_dense)
        self._bias = np.zeros(tasks)

    def _build_dense_deep(self, rng: np.random.Generator) -> None:
        """The optional fourth term's sine MLP, from its own generator (the first three terms' draws
        and so every existing config's rows are unchanged by it)."""
        config = self.config
        self._num_terms = 4 if config.dense_deep_scale > 0 else 3
        self._dense_deep_layers: list[tuple[np.ndarray, np.ndarray]] = []
        if self._num_terms == 3:
            return
        fan_in, second_moment = config.num_dense, 1.0  # standardised inputs, then sines (E sin^2 = 1/2)
        for _ in range(config.dense_deep_layers):
            weight = rng.standard_normal((fan_in, config.dense_deep_hidden))
            weight *= config.dense_deep_frequency / np.sqrt(fan_in * second_moment)
            bias = rng.uniform(-np.pi, np.pi, config.dense_deep_hidden)
            self._dense_deep_layers.append((weight.astype(np.float32), bias.astype(np.float32)))
            fan_in, second_moment = config.dense_deep_hidden, 0.5
        shared = rng.standard_normal(fan_in)
        own = rng.standard_normal((config.num_tasks, fan_in))
        weight = np.sqrt(config.task_correlation)
        self._dense_deep_output = (weight * shared + np.sqrt(1.0 - config.task_correlation) * own).T  # (H2, T)

    def _calibrate(self, rng: np.random.Generator) -> None:
        """Normalise each logit term to unit std and pick the bias that gives `target_ctr`."""
        dense, ids = self._sample_features(rng, _CALIBRATION_ROWS)
        self._dense_mean, self._dense_std = dense.mean(0), dense.std(0) + 1e-6
        terms = self._raw_terms(dense, ids)  # (C, N, T), C = 3 or 4 terms
        self._term_mean, self._term_std = terms.mean(1), terms.std(1) + 1e-12
        signal = self._signal(terms)
        noise = self.config.noise_std * rng.standard_normal(signal.shape)
        low, high = np.full(self.config.num_tasks, -30.0), np.full(self.config.num_tasks, 30.0)
        for _ in range(60):
            middle = (low + high) / 2
            too_many_clicks = _sigmoid(signal + noise + middle).mean(0) > self.config.target_ctr
            high = np.where(too_many_clicks, middle, high)
            low = np.where(too_many_clicks, low, middle)
        self._bias = (low + high) / 2

    def _sample_features(self, rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Dense log1p(counts) (N, num_dense) float32 and Zipf ids (N, F) int64, in a fixed draw order."""
        config = self.config
        ids = _zipf_ids(rng.random((rows, len(config.table_sizes))), self._table_sizes, config.zipf_exponent)
        is_zero = rng.random((rows, config.num_dense)) < config.dense_zero_fraction
        log_counts = self._dense_mu + self._dense_sigma * rng.standard_normal((rows, config.num_dense))
        counts = np.where(is_zero, 0.0, np.floor(np.exp(np.minimum(log_counts, 40.0))))
        return np.log1p(counts).astype(np.float32), ids

    def _raw_terms(self, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """First-order, interaction, deep (and dense-deep) terms before normalisation, (C, N, T) float64."""
        dim = self.config.teacher_dim
        values = self._per_id_values(ids)
        embeddings, first_order = values[:, :, :dim], values[:, :, dim]
        standardized = (dense.astype(np.float64) - self._dense_mean) / self._dense_std
        dense_vector = 1.5 * np.tanh(standardized @ self._dense_projection)  # (N, K)
        fields = np.concatenate([embeddings, dense_vector[:, None, :]], axis=1)  # (N, F + 1, K)
        weighted_sum = np.einsum("tp,npk->ntk", self._field_weights, fields)
        squared_norms = np.einsum("tp,np->nt", self._field_weights**2, (fields**2).sum(-1))
        interaction = 0.5 * ((weighted_sum**2).sum(-1) - squared_norms)  # sum over pairs p < q
        # float32 for the one large matmul: it dominates generation time, and BLAS on a fixed
        # block shape is still deterministic
        flat_fields = fields.reshape(len(ids), -1).astype(np.float32)
        hidden = np.maximum(flat_fields @ self._hidden_weight + self._hidden_bias, 0.0)
        deep = hidden.astype(np.float64) @ self._output_weight
        first = first_order @ self._first_order_weights.T
        if self._num_terms == 3:
            return np.stack([first, interaction, deep])
        hidden = standardized.astype(np.float32)
        for weight, bias in self._dense_deep_layers:
            hidden = np.sin(hidden @ weight + bias)
        dense_deep = hidden.astype(np.float64) @ self._dense_deep_output
        return np.stack([first, interaction, deep, dense_deep])

    def _per_id_values(self, ids: np.ndarray) -> np.ndarray:
        """Teacher values of every id, (N, F, K + 1): cached for head ids, hashed for the tail."""
        feature_index = np.arange(ids.shape[1])[None, :]
        values = self._head_values[feature_index, np.minimum(ids, _HEAD_IDS - 1)]
        tail_rows, tail_features = np.nonzero(ids >= _HEAD_IDS)
        if len(tail_rows):
            tail_ids = ids[tail_rows, tail_features]
            values[tail_rows, tail_features] = _teacher_values(self._keys[tail_features], tail_ids[:, None])
        return values

    def _signal(self, terms: np.ndarray) -> np.ndarray:
        config = self.config
        scales = np.array([config.first_order_scale, config.interaction_scale, config.deep_scale,
                           config.dense_deep_scale][:self._num_terms])
        normalized = (terms - self._term_mean[:, None, :]) / self._term_std[:, None, :]
        return np.einsum("c,cnt->nt", scales, normalized)

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Block `block`: dense, sparse, label (N, T) float32 and clean logits (N, T) float64."""
        rng = np.random.default_rng(np.random.SeedSequence([self.config.seed, 1, block]))
        dense, ids = self._sample_features(rng, BLOCK_ROWS)
        logits = self._signal(self._raw_terms(dense, ids)) + self._bias
        noise = self.config.noise_std * rng.standard_normal(logits.shape)
        clicks = rng.random(logits.shape) < _sigmoid(logits + noise)
        return dense, ids, clicks.astype(np.float32), logits


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * values))

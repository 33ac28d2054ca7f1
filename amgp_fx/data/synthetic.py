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
So row i depends only on (config, i), whatever chunk size the caller reads with. The matrix
products keep fixed shapes for the same reason (BLAS rounds by shape); the clean logits' last bits
still depend on the BLAS build and its thread count (OpenBLAS's default: the core count), which
could flip a label only where its click uniform falls within that rounding.

Drift (`SyntheticConfig.drift`, `new_id_share`, `drift_seed`; `SyntheticConfig.drifted`): the
recurring-training stage's data. Every teacher weight W becomes sqrt(1-d^2) W + d W' with W' from
generators of their own, and per-id vectors mix the same way through a second set of hash keys; a
share of id lookups goes to new ids from the tables' tails. Block generators are untouched, so a
drifted row keeps the dense features, Zipf draw, noise and click uniform of the undrifted row with
the same index (paired rows); read a row range disjoint from the offline run's for fresh features.
A drifted teacher keeps the undrifted one's term normalisation and re-picks only its bias.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch

from ..config import SyntheticConfig
from .batch import Batch, DatasetSpec

__all__ = ["BLOCK_ROWS", "SyntheticCriteo", "splitmix64"]

BLOCK_ROWS = 4096
_CALIBRATION_ROWS = 16384
_HEAD_IDS = 2048  # teacher values of ids below this are cached (Zipf: most lookups hit them)
_SLICE_ROWS = 256  # rows of per-row work at a time: 256 x 27 x 32 float64 field vectors are ~1.8 MB
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SQRT3_ULP = float(np.sqrt(3.0)) * 2.0**-52  # sqrt(3) times the spacing of doubles in [1, 2)


def splitmix64(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a fast, well-mixed uint64 -> uint64 hash (wraps modulo 2**64).

    Example:
        >>> int(splitmix64(np.array([0], dtype=np.uint64))[0]) == 0xE220A8397B1DCDAF
        True
    """
    mixed = np.asarray(values).astype(np.uint64)
    mixed += _GOLDEN
    return _finalise_inplace(mixed)


def _finalise_inplace(mixed: np.ndarray) -> np.ndarray:
    """splitmix64's mixing steps on `mixed` (uint64, golden ratio already added), in place: the
    teacher hashes millions of values per block, and a fresh array for each step costs more than
    the arithmetic."""
    scratch = np.empty_like(mixed)
    for shift, multiplier in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        np.right_shift(mixed, np.uint64(shift), out=scratch)
        mixed ^= scratch
        mixed *= np.uint64(multiplier)
    np.right_shift(mixed, np.uint64(31), out=scratch)
    mixed ^= scratch
    return mixed


def _teacher_values(keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per-(key, id) teacher values, uniform on [-sqrt(3), sqrt(3)] (unit variance), float64,
    broadcasting `keys` against `ids`.

    The value is sqrt(3) * (2u - 1) with u = (hash >> 11) * 2**-53. Since 2u - 1 equals
    ((hash >> 11) - 2**52) * 2**-52 exactly, one integer subtraction, one conversion and one
    multiplication by sqrt(3) * 2**-52 (exact: a power-of-two scaling) give bitwise the same doubles.
    """
    mixed = np.bitwise_xor(keys, ids.astype(np.uint64) * _GOLDEN)
    mixed += _GOLDEN
    _finalise_inplace(mixed)
    mixed >>= np.uint64(11)
    centred = mixed.view(np.int64)
    centred -= np.int64(2**52)
    values = centred.astype(np.float64)
    values *= _SQRT3_ULP
    return values


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
        self._new_id_pool = np.maximum(self._table_sizes // 2, 1)  # where new ids come from (see _with_new_ids)
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
        config = self.config
        tasks = config.num_tasks
        dense = np.empty((stop - start, config.num_dense), dtype=np.float32)
        sparse = np.empty((stop - start, len(config.table_sizes)), dtype=np.int64)
        label = np.empty((stop - start, tasks), dtype=np.float32)
        logits = np.empty((stop - start, tasks), dtype=np.float64)
        for block in range(start // BLOCK_ROWS, (stop + BLOCK_ROWS - 1) // BLOCK_ROWS):
            low, high = max(start, block * BLOCK_ROWS), min(stop, (block + 1) * BLOCK_ROWS)
            rows = slice(low - block * BLOCK_ROWS, high - block * BLOCK_ROWS)
            for out, part in zip((dense, sparse, label, logits), self._block(block)):
                out[low - start:high - start] = part[rows]
        if tasks == 1:
            label = label[:, 0]
        batch = Batch(torch.from_numpy(dense), torch.from_numpy(sparse), torch.from_numpy(label))
        return batch, torch.from_numpy(logits)

    def clean_logits(self, batch: Batch) -> torch.Tensor:
        """This teacher's noise-free logits (N, T) float64 for any rows of its spec, e.g. the old
        teacher's score on a drifted config's rows (how much the shift costs a model that stopped
        learning). Equal to `rows_with_logits`' logits on its own rows up to float32 rounding.

        Raises:
            ValueError: when the batch does not fit this generator's spec.
        """
        batch.validate(self.spec)
        dense, ids = batch.dense.numpy(), batch.sparse.numpy().astype(np.int64)
        return torch.from_numpy(self._signal(self._raw_terms(dense, ids)) + self._bias)

    def chunks(self, num_rows: int, chunk_rows: int, start: int = 0) -> Iterator[Batch]:
        """Rows [start, start + num_rows) in chunks of `chunk_rows`, never all in memory at once."""
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        for chunk_start in range(start, start + num_rows, chunk_rows):
            yield self.rows(chunk_start, min(chunk_start + chunk_rows, start + num_rows))

    # ----------------------------------------------------------------- teacher
    def _build_teacher(self, rng: np.random.Generator) -> None:
        config = self.config
        tasks = config.num_tasks
        self._dense_mu = rng.uniform(0.0, 4.0, config.num_dense)
        self._dense_sigma = rng.uniform(0.5, 1.5, config.num_dense)
        weights = self._draw_weights(rng, np.random.default_rng(np.random.SeedSequence([config.seed, 3])))
        self._drift_keep = float(np.sqrt(1.0 - config.drift**2))
        if config.drift > 0:
            # W' from generators of their own: W, the features and the rows are the undrifted ones
            other_rng = np.random.default_rng(np.random.SeedSequence([config.seed, 6, config.drift_seed]))
            for low, high in ((0.0, 4.0), (0.5, 1.5)):  # skip the features' draws: W' has W's draw layout
                other_rng.uniform(low, high, config.num_dense)
            other = self._draw_weights(
                other_rng, np.random.default_rng(np.random.SeedSequence([config.seed, 7, config.drift_seed]))
            )
            keep, drift = self._drift_keep, config.drift
            for name, value in weights.items():
                if name == "keys":
                    continue
                if name == "dense_deep_layers":
                    weights[name] = [
                        (keep * weight + drift * other_weight, keep * bias + drift * other_bias)
                        for (weight, bias), (other_weight, other_bias) in zip(value, other[name])
                    ]
                elif name in ("field_weights", "first_order_weights"):  # mean 1 stays, the random part drifts
                    weights[name] = 1.0 + keep * (value - 1.0) + drift * (other[name] - 1.0)
                else:
                    weights[name] = keep * value + drift * other[name]
            self._drift_keys = other["keys"]
        # hash keys: (feature, component); components 0..K-1 embed, K is the first-order weight
        self._keys = weights["keys"]
        head_ids = np.arange(_HEAD_IDS, dtype=np.int64)
        head_values = self._hashed_values(np.arange(len(config.table_sizes))[:, None], head_ids[None, :])
        # flat (feature * _HEAD_IDS + id) tables: one `take` gathers a whole block's vectors
        self._head_embeddings = np.ascontiguousarray(head_values[..., :-1]).reshape(-1, config.teacher_dim)
        self._head_first_order = np.ascontiguousarray(head_values[..., -1]).reshape(-1)
        self._head_offsets = np.arange(len(config.table_sizes), dtype=np.int64) * _HEAD_IDS
        self._dense_projection = weights["dense_projection"]
        self._field_weights = weights["field_weights"]  # (T, F + 1)
        self._first_order_weights = weights["first_order_weights"]  # (T, F)
        self._hidden_weight = weights["hidden_weight"].astype(np.float32)
        self._hidden_bias = weights["hidden_bias"].astype(np.float32)
        self._output_weight = weights["output_weight"]  # (H, T)
        self._num_terms = 4 if config.dense_deep_scale > 0 else 3
        self._dense_deep_layers = [(w.astype(np.float32), b.astype(np.float32)) for w, b in weights["dense_deep_layers"]]
        self._dense_deep_output = weights.get("dense_deep_output")  # (H2, T)
        self._term_mean = np.zeros((self._num_terms, tasks))
        self._term_std = np.ones((self._num_terms, tasks))
        self._dense_mean = np.zeros(config.num_dense)
        self._dense_std = np.ones(config.num_dense)
        self._bias = np.zeros(tasks)

    def _draw_weights(self, rng: np.random.Generator, deep_rng: np.random.Generator) -> dict:
        """One teacher's weights in float64, in the fixed draw order that today's rows depend on."""
        config = self.config
        num_fields, dim, tasks = len(config.table_sizes) + 1, config.teacher_dim, config.num_tasks
        weights: dict = {}
        weights["keys"] = rng.integers(0, 2**63, size=(len(config.table_sizes), dim + 1), dtype=np.uint64)
        weights["dense_projection"] = rng.standard_normal((config.num_dense, dim)) / np.sqrt(config.num_dense)

        def task_mix(shape: tuple[int, ...]) -> np.ndarray:
            shared = rng.standard_normal(shape)
            own = rng.standard_normal((tasks, *shape))
            weight = np.sqrt(config.task_correlation)
            return weight * shared + np.sqrt(1.0 - config.task_correlation) * own

        weights["field_weights"] = 1.0 + 0.5 * task_mix((num_fields,))
        weights["first_order_weights"] = 1.0 + 0.5 * task_mix((num_fields - 1,))
        weights["hidden_weight"] = rng.standard_normal((num_fields * dim, config.teacher_hidden)) / np.sqrt(num_fields * dim)
        weights["hidden_bias"] = 0.5 * rng.standard_normal(config.teacher_hidden)
        weights["output_weight"] = task_mix((config.teacher_hidden,)).T
        weights.update(self._draw_dense_deep(deep_rng))
        return weights

    def _draw_dense_deep(self, rng: np.random.Generator) -> dict:
        """The optional fourth term's sine MLP, from its own generator (the first three terms' draws
        and so every existing config's rows are unchanged by it)."""
        config = self.config
        if config.dense_deep_scale <= 0:
            return {"dense_deep_layers": []}
        layers = []
        fan_in, second_moment = config.num_dense, 1.0  # standardised inputs, then sines (E sin^2 = 1/2)
        for _ in range(config.dense_deep_layers):
            weight = rng.standard_normal((fan_in, config.dense_deep_hidden))
            weight *= config.dense_deep_frequency / np.sqrt(fan_in * second_moment)
            bias = rng.uniform(-np.pi, np.pi, config.dense_deep_hidden)
            layers.append((weight, bias))
            fan_in, second_moment = config.dense_deep_hidden, 0.5
        shared = rng.standard_normal(fan_in)
        own = rng.standard_normal((config.num_tasks, fan_in))
        weight = np.sqrt(config.task_correlation)
        output = (weight * shared + np.sqrt(1.0 - config.task_correlation) * own).T
        return {"dense_deep_layers": layers, "dense_deep_output": output}

    def _hashed_values(self, features: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Teacher values of (feature, id) pairs (broadcast), (..., K + 1): sqrt(1-d^2) v + d v' under drift."""
        values = _teacher_values(self._keys[features], ids[..., None])
        if self.config.drift > 0:  # in place, in the order sqrt(1-d^2) v + d v' rounds in
            values *= self._drift_keep
            drifted = _teacher_values(self._drift_keys[features], ids[..., None])
            drifted *= self.config.drift
            values += drifted
        return values

    def _calibrate(self, rng: np.random.Generator) -> None:
        """Normalise each logit term to unit std and pick the bias that gives `target_ctr`.

        A drifted config keeps the undrifted teacher's normalisation (W' has W's scale, so the
        terms keep theirs in expectation; new ids alone then leave the teacher's function as it
        was) and re-picks only the bias, so the click rate stays `target_ctr`.
        """
        config = self.config
        dense, ids = self._sample_features(rng, _CALIBRATION_ROWS)
        ids = self._with_new_ids(ids, np.random.SeedSequence([config.seed, 5, config.drift_seed]))
        if config.drift > 0 or config.new_id_share > 0:
            undrifted = SyntheticCriteo(dataclasses.replace(config, drift=0.0, new_id_share=0.0, drift_seed=0))
            self._dense_mean, self._dense_std = undrifted._dense_mean, undrifted._dense_std
            self._term_mean, self._term_std = undrifted._term_mean, undrifted._term_std
            terms = self._raw_terms(dense, ids)
        else:
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

    def _with_new_ids(self, ids: np.ndarray, seed: np.random.SeedSequence) -> np.ndarray:
        """Send a share `new_id_share` of lookups (each one independently) to new ids.

        New ids have a Zipf law of their own over the last half of each table counted from its end
        (new rank 0 is id size - 1), ids the offline Zipf law almost never draws in large tables; so
        a few new ids become popular, as new items do in production. Draws come from a generator of
        their own, so the rest of the row (dense, Zipf draw, noise, click uniform) stays paired with
        the undrifted row of the same index.
        """
        share = self.config.new_id_share
        if share <= 0:
            return ids
        rng = np.random.default_rng(seed)
        is_new = rng.random(ids.shape) < share
        new_rank = _zipf_ids(rng.random(ids.shape), self._new_id_pool, self.config.zipf_exponent)
        return np.where(is_new, self._table_sizes - 1 - new_rank, ids)

    def _raw_terms(self, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """First-order, interaction, deep (and dense-deep) terms before normalisation, (C, N, T) float64.

        Every matrix product keeps the operand shapes, dtypes and memory layouts it always had: BLAS
        rounds differently for other shapes (even for a subset of the rows), and rows must not change.
        """
        standardized = (dense.astype(np.float64) - self._dense_mean) / self._dense_std
        dense_vector = 1.5 * np.tanh(standardized @ self._dense_projection)  # (N, K)
        flat_fields, first_order, interaction = self._field_terms(ids, dense_vector)
        # float32 for the one large matmul: it dominates generation time, and BLAS on a fixed
        # block shape is still deterministic
        hidden = flat_fields @ self._hidden_weight
        hidden += self._hidden_bias
        np.maximum(hidden, 0.0, out=hidden)
        deep = hidden.astype(np.float64) @ self._output_weight
        first = first_order @ self._first_order_weights.T
        if self._num_terms == 3:
            return np.stack([first, interaction, deep])
        hidden = standardized.astype(np.float32)
        for weight, bias in self._dense_deep_layers:
            hidden = hidden @ weight
            hidden += bias
            np.sin(hidden, out=hidden)
        dense_deep = hidden.astype(np.float64) @ self._dense_deep_output
        return np.stack([first, interaction, deep, dense_deep])

    def _field_terms(self, ids: np.ndarray, dense_vector: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The MLP's input (N, (F + 1) K) float32 (per-id vectors, then the dense vector), the ids'
        first-order weights (N, F) and the interaction term (N, T).

        The (F + 1, K) field vectors are built `_SLICE_ROWS` rows at a time, in one buffer that
        stays in cache; all this is per-row work, so slicing leaves every bit as it was.
        """
        rows, num_fields, dim = len(ids), ids.shape[1] + 1, self.config.teacher_dim
        flat_fields = np.empty((rows, num_fields * dim), dtype=np.float32)
        # a strided view: numpy then sums first_order @ weights in its own loop, not BLAS, as it always did
        first_order = np.empty((rows, num_fields - 1, 2))[..., 0]
        interaction = np.empty((rows, self.config.num_tasks))
        buffer = np.empty((min(rows, _SLICE_ROWS), num_fields, dim))
        for low in range(0, rows, _SLICE_ROWS):
            part = slice(low, min(low + _SLICE_ROWS, rows))
            fields = buffer[:part.stop - low]
            self._id_fields(ids[part], fields, first_order[part])
            fields[:, -1] = dense_vector[part]
            interaction[part] = self._interaction(fields)
            flat_fields[part] = fields.reshape(len(fields), -1)  # the float32 rounding of astype
        return flat_fields, first_order, interaction

    def _interaction(self, fields: np.ndarray) -> np.ndarray:
        """Sum over field pairs p < q of weighted dot products, (N, T): 0.5 (|sum w v|^2 - sum w^2 |v|^2)."""
        weighted_sum = np.einsum("tp,npk->ntk", self._field_weights, fields)
        squared_norms = np.einsum("tp,np->nt", self._field_weights**2, np.square(fields).sum(-1))
        return 0.5 * (np.square(weighted_sum).sum(-1) - squared_norms)

    def _id_fields(self, ids: np.ndarray, fields: np.ndarray, first_order: np.ndarray) -> None:
        """Teacher values of every id, into `fields` (N, F + 1, K; the last slot, the dense vector's,
        is left as junk) and `first_order` (N, F): cached for head ids, hashed for the tail."""
        index = np.zeros((len(ids), ids.shape[1] + 1), dtype=np.int64)
        np.minimum(ids, _HEAD_IDS - 1, out=index[:, :-1])
        index[:, :-1] += self._head_offsets
        self._head_embeddings.take(index, axis=0, out=fields, mode="clip")  # "clip": no buffered copy
        first_order[...] = self._head_first_order.take(index[:, :-1])
        tail_rows, tail_features = np.nonzero(ids >= _HEAD_IDS)
        if len(tail_rows):
            values = self._hashed_values(tail_features, ids[tail_rows, tail_features])
            fields[tail_rows, tail_features] = values[:, :-1]
            first_order[tail_rows, tail_features] = values[:, -1]

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
        ids = self._with_new_ids(ids, np.random.SeedSequence([self.config.seed, 4, self.config.drift_seed, block]))
        logits = self._signal(self._raw_terms(dense, ids)) + self._bias
        noise = self.config.noise_std * rng.standard_normal(logits.shape)
        clicks = rng.random(logits.shape) < _sigmoid(logits + noise)
        return dense, ids, clicks.astype(np.float32), logits


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * values))

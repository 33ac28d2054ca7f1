"""Configuration records for training and synthetic data: frozen, validated, JSON round-trippable.

Configs are saved as JSON with a `type` and a `version` field and loaded through an allowlist of
classes (`config_from_dict`), never with pickle, so a config file cannot run code.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "CONFIG_VERSION",
    "OptimizerName",
    "SparseOptimizerName",
    "TrainConfig",
    "SyntheticConfig",
    "CRITEO_CARDINALITIES",
    "capped_criteo_table_sizes",
    "config_from_dict",
]

CONFIG_VERSION = 1

# Raw Criteo-Kaggle cardinalities of the 26 categorical columns (as in DLRM's preprocessing).
CRITEO_CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip


def capped_criteo_table_sizes(row_cap: int = 100_000) -> tuple[int, ...]:
    """Criteo-Kaggle table sizes capped at `row_cap` rows (DLRM's `--max-ind-range`).

    Example:
        >>> len(capped_criteo_table_sizes()), max(capped_criteo_table_sizes(1000))
        (26, 1000)
    """
    return tuple(min(rows, row_cap) for rows in CRITEO_CARDINALITIES)


class OptimizerName(str, enum.Enum):
    """Dense optimizer choice; embedding tables with sparse gradients get its sparse counterpart."""

    SGD = "sgd"
    ADAM = "adam"
    ADAMW = "adamw"
    ADAGRAD = "adagrad"


class SparseOptimizerName(str, enum.Enum):
    """Optimizer of embedding tables that produce sparse gradients (`nn.Embedding(sparse=True)`).

    rowwise_adagrad is what production recommenders use (one accumulator per row, see
    `amgp_fx.optim`); sparse_adam keeps two full-size moments and is the slowest on a GPU.
    """

    SGD = "sgd"
    ADAGRAD = "adagrad"
    SPARSE_ADAM = "sparse_adam"
    ROWWISE_ADAGRAD = "rowwise_adagrad"


class _ConfigMixin:
    """`to_dict`/`from_dict` for flat frozen dataclasses whose fields are JSON scalars or tuples."""

    _TUPLE_FIELDS: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with `type` and `version` keys."""
        values: dict[str, Any] = {"type": type(self).__name__, "version": CONFIG_VERSION}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            values[field.name] = value
        return values

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Rebuild from `to_dict` output.

        Raises:
            ValueError: for a wrong `type`, an unsupported `version` or unknown keys.
        """
        values = dict(data)
        type_name = values.pop("type", cls.__name__)
        if type_name != cls.__name__:
            raise ValueError(f"expected a {cls.__name__} dict, got type {type_name!r}")
        version = values.pop("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ValueError(
                f"{cls.__name__} version {version!r} is not supported (this code reads version {CONFIG_VERSION})"
            )
        known = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; known keys are {sorted(known)}")
        for name in cls._TUPLE_FIELDS:
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        return cls(**values)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class TrainConfig(_ConfigMixin):
    """How `amgp_fx.train.train` runs.

    Args:
        optimizer: "sgd", "adam", "adamw" or "adagrad" for dense parameters; embedding tables that
            produce sparse gradients get SGD, SparseAdam (adam/adamw) or Adagrad.
        lr: learning rate of the dense optimizer.
        sparse_optimizer: optimizer of sparse-gradient embedding tables ("sgd", "adagrad",
            "sparse_adam", "rowwise_adagrad"); None picks `optimizer`'s sparse counterpart.
        sparse_lr: learning rate of the sparse optimizer; None uses `lr`.
        weight_decay: dense weight decay (sparse optimizers cannot apply it; it is not used there).
        momentum: SGD momentum (ignored by the other optimizers).
        lr_schedule: "constant", "cosine" or "linear" (`amgp_fx.lr_schedule`): after the warm-up,
            every optimizer's rate (dense and sparse) decays to ``lr_final_ratio`` of its own rate.
        lr_warmup_steps: steps of linear warm-up from lr / lr_warmup_steps to lr (0: none).
        lr_final_ratio: the decayed rate at the end of the run, as a share of the base rate.
        batch_size: training rows per step.
        eval_batch_size: rows per evaluation forward; None uses `batch_size`.
        steps: number of optimizer steps; at most one of `steps` and `epochs` is given.
        epochs: number of passes over the training data; with neither given, 1.
        eval_every: evaluate every N steps (0: only at the end).
        log_every: write a training-loss record every N steps.
        device: "cpu", "cuda" or "cuda:N".
        seed: seeds parameters' RNG consumers (dropout), and the data order with the epoch number.
        shuffle: shuffle training rows each epoch (the order depends only on seed and epoch).
        data_on_device: copy in-memory training data to the device once instead of per batch.
        metrics_path: JSON-lines file for training and evaluation records (None: no file); a fresh
            run replaces it, a resumed run keeps the records up to the checkpoint's step.
        checkpoint_dir: directory for checkpoints (None: no checkpoints).
        checkpoint_every: save a checkpoint every N steps (0: only at the end, when a dir is set).
        keep_checkpoints: how many most recent checkpoints to keep.
        resume: continue from the latest checkpoint in `checkpoint_dir` when there is one.

    Raises:
        ValueError: for an out-of-range or inconsistent value, with the field named.

    Example:
        >>> config = TrainConfig(optimizer="adam", lr=1e-3, steps=100)
        >>> TrainConfig.from_dict(config.to_dict()) == config
        True
    """

    optimizer: OptimizerName = OptimizerName.ADAM
    lr: float = 1e-3
    sparse_lr: float | None = None
    sparse_optimizer: SparseOptimizerName | None = None
    weight_decay: float = 0.0
    momentum: float = 0.0
    lr_schedule: str = "constant"
    lr_warmup_steps: int = 0
    lr_final_ratio: float = 0.0
    batch_size: int = 2048
    eval_batch_size: int | None = None
    steps: int | None = None
    epochs: int | None = None
    eval_every: int = 0
    log_every: int = 50
    device: str = "cpu"
    seed: int = 0
    shuffle: bool = True
    data_on_device: bool = False
    metrics_path: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    resume: bool = False

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "optimizer", OptimizerName(self.optimizer))
        except ValueError:
            choices = [name.value for name in OptimizerName]
            raise ValueError(f"TrainConfig.optimizer must be one of {choices}, got {self.optimizer!r}") from None
        if self.sparse_optimizer is not None:
            try:
                object.__setattr__(self, "sparse_optimizer", SparseOptimizerName(self.sparse_optimizer))
            except ValueError:
                choices = [name.value for name in SparseOptimizerName]
                raise ValueError(f"TrainConfig.sparse_optimizer must be one of {choices} or None, "
                                 f"got {self.sparse_optimizer!r}") from None
        _require(self.steps is None or self.epochs is None,
                 f"TrainConfig takes steps or epochs, not both; got steps={self.steps!r}, epochs={self.epochs!r}")
        if self.steps is None and self.epochs is None:
            object.__setattr__(self, "epochs", 1)
        for name in ("steps", "epochs"):
            value = getattr(self, name)
            _require(value is None or (_is_int(value) and value > 0),
                     f"TrainConfig.{name} must be a positive integer or None, got {value!r}")
        _require(_is_number(self.lr) and self.lr > 0, f"TrainConfig.lr must be a finite number > 0, got {self.lr!r}")
        _require(self.sparse_lr is None or (_is_number(self.sparse_lr) and self.sparse_lr > 0),
                 f"TrainConfig.sparse_lr must be a finite number > 0 or None, got {self.sparse_lr!r}")
        _require(_is_number(self.weight_decay) and self.weight_decay >= 0,
                 f"TrainConfig.weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        _require(_is_number(self.momentum) and 0 <= self.momentum < 1,
                 f"TrainConfig.momentum must be in [0, 1), got {self.momentum!r}")
        _require(self.lr_schedule in ("constant", "cosine", "linear"),
                 f"TrainConfig.lr_schedule must be 'constant', 'cosine' or 'linear', got {self.lr_schedule!r}")
        _require(_is_int(self.lr_warmup_steps) and self.lr_warmup_steps >= 0,
                 f"TrainConfig.lr_warmup_steps must be an integer >= 0, got {self.lr_warmup_steps!r}")
        _require(self.steps is None or self.lr_warmup_steps <= self.steps,
                 f"TrainConfig.lr_warmup_steps ({self.lr_warmup_steps}) is longer than the run ({self.steps} steps)")
        _require(_is_number(self.lr_final_ratio) and 0 <= self.lr_final_ratio <= 1,
                 f"TrainConfig.lr_final_ratio must be in [0, 1], got {self.lr_final_ratio!r}")
        for name in ("batch_size", "keep_checkpoints"):
            value = getattr(self, name)
            _require(_is_int(value) and value > 0, f"TrainConfig.{name} must be a positive integer, got {value!r}")
        _require(self.eval_batch_size is None or (_is_int(self.eval_batch_size) and self.eval_batch_size > 0),
                 f"TrainConfig.eval_batch_size must be a positive integer or None, got {self.eval_batch_size!r}")
        for name in ("eval_every", "log_every", "checkpoint_every"):
            value = getattr(self, name)
            _require(_is_int(value) and value >= 0, f"TrainConfig.{name} must be an integer >= 0, got {value!r}")
        _require(_is_int(self.seed) and self.seed >= 0, f"TrainConfig.seed must be an integer >= 0, got {self.seed!r}")
        _require(isinstance(self.device, str) and (self.device == "cpu" or self.device.split(":")[0] == "cuda"),
                 f"TrainConfig.device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        _require(not self.resume or self.checkpoint_dir is not None,
                 "TrainConfig.resume=True needs checkpoint_dir to resume from")
        for name in ("shuffle", "data_on_device", "resume"):
            _require(isinstance(getattr(self, name), bool), f"TrainConfig.{name} must be a bool")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig(_ConfigMixin):
    """Criteo-like synthetic click data with labels from a hidden teacher network.

    Dense features are log-normal counts (some zero) passed through log1p, as DLRM does. Category
    ids follow a Zipf law per feature (id 0 most frequent). The teacher's click logit is
    `bias + first_order_scale * (sum of per-id weights) + interaction_scale * (pairwise dot products
    of per-id K-dim embeddings and a dense projection) + deep_scale * MLP(all teacher vectors)
    + dense_deep_scale * sine-MLP(dense features) + noise_std * N(0, 1)`; each term is normalised
    to unit standard deviation first, so the scales are comparable. Noise lowers the Bayes AUC; a
    wide teacher (`teacher_dim`, `teacher_hidden`) and a strong `deep_scale`/`interaction_scale`
    make model capacity matter in principle, but with many-row tables trained for one pass the
    id terms are capped by embedding training; `dense_deep_scale` adds signal that MLP width decides.

    Args:
        name: dataset name carried into the `DatasetSpec`.
        num_dense: number of dense features.
        table_sizes: rows of each categorical feature (ids are in [0, size)).
        num_tasks: label columns T (1: labels (N,), otherwise (N, T)).
        zipf_exponent: id frequency ~ (rank + 1) ** -zipf_exponent.
        dense_zero_fraction: probability that a dense count is 0.
        teacher_dim: K, the teacher's embedding width.
        teacher_hidden: H, the teacher MLP's hidden width.
        first_order_scale, interaction_scale, deep_scale: weights of the logit terms.
        noise_std: standard deviation of Gaussian logit noise the model cannot predict.
        task_correlation: in [0, 1]; how much the tasks share their term weights.
        target_ctr: the bias is set so that the mean click rate is about this.
        seed: everything (teacher and rows) is a function of the seed and the row index.
        dense_deep_scale: weight of a fourth term, a sine MLP over the standardised dense features
            only (0: no such term, and rows are exactly those of a config without these fields).
            Every row informs it (no id has to be learned first), so it is the part of the signal
            that MLP width, not embedding training, decides.
        dense_deep_hidden, dense_deep_layers: that MLP's hidden width and number of hidden layers.
        dense_deep_frequency: std of every sine's argument (its bias aside); higher means a more
            wiggly function that needs more hidden units to fit.
        drift: in [0, 1]; a shifted teacher for the recurring-training stage (see `drifted`). Every
            teacher weight W (per-id vectors, dense projection, MLP weights and biases, sine MLP,
            the random part of the field weights) becomes sqrt(1 - drift**2) * W + drift * W', W'
            an independent draw of the same shape and scale, so each term keeps its scale in
            expectation and the undrifted teacher's term normalisation is kept (only the bias is
            re-picked for `target_ctr`). The features' law is unchanged; W is the teacher of `seed`.
            Linear terms correlate with the old ones by about sqrt(1 - drift**2), products of two
            drifted factors by about 1 - drift**2 and the MLPs less: the whole clean logit's
            correlation is about 1 - drift**2 without `dense_deep_scale`, far lower with it (sine
            MLPs decorrelate fast; docs/data.md lists measured values).
        new_id_share: in [0, 1]; share of id lookups (each independently) that go to new ids, which
            follow a Zipf law of their own over the last half of each table counted from its end:
            ids the offline Zipf law almost never draws in large tables (not in tiny ones), so new
            popular ids appear while ids stay within `table_sizes`.
        drift_seed: seeds W' and which lookups get new ids. drift=0 and new_id_share=0 ignore it
            and give exactly the rows of a config without these three fields.
    """

    name: str = "synthetic_criteo"
    num_dense: int = 13
    table_sizes: tuple[int, ...] = capped_criteo_table_sizes()
    num_tasks: int = 1
    zipf_exponent: float = 1.05
    dense_zero_fraction: float = 0.2
    teacher_dim: int = 8
    teacher_hidden: int = 32
    first_order_scale: float = 0.7
    interaction_scale: float = 0.8
    deep_scale: float = 0.6
    noise_std: float = 0.5
    task_correlation: float = 0.5
    target_ctr: float = 0.25
    seed: int = 0
    dense_deep_scale: float = 0.0
    dense_deep_hidden: int = 256
    dense_deep_layers: int = 2
    dense_deep_frequency: float = 1.0
    drift: float = 0.0
    new_id_share: float = 0.0
    drift_seed: int = 0

    _TUPLE_FIELDS: ClassVar[tuple[str, ...]] = ("table_sizes",)
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        # the reference models' "small" presets use num_dense=4 and these four tables
        "small": dict(name="synthetic_small", num_dense=4, table_sizes=(20, 50, 100, 30)),
        # a wide teacher dominated by non-linear interactions: a narrow model underfits it
        "capacity": dict(name="synthetic_capacity", teacher_dim=32, teacher_hidden=256,
                         first_order_scale=0.4, interaction_scale=1.0, deep_scale=1.4, noise_std=0.3),
        # "capacity" plus a wiggly function of the dense features that every row informs (a 2 x 256
        # sine MLP): the share of the signal that embedding training does not cap and MLP width
        # learns faster. On the H200 (26 x 200k tables, 4M rows, Adam lr 1e-4) the industrial DLRM
        # beat its 0.74-width copy by 0.0041 AUC and DCN-v2 by 0.0031 (0.0014 and 0.0000 with
        # "capacity"); Bayes AUC 0.90. See tools/probe_capacity.py and docs/data.md.
        "wide_teacher": dict(name="synthetic_wide_teacher", teacher_dim=32, teacher_hidden=256,
                             first_order_scale=0.4, interaction_scale=1.0, deep_scale=1.4, noise_std=0.6,
                             dense_deep_scale=2.0, dense_deep_hidden=256, dense_deep_layers=2,
                             dense_deep_frequency=1.4),
    }

    @classmethod
    def from_preset(cls, preset: str = "default", **overrides: Any) -> SyntheticConfig:
        """A named preset ("default", "small", "capacity", "wide_teacher") with field overrides.

        Raises:
            ValueError: for an unknown preset name.
        """
        if preset not in cls.PRESETS:
            raise ValueError(f"unknown synthetic preset {preset!r}; choose from {sorted(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[preset], **overrides})

    def drifted(self, drift: float, new_id_share: float = 0.0, seed: int = 1) -> SyntheticConfig:
        """This config with a shifted teacher and new ids (the recurring-training stage's data).

        The spec (name, tables, dense features, tasks) stays, so a model trained on `self` keeps
        training on the result; drift is always relative to this config's undrifted teacher.

        Example:
            >>> shifted = SyntheticConfig.from_preset("small").drifted(0.3, new_id_share=0.1)
            >>> shifted.drift, shifted.new_id_share, shifted.drift_seed, shifted.table_sizes
            (0.3, 0.1, 1, (20, 50, 100, 30))
        """
        return dataclasses.replace(self, drift=drift, new_id_share=new_id_share, drift_seed=seed)

    def __post_init__(self) -> None:
        object.__setattr__(self, "table_sizes", tuple(self.table_sizes))
        _require(isinstance(self.name, str) and bool(self.name), "SyntheticConfig.name must be a non-empty string")
        for name in ("num_dense", "num_tasks", "teacher_dim", "teacher_hidden", "dense_deep_hidden", "dense_deep_layers"):
            value = getattr(self, name)
            _require(_is_int(value) and value > 0, f"SyntheticConfig.{name} must be a positive integer, got {value!r}")
        _require(len(self.table_sizes) > 0, "SyntheticConfig.table_sizes must name at least one table")
        for index, rows in enumerate(self.table_sizes):
            _require(_is_int(rows) and 1 <= rows < 2**40,
                     f"SyntheticConfig.table_sizes[{index}] must be an integer in [1, 2**40), got {rows!r}")
        _require(_is_number(self.zipf_exponent) and self.zipf_exponent > 0,
                 f"SyntheticConfig.zipf_exponent must be > 0, got {self.zipf_exponent!r}")
        _require(_is_number(self.dense_zero_fraction) and 0 <= self.dense_zero_fraction < 1,
                 f"SyntheticConfig.dense_zero_fraction must be in [0, 1), got {self.dense_zero_fraction!r}")
        for name in ("first_order_scale", "interaction_scale", "deep_scale", "noise_std", "dense_deep_scale",
                     "dense_deep_frequency"):
            value = getattr(self, name)
            _require(_is_number(value) and value >= 0, f"SyntheticConfig.{name} must be a finite number >= 0, got {value!r}")
        _require(_is_number(self.task_correlation) and 0 <= self.task_correlation <= 1,
                 f"SyntheticConfig.task_correlation must be in [0, 1], got {self.task_correlation!r}")
        _require(_is_number(self.target_ctr) and 0 < self.target_ctr < 1,
                 f"SyntheticConfig.target_ctr must be in (0, 1), got {self.target_ctr!r}")
        _require(_is_int(self.seed) and 0 <= self.seed < 2**63, f"SyntheticConfig.seed must be an integer >= 0, got {self.seed!r}")
        for name in ("drift", "new_id_share"):
            value = getattr(self, name)
            _require(_is_number(value) and 0 <= value <= 1, f"SyntheticConfig.{name} must be in [0, 1], got {value!r}")
        _require(_is_int(self.drift_seed) and 0 <= self.drift_seed < 2**63,
                 f"SyntheticConfig.drift_seed must be an integer >= 0, got {self.drift_seed!r}")


_ALLOWED_CONFIGS: dict[str, type[_ConfigMixin]] = {"TrainConfig": TrainConfig, "SyntheticConfig": SyntheticConfig}


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig | SyntheticConfig:
    """Rebuild any config from its `to_dict` output, choosing the class by `type` from an allowlist.

    Raises:
        ValueError: for a missing or unknown `type`.

    Example:
        >>> config_from_dict(TrainConfig(steps=5).to_dict()).steps
        5
    """
    type_name = data.get("type")
    if type_name not in _ALLOWED_CONFIGS:
        raise ValueError(f"unknown config type {type_name!r}; allowed: {sorted(_ALLOWED_CONFIGS)}")
    return _ALLOWED_CONFIGS[type_name].from_dict(data)

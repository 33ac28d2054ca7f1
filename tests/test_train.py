"""Training loop: optimizer routing, learning, hooks, metrics and exact resume from checkpoints."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from torch import nn

from amgp_fx import models
from amgp_fx.checkpoint import list_checkpoints
from amgp_fx.config import SyntheticConfig, TrainConfig, config_from_dict
from amgp_fx.data import Batch, BatchLoader, SyntheticCriteo
from amgp_fx.metrics import read_metrics
from amgp_fx.train import build_optimizers, evaluate, train

SMALL = SyntheticCriteo(SyntheticConfig.from_preset("small"))
TIMING_KEYS = {"wall_clock_s", "samples_per_s"}


class TinyCtr(nn.Module):
    """A third-party-style model: sparse embeddings, dropout (uses the RNG), T task logits."""

    def __init__(self, num_dense: int, table_sizes, dim: int = 4, num_tasks: int = 1) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(rows, dim, sparse=True) for rows in table_sizes)
        self.mlp = nn.Sequential(nn.Linear(num_dense + dim * len(table_sizes), 16), nn.ReLU(), nn.Dropout(0.3),
                                 nn.Linear(16, num_tasks))
        self.num_tasks = num_tasks

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        embedded = [table(sparse[:, index]) for index, table in enumerate(self.embeddings)]
        logits = self.mlp(torch.cat([dense, *embedded], dim=1))
        return logits.squeeze(-1) if self.num_tasks == 1 else logits


def _tiny(seed: int = 0) -> TinyCtr:
    torch.manual_seed(seed)
    return TinyCtr(SMALL.spec.num_dense, SMALL.spec.table_sizes)


@pytest.mark.parametrize(
    "optimizer, dense_type, sparse_type",
    [("adam", torch.optim.Adam, torch.optim.SparseAdam), ("adamw", torch.optim.AdamW, torch.optim.SparseAdam),
     ("sgd", torch.optim.SGD, torch.optim.SGD), ("adagrad", torch.optim.Adagrad, torch.optim.Adagrad)],
)  # fmt: skip
def test_sparse_embeddings_get_a_sparse_optimizer(optimizer, dense_type, sparse_type):
    model = models.build_model("dlrm", "small", **SMALL.spec.model_kwargs())
    config = TrainConfig(optimizer=optimizer, lr=0.01, weight_decay=1e-4, momentum=0.5 if optimizer == "sgd" else 0.0,
                         batch_size=32, steps=2, log_every=1)
    optimizers = build_optimizers(model, config)
    assert optimizers.names == ["dense", "sparse"]
    assert [type(item) for item in optimizers.optimizers] == [dense_type, sparse_type]
    sparse_params = {id(table.weight) for table in model.embeddings}
    assert {id(param) for group in optimizers.optimizers[1].param_groups for param in group["params"]} == sparse_params
    before = model.embeddings[0].weight.detach().clone()
    result = train(model, SMALL.rows(0, 64), None, config, progress=False)
    assert result.step == 2 and math.isfinite(result.train_loss)
    assert not torch.equal(before, model.embeddings[0].weight), "embedding rows were updated"


def test_dlrm_learns_synthetic_data(tmp_path):
    torch.manual_seed(0)
    model = models.build_model("dlrm", "small", **SMALL.spec.model_kwargs())
    train_rows, eval_rows = SMALL.rows(0, 20000), SMALL.rows(100_000, 105_000)
    config = TrainConfig(optimizer="adam", lr=3e-3, batch_size=256, epochs=1, log_every=20, eval_every=40,
                         metrics_path=str(tmp_path / "metrics.jsonl"))
    result = train(model, train_rows, eval_rows, config, progress=False)
    click_rate = train_rows.label.mean().item()
    base_rate_logloss = -(click_rate * math.log(click_rate) + (1 - click_rate) * math.log(1 - click_rate))
    assert result.metrics["auc"] > 0.6, "beats a constant predictor (AUC 0.5)"
    assert result.metrics["logloss"] < base_rate_logloss - 0.01
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [record["step"] for record in records if record["kind"] == "eval"] == [40, 79]
    assert records == result.history
    train_record = next(record for record in records if record["kind"] == "train")
    assert set(train_record) == {"kind", "step", "epoch", "loss", "samples_per_s", "wall_clock_s"}


def test_multi_task_model_reports_each_task():
    data = SyntheticCriteo(SyntheticConfig.from_preset("small", num_tasks=2))
    model = models.build_model("mmoe", "small", **data.spec.model_kwargs())
    config = TrainConfig(batch_size=128, steps=5, log_every=5)
    result = train(model, data.rows(0, 1000), data.rows(5000, 5500), config, progress=False)
    assert {"auc", "logloss", "auc_task0", "auc_task1", "logloss_task0", "logloss_task1"} <= set(result.metrics)


class RecordingHook:
    """Logs every call; its state is the number of steps it has seen."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.events: list[tuple[str, int]] = []
        self.steps_seen = 0
        self.crash_at = crash_at
        self.loaded_before_model: bool | None = None
        self.initial_weight: torch.Tensor | None = None

    def on_train_start(self, ctx) -> None:
        self.events.append(("train_start", ctx.step))
        self.model = ctx.model
        self.initial_weight = ctx.model.mlp[0].weight.detach().clone()

    def on_step_start(self, ctx) -> None:
        if ctx.step == self.crash_at:
            raise KeyboardInterrupt("simulated crash")
        self.events.append(("step_start", ctx.step))

    def on_step_end(self, ctx) -> None:
        self.events.append(("step_end", ctx.step))
        self.steps_seen += 1
        if ctx.step % 4 == 0:
            ctx.logger.log({"kind": "hook", "step": ctx.step, "steps_seen": self.steps_seen})

    def state_dict(self) -> dict:
        return {"steps_seen": self.steps_seen}

    def load_state_dict(self, state: dict) -> None:
        self.steps_seen = state["steps_seen"]
        # the model still holds its fresh weights: hooks are restored before model state
        self.loaded_before_model = torch.equal(self.model.mlp[0].weight, self.initial_weight)


def test_hooks_see_steps_in_order():
    hook = RecordingHook()
    train(_tiny(), SMALL.rows(0, 96), None, TrainConfig(batch_size=32, steps=4, log_every=2), hooks=[hook], progress=False)
    assert hook.events == [("train_start", 0)] + [event for step in range(4) for event in (("step_start", step), ("step_end", step + 1))]


def _resume_config(tmp_path, name: str, optimizer: str, steps: int, resume: bool = False) -> TrainConfig:
    return TrainConfig(optimizer=optimizer, lr=0.05 if optimizer in ("sgd", "adagrad") else 0.01,
                       momentum=0.9 if optimizer == "sgd" else 0.0, batch_size=64, steps=steps, log_every=3,
                       eval_every=5, checkpoint_every=4, seed=11, metrics_path=str(tmp_path / name / "metrics.jsonl"),
                       checkpoint_dir=str(tmp_path / name / "checkpoints"), resume=resume, keep_checkpoints=3)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "adagrad"])
def test_resume_after_crash_matches_uninterrupted_run(tmp_path, optimizer):
    train_rows, eval_rows = SMALL.rows(0, 300), SMALL.rows(9000, 9200)  # 5 batches an epoch: crosses epochs
    reference_model = _tiny()
    train(reference_model, train_rows, eval_rows, _resume_config(tmp_path, "straight", optimizer, 17),
          hooks=[RecordingHook()], progress=False)

    crashed_model = _tiny()
    with pytest.raises(KeyboardInterrupt):
        train(crashed_model, train_rows, eval_rows, _resume_config(tmp_path, "crashed", optimizer, 17),
              hooks=[RecordingHook(crash_at=10)], progress=False)
    assert list_checkpoints(tmp_path / "crashed" / "checkpoints")[-1].name == "checkpoint_000000008.pt"

    resumed_model, hook = _tiny(seed=123), RecordingHook()  # other initial weights: all state must come from disk
    result = train(resumed_model, train_rows, eval_rows, _resume_config(tmp_path, "crashed", optimizer, 17, resume=True),
                   hooks=[hook], progress=False)
    assert result.step == 17 and hook.steps_seen == 17 and hook.events[1] == ("step_start", 8)
    assert hook.loaded_before_model
    for (name, expected), actual in zip(reference_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(expected, actual), f"{name} differs after resume"

    def without_timing(path):
        return [{key: value for key, value in record.items() if key not in TIMING_KEYS} for record in read_metrics(path)]

    expected_records = without_timing(tmp_path / "straight" / "metrics.jsonl")
    assert without_timing(tmp_path / "crashed" / "metrics.jsonl") == expected_records
    assert {record["kind"] for record in expected_records} == {"train", "eval", "hook"}


def test_resume_refuses_a_different_seed(tmp_path):
    rows = SMALL.rows(0, 128)
    train(_tiny(), rows, None, _resume_config(tmp_path, "run", "adam", 4), progress=False)
    changed = TrainConfig(**{**_resume_config(tmp_path, "run", "adam", 8, resume=True).__dict__, "seed": 12})
    with pytest.raises(ValueError, match="cannot resume: checkpoint has seed=11, config has 12"):
        train(_tiny(), rows, None, changed, progress=False)


def test_resume_with_no_checkpoint_starts_fresh(tmp_path):
    result = train(_tiny(), SMALL.rows(0, 128), None, _resume_config(tmp_path, "new", "adam", 2, resume=True), progress=False)
    assert result.step == 2 and result.checkpoint.endswith("checkpoint_000000002.pt")


def test_logits_must_match_labels():
    with pytest.raises(ValueError, match=r"model returned logits \(32, 3\) for labels \(32,\)"):
        train(_tiny(), SMALL.rows(0, 64), None, TrainConfig(batch_size=32, steps=1),
              forward=lambda model, batch: model(batch.dense, batch.sparse)[:, None].expand(-1, 3), progress=False)


def test_evaluate_restores_training_mode():
    model = _tiny()
    model.train()
    metrics = evaluate(model, SMALL.rows(0, 500), batch_size=128)
    assert model.training and 0.0 <= metrics["auc"] <= 1.0


def test_batch_loader_order_depends_on_seed_and_epoch():
    rows = Batch(torch.arange(50.0)[:, None], torch.arange(50)[:, None], torch.zeros(50))
    loader = BatchLoader(rows, 8, shuffle=True, seed=4)
    first = torch.cat([batch.sparse for batch in loader.epoch(0)]).flatten()
    again = torch.cat([batch.sparse for batch in BatchLoader(rows, 8, shuffle=True, seed=4).epoch(0)]).flatten()
    second = torch.cat([batch.sparse for batch in loader.epoch(1)]).flatten()
    assert torch.equal(first, again) and not torch.equal(first, second)
    assert sorted(first.tolist()) == list(range(50)) and len(loader) == 7
    skipped = torch.cat([batch.sparse for batch in loader.epoch(0, start_batch=3)]).flatten()
    assert torch.equal(skipped, first[24:])
    assert len(BatchLoader(rows, 8, drop_last=True)) == 6


def test_train_config_round_trip_and_validation():
    config = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, steps=100, checkpoint_dir="runs/x", checkpoint_every=10)
    assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.to_dict()["version"] == 1 and config.to_dict()["optimizer"] == "sgd"
    assert TrainConfig().epochs == 1 and TrainConfig(steps=3).epochs is None
    cases = [
        (dict(optimizer="lbfgs"), "TrainConfig.optimizer must be one of ['sgd', 'adam', 'adamw', 'adagrad'], got 'lbfgs'"),
        (dict(steps=10, epochs=2), "TrainConfig takes steps or epochs, not both"),
        (dict(lr=0.0), "TrainConfig.lr must be a finite number > 0, got 0.0"),
        (dict(batch_size=0), "TrainConfig.batch_size must be a positive integer, got 0"),
        (dict(device="tpu"), "TrainConfig.device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
        (dict(resume=True), "TrainConfig.resume=True needs checkpoint_dir"),
        (dict(momentum=1.0), "TrainConfig.momentum must be in [0, 1), got 1.0"),
    ]
    for arguments, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            TrainConfig(**arguments)
    with pytest.raises(ValueError, match="version 2 is not supported"):
        TrainConfig.from_dict({**config.to_dict(), "version": 2})

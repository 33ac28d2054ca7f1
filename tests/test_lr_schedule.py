"""Learning-rate schedules: the factor's shape, the trainer applying it to every optimizer at every
step, and its composition with AMGP's pruned-phase scale and re-warm-up."""
from __future__ import annotations

import math

import pytest
import torch

import amgp_fx
from amgp_fx import models
from amgp_fx.amgp import AmgpHook
from amgp_fx.config import SyntheticConfig, TrainConfig
from amgp_fx.data import SyntheticCriteo
from amgp_fx.lr_schedule import lr_factor
from amgp_fx.schedule import AmgpConfig, AmgpSchedule
from amgp_fx.train import train


def test_warmup_then_cosine_and_linear_decay():
    assert [lr_factor(s, 100, "cosine", warmup_steps=4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 100, "cosine", warmup_steps=4) == 1.0
    assert lr_factor(52, 100, "cosine", warmup_steps=4) == pytest.approx(0.5)
    cosine = [lr_factor(s, 100, "cosine", warmup_steps=4, final_ratio=0.1) for s in range(4, 100)]
    assert all(a > b for a, b in zip(cosine, cosine[1:])) and cosine[-1] > 0.1
    assert lr_factor(99, 100, "linear", final_ratio=0.0) == pytest.approx(0.01)
    assert {lr_factor(s, 100, "constant", warmup_steps=10) for s in range(10, 100)} == {1.0}


@pytest.mark.parametrize("bad", [dict(schedule="step"), dict(warmup_steps=101), dict(final_ratio=1.5)])
def test_bad_schedules_are_refused(bad):
    kwargs = {"schedule": "cosine", **bad}
    with pytest.raises(ValueError):
        lr_factor(0, 100, kwargs.pop("schedule"), **kwargs)


def test_train_config_checks_the_schedule():
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="exp")
    with pytest.raises(ValueError, match="lr_warmup_steps"):
        TrainConfig(steps=10, lr_warmup_steps=11)
    config = TrainConfig(steps=10, lr_schedule="cosine", lr_warmup_steps=2, lr_final_ratio=0.1)
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.fixture(scope="module")
def rows():
    data = SyntheticCriteo(SyntheticConfig.from_preset("small"))
    return data.rows(0, 2048), data.rows(50_000, 50_512)


class Rates:
    """Records each optimizer's rate after the step (the rate that step trained with)."""

    def __init__(self):
        self.seen = []

    def on_step_end(self, ctx):
        self.seen.append({name: opt.param_groups[0]["lr"] for name, opt in zip(ctx.optimizers.names, ctx.optimizers)})


def _dcn():
    torch.manual_seed(0)
    model = models.build_model("dcn_v2", "small", deep_mlp=(64, 40))
    for module in model.modules():  # sparse gradients: the tables get their own optimizer
        if isinstance(module, torch.nn.Embedding):
            module.sparse = True
    return model


def test_the_trainer_applies_the_schedule_to_every_optimizer(rows):
    rates = Rates()
    config = TrainConfig(optimizer="adam", lr=1e-2, sparse_optimizer="adagrad", sparse_lr=0.05, batch_size=64,
                         steps=20, lr_schedule="cosine", lr_warmup_steps=3, lr_final_ratio=0.1)
    train(_dcn(), rows[0], None, config, hooks=[rates], progress=False)
    for step, seen in enumerate(rates.seen):
        factor = lr_factor(step, 20, "cosine", warmup_steps=3, final_ratio=0.1)
        assert seen["dense"] == pytest.approx(1e-2 * factor) and seen["sparse"] == pytest.approx(0.05 * factor)


def test_amgp_scale_and_rewarm_compose_with_the_schedule(rows):
    model = _dcn()
    graph = amgp_fx.analyze(model, model.example_inputs(4))
    schedule = AmgpSchedule(total_steps=30, warmup_steps=4, cycles=2, pruned_steps=6, dense_steps=6)
    hook = AmgpHook(graph, AmgpConfig(schedule, ratio=0.5, pruned_lr_scale=2.0, rewarm_steps=3))
    rates = Rates()
    train(model, rows[0], None, TrainConfig(optimizer="adam", lr=1e-2, sparse_optimizer="adagrad", sparse_lr=0.05,
                                            batch_size=64, steps=30, lr_schedule="linear", lr_final_ratio=0.0),
          hooks=[hook, rates], forward=hook.forward, progress=False)
    phases = schedule.phases()
    growths = [b.start for a, b in zip(phases, phases[1:]) if a.pruned and not b.pruned]  # 10 and 22
    for step, seen in enumerate(rates.seen):
        factor = lr_factor(step, 30, "linear")
        amgp = 2.0 if schedule.phase_at(step).pruned else 1.0
        since = [step - g for g in growths if 0 <= step - g < 3]
        if since:
            amgp *= (since[0] + 1) / 3
        assert seen["dense"] == pytest.approx(1e-2 * factor * amgp), f"step {step}"
        assert seen["sparse"] == pytest.approx(0.05 * factor), "embedding tables are not pruned"
    assert not math.isclose(rates.seen[growths[0]]["dense"], rates.seen[growths[0] + 3]["dense"])

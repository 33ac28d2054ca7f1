"""Every reference model learns the synthetic data on the CPU: test AUC beats a constant predictor."""
import pytest
import torch

from amgp_fx import models
from amgp_fx.config import SyntheticConfig, TrainConfig
from amgp_fx.data import SyntheticCriteo
from amgp_fx.train import train


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_reference_model_beats_a_trivial_predictor(name):
    tasks = 2 if name == "mmoe" else 1
    data = SyntheticCriteo(SyntheticConfig.from_preset("small", num_tasks=tasks))
    torch.manual_seed(0)
    model = models.build_model(name, "small", **data.spec.model_kwargs())
    config = TrainConfig(optimizer="adam", lr=3e-3, batch_size=256, epochs=2, log_every=0)
    result = train(model, data.rows(0, 30000), data.rows(100_000, 104_000), config, progress=False)
    assert result.metrics["auc"] > 0.58, result.metrics

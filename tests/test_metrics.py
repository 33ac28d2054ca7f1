"""AUC and logloss against reference computations; the JSON-lines metrics log."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

from amgp_fx.metrics import MetricsLogger, auc, ctr_metrics, logloss, read_metrics


def _pairwise_auc(labels: list[int], scores: list[float]) -> float:
    """Brute force: P(score of a positive > score of a negative), ties count 1/2."""
    positives = [score for label, score in zip(labels, scores) if label == 1]
    negatives = [score for label, score in zip(labels, scores) if label == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


@settings(max_examples=200, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(0, 1), st.integers(-3, 3)), min_size=2, max_size=40))
def test_auc_matches_pairwise_definition_with_ties(pairs):
    labels = [label for label, _ in pairs]
    scores = [float(score) for _, score in pairs]  # few distinct values: many ties
    result = auc(torch.tensor(labels), torch.tensor(scores))
    if len(set(labels)) < 2:
        assert math.isnan(result)
    else:
        assert result == pytest.approx(_pairwise_auc(labels, scores), abs=1e-12)


def test_auc_matches_sklearn_on_larger_data():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (5000,), generator=generator)
    scores = torch.randn(5000, generator=generator) + labels * 0.5
    scores = torch.round(scores * 10) / 10  # ties
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-12)


def test_logloss_matches_sklearn():
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 2, (1000,), generator=generator).float()
    logits = torch.randn(1000, generator=generator) * 3
    expected = log_loss(labels.numpy(), torch.sigmoid(logits.double()).numpy())
    assert logloss(labels, logits) == pytest.approx(expected, rel=1e-9)
    # extreme logits stay finite (computed from logits, not from clipped probabilities)
    assert logloss(torch.tensor([1.0, 0.0]), torch.tensor([-200.0, 200.0])) == pytest.approx(200.0)


def test_ctr_metrics_per_task():
    labels = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    logits = torch.tensor([[-1.0, 2.0], [1.0, 1.0], [2.0, 0.5], [-2.0, 1.5]])
    result = ctr_metrics(labels, logits)
    assert result["auc_task0"] == 1.0
    assert result["auc_task1"] == pytest.approx(_pairwise_auc([1, 0, 1, 0], [2.0, 1.0, 0.5, 1.5]))
    assert result["auc"] == pytest.approx((result["auc_task0"] + result["auc_task1"]) / 2)
    assert result["logloss_task1"] == pytest.approx(logloss(labels[:, 1], logits[:, 1]))


def test_metric_input_errors():
    with pytest.raises(ValueError, match="3 labels but 2 scores"):
        auc(torch.tensor([0, 1, 1]), torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="scores contain NaN"):
        auc(torch.tensor([0, 1]), torch.tensor([0.1, math.nan]))
    with pytest.raises(ValueError, match="must have one shape"):
        ctr_metrics(torch.zeros(4), torch.zeros(4, 1))


def test_metrics_logger_writes_truncates_and_survives_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    metrics_logger = MetricsLogger(path)
    for step in range(1, 6):
        metrics_logger.log({"step": step, "loss": 1.0 / step, "auc": math.nan})
    metrics_logger.truncate_after(3)
    assert [record["step"] for record in read_metrics(path)] == [1, 2, 3]
    assert read_metrics(path)[0]["auc"] is None, "NaN is written as null: the file stays strict JSON"
    with open(path, "a") as handle:
        handle.write('{"step": 4, "lo')  # a crash mid-line
    assert [record["step"] for record in read_metrics(path)] == [1, 2, 3]
    assert json.loads(path.read_text().splitlines()[1])["loss"] == 0.5

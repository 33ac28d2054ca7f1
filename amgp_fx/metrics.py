"""CTR metrics (exact AUC, logloss, per task) and the JSON-lines metrics log.

Dim letters: N rows, T tasks.
AUC is computed exactly from ranks in float64 (ties count one half, as in the Mann-Whitney U
statistic and sklearn's `roc_auc_score`), with no binning, so small AUC gains of 0.001 are real.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as functional

from .fileio import atomic_write_text

__all__ = ["auc", "logloss", "ctr_metrics", "MetricsLogger", "read_metrics"]


def auc(labels: torch.Tensor, scores: torch.Tensor) -> float:
    """Area under the ROC curve of `scores` for binary `labels`, exact with ties.

    Args:
        labels: (N,) values in {0, 1}.
        scores: (N,) any monotone score (logits or probabilities).

    Returns:
        The AUC, or NaN when `labels` holds only one class (AUC is undefined).

    Raises:
        ValueError: for shape mismatch or non-finite scores.

    Example:
        >>> auc(torch.tensor([0, 0, 1, 1]), torch.tensor([0.1, 0.4, 0.35, 0.8]))
        0.75
    """
    labels, scores = _flat_pair(labels, scores, "auc")
    positives = int(labels.sum().item())
    negatives = labels.numel() - positives
    if positives == 0 or negatives == 0:
        return math.nan
    sorted_scores, order = torch.sort(scores)
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)
    average_rank = ends - (counts.to(torch.float64) - 1) / 2  # 1-based mean rank of each tie group
    positive_rank_sum = (average_rank[inverse] * labels[order]).sum().item()
    return (positive_rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def logloss(labels: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean binary cross-entropy of `logits` (before the sigmoid) against `labels`, in nats.

    Example:
        >>> round(logloss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])), 6) == round(math.log(2), 6)
        True
    """
    labels, logits = _flat_pair(labels, logits, "logloss")
    if labels.numel() == 0:
        return math.nan
    return functional.binary_cross_entropy_with_logits(logits, labels).item()


def ctr_metrics(labels: torch.Tensor, logits: torch.Tensor) -> dict[str, float]:
    """AUC and logloss, overall and per task for (N, T) inputs.

    Args:
        labels: (N,) or (N, T) clicks.
        logits: same shape as `labels`.

    Returns:
        {"auc", "logloss"} for one task; for T tasks also "auc_task{t}", "logloss_task{t}", with
        "auc"/"logloss" the mean over tasks.

    Raises:
        ValueError: when the shapes differ.
    """
    if labels.shape != logits.shape:
        raise ValueError(f"labels {tuple(labels.shape)} and logits {tuple(logits.shape)} must have one shape")
    if labels.dim() == 1:
        return {"auc": auc(labels, logits), "logloss": logloss(labels, logits)}
    result: dict[str, float] = {}
    for task in range(labels.shape[1]):
        result[f"auc_task{task}"] = auc(labels[:, task], logits[:, task])
        result[f"logloss_task{task}"] = logloss(labels[:, task], logits[:, task])
    tasks = labels.shape[1]
    result["auc"] = sum(result[f"auc_task{task}"] for task in range(tasks)) / tasks
    result["logloss"] = sum(result[f"logloss_task{task}"] for task in range(tasks)) / tasks
    return result


def _flat_pair(labels: torch.Tensor, values: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.as_tensor(labels).detach().reshape(-1).to("cpu", torch.float64)
    values = torch.as_tensor(values).detach().reshape(-1).to("cpu", torch.float64)
    if labels.shape != values.shape:
        raise ValueError(f"{name}: {labels.numel()} labels but {values.numel()} scores")
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name}: scores contain NaN or infinity")
    return labels, values


class MetricsLogger:
    """Appends one JSON object per line to a file (or only keeps them, with `path=None`).

    Each line is flushed as it is written, so a crash loses at most the line being written.
    `truncate_after(step)` drops records past a step, so a resumed run does not log a step twice.
    """

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = None if path is None else Path(path)
        self.records: list[dict[str, Any]] = []
        self._handle = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, record: dict[str, Any]) -> None:
        """Write one record (JSON-serialisable; NaN is written as null)."""
        record = {key: _json_number(value) for key, value in record.items()}
        self.records.append(record)
        if self.path is None:
            return
        if self._handle is None:
            self._handle = open(self.path, "a", encoding="utf-8")
        self._handle.write(json.dumps(record, allow_nan=False) + "\n")
        self._handle.flush()

    def truncate_after(self, step: int) -> None:
        """Keep only records with `record["step"] <= step`, in memory and (atomically) on disk."""
        self.close()
        if self.path is not None and self.path.exists():
            self.records = [record for record in read_metrics(self.path) if record.get("step", 0) <= step]
            atomic_write_text(self.path, "".join(json.dumps(record) + "\n" for record in self.records))
        else:
            self.records = [record for record in self.records if record.get("step", 0) <= step]

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a JSON-lines metrics file (a torn last line from a crash is ignored)."""
    records = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if index == len(lines) - 1:
                break
            raise
    return records


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_number(item) for key, item in value.items()}
    return value

"""The batch record every data source yields, and the dataset description models are built from.

Dim letters: B batch (or all N rows), F sparse fields, T tasks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

__all__ = ["Batch", "DatasetSpec", "concat_batches"]


class Batch(NamedTuple):
    """Rows of a click-through-rate dataset.

    Attributes:
        dense: (B, num_dense) float32, already preprocessed (e.g. log1p of counts).
        sparse: (B, F) int64 category ids, `sparse[:, f] < table_sizes[f]`.
        label: (B,) float32 clicks in {0, 1}, or (B, T) for T tasks.

    Example:
        >>> batch = Batch(torch.zeros(4, 2), torch.zeros(4, 3, dtype=torch.long), torch.ones(4))
        >>> batch.num_rows, batch[1:3].num_rows
        (4, 2)
    """

    dense: torch.Tensor
    sparse: torch.Tensor
    label: torch.Tensor

    @property
    def num_rows(self) -> int:
        """B, the number of rows."""
        return int(self.label.shape[0])

    def __getitem__(self, index: Any) -> Any:  # type: ignore[override]
        """Integer index: a field (tuple semantics); slice or index tensor: those rows as a Batch."""
        if isinstance(index, int):
            return tuple.__getitem__(self, index)
        return Batch(self.dense[index], self.sparse[index], self.label[index])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Copy to `device`; `non_blocking=True` overlaps the copy with compute from pinned memory."""
        return Batch(
            self.dense.to(device, non_blocking=non_blocking),
            self.sparse.to(device, non_blocking=non_blocking),
            self.label.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Batch:
        """Page-locked copy, so that a later `.to("cuda", non_blocking=True)` is asynchronous."""
        return Batch(self.dense.pin_memory(), self.sparse.pin_memory(), self.label.pin_memory())

    def validate(self, spec: DatasetSpec | None = None) -> None:
        """Check dtypes, shapes and (with a spec) id ranges.

        Raises:
            ValueError: naming the first field that is wrong.
        """
        rows = self.num_rows
        if self.dense.dtype != torch.float32 or self.dense.dim() != 2 or self.dense.shape[0] != rows:
            raise ValueError(f"Batch.dense must be float32 (B={rows}, num_dense), got {self.dense.dtype} {tuple(self.dense.shape)}")
        if self.sparse.dtype != torch.int64 or self.sparse.dim() != 2 or self.sparse.shape[0] != rows:
            raise ValueError(f"Batch.sparse must be int64 (B={rows}, F), got {self.sparse.dtype} {tuple(self.sparse.shape)}")
        if self.label.dtype != torch.float32 or self.label.dim() not in (1, 2):
            raise ValueError(f"Batch.label must be float32 (B,) or (B, T), got {self.label.dtype} {tuple(self.label.shape)}")
        if spec is None:
            return
        if self.dense.shape[1] != spec.num_dense or self.sparse.shape[1] != len(spec.table_sizes):
            raise ValueError(
                f"Batch has {self.dense.shape[1]} dense and {self.sparse.shape[1]} sparse columns, "
                f"spec {spec.name!r} expects {spec.num_dense} and {len(spec.table_sizes)}"
            )
        label_tasks = 1 if self.label.dim() == 1 else int(self.label.shape[1])
        if label_tasks != spec.num_tasks:
            raise ValueError(f"Batch.label has {label_tasks} tasks, spec {spec.name!r} expects {spec.num_tasks}")
        if rows:
            limits = torch.tensor(spec.table_sizes, dtype=torch.int64, device=self.sparse.device)
            bad = (self.sparse < 0) | (self.sparse >= limits)
            if bool(bad.any()):
                row, column = (int(value) for value in bad.nonzero()[0])
                raise ValueError(
                    f"Batch.sparse[{row}, {column}] = {int(self.sparse[row, column])} is outside "
                    f"table {column} of size {spec.table_sizes[column]}"
                )


def concat_batches(batches: Sequence[Batch]) -> Batch:
    """Rows of several batches, in order, as one Batch.

    Raises:
        ValueError: for an empty sequence.
    """
    if not batches:
        raise ValueError("concat_batches needs at least one batch")
    return Batch(*(torch.cat([batch[field] for batch in batches]) for field in range(3)))


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a model needs to know about a dataset: feature counts and table sizes.

    Args:
        name: dataset name, for messages and file metadata.
        num_dense: dense feature count.
        table_sizes: rows of each categorical feature's table (F entries).
        num_tasks: label columns T.

    Example:
        >>> spec = DatasetSpec("toy", 4, (20, 50))
        >>> spec.model_kwargs()
        {'num_dense': 4, 'table_sizes': (20, 50)}
    """

    name: str
    num_dense: int
    table_sizes: tuple[int, ...]
    num_tasks: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "table_sizes", tuple(int(rows) for rows in self.table_sizes))
        if self.num_dense < 0:
            raise ValueError(f"DatasetSpec.num_dense must be >= 0, got {self.num_dense}")
        if not self.table_sizes or min(self.table_sizes) < 1:
            raise ValueError(f"DatasetSpec.table_sizes must be non-empty and positive, got {self.table_sizes}")
        if self.num_tasks < 1:
            raise ValueError(f"DatasetSpec.num_tasks must be >= 1, got {self.num_tasks}")

    @property
    def num_sparse(self) -> int:
        """F, the number of categorical features."""
        return len(self.table_sizes)

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `models.build_model(name, preset, **spec.model_kwargs())`."""
        return {"num_dense": self.num_dense, "table_sizes": self.table_sizes}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"name": self.name, "num_dense": self.num_dense, "table_sizes": list(self.table_sizes),
                "num_tasks": self.num_tasks}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetSpec:
        """Inverse of `to_dict`."""
        return cls(str(data["name"]), int(data["num_dense"]), tuple(data["table_sizes"]), int(data.get("num_tasks", 1)))

"""DeepFM (Guo et al. 2017), written like pytorch-fm's `DeepFactorizationMachineModel`.

Dim letters: B batch, F sparse fields, D embedding dim, H hidden width.
All fields share one embedding table (and one first-order table) indexed through per-field row
offsets, the pytorch-fm / FuxiCTR layout. The FM term reduces over D, so it couples D only to the
embedding table; the deep tower reads the same embeddings flattened to F * D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .criteo import NUM_DENSE, capped_table_sizes, parameter_device, random_inputs


def factorization_machine(embedded: torch.Tensor) -> torch.Tensor:
    """Second-order FM term: (B, F, D) -> (B, 1).

    0.5 * ((sum_f e_f)^2 - sum_f e_f^2), summed over D, equals sum_{i<j} <e_i, e_j>.
    """
    square_of_sum = embedded.sum(dim=1) ** 2  # (B, D)
    sum_of_square = (embedded * embedded).sum(dim=1)  # (B, D)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1, keepdim=True)


class DeepFM(nn.Module):
    """First-order + FM + deep tower, summed into one logit.

    Args:
        num_dense: number of dense features (used by the linear term and the deep tower).
        table_sizes: rows of each field (F fields), stacked into one shared table.
        embedding_dim: D.
        deep_mlp: deep tower hidden widths (Linear -> BatchNorm1d -> ReLU -> Dropout).
        dropout: dropout probability in the deep tower.

    Example:
        >>> model = DeepFM(4, (10, 20), 8, (16,))
        >>> model(*model.example_inputs(3)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        num_dense: int,
        table_sizes: Sequence[int],
        embedding_dim: int = 16,
        deep_mlp: Sequence[int] = (400, 400, 400),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.num_dense = num_dense
        self.table_sizes = tuple(table_sizes)
        self.num_fields = len(self.table_sizes)
        self.embedding_dim = embedding_dim
        total_rows = sum(self.table_sizes)
        starts = torch.tensor((0, *self.table_sizes[:-1])).cumsum(0)
        self.register_buffer("field_offsets", starts.unsqueeze(0), persistent=False)  # (1, F)
        self.first_order = nn.Embedding(total_rows, 1)
        self.first_order_dense = nn.Linear(num_dense, 1)
        self.embedding = nn.Embedding(total_rows, embedding_dim)
        layers: list[nn.Module] = []
        in_features = num_dense + self.num_fields * embedding_dim
        for width in deep_mlp:
            layers += [nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.ReLU()]
            layers.append(nn.Dropout(dropout))
            in_features = width
        layers.append(nn.Linear(in_features, 1))
        self.deep = nn.Sequential(*layers)
        nn.init.zeros_(self.first_order.weight)
        nn.init.xavier_uniform_(self.embedding.weight)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """dense (B, num_dense), sparse (B, F) -> logits (B,)."""
        batch_size = sparse.shape[0]
        rows = sparse + self.field_offsets  # (B, F) rows of the shared table
        linear = self.first_order(rows).sum(dim=1) + self.first_order_dense(dense)  # (B, 1)
        embedded = self.embedding(rows)  # (B, F, D)
        deep_input = torch.cat(
            [dense, embedded.reshape(batch_size, self.num_fields * self.embedding_dim)], dim=1
        )
        logit = linear + factorization_machine(embedded) + self.deep(deep_input)
        return logit.squeeze(1)

    def example_inputs(self, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Random (dense (B, num_dense), sparse (B, F)) on the model's device, ids in range."""
        return random_inputs(
            self.num_dense, self.table_sizes, batch_size, parameter_device(self), seed
        )


PRESETS: dict[str, dict] = {
    "small": dict(num_dense=4, table_sizes=(20, 50, 100, 30), embedding_dim=8, deep_mlp=(32, 16)),
    # The paper's Criteo setting: 400-400-400 deep tower.
    "default": dict(
        num_dense=NUM_DENSE, table_sizes=capped_table_sizes(), embedding_dim=16,
        deep_mlp=(400, 400, 400),
    ),
}  # fmt: skip


def build(preset: str = "small", **overrides) -> DeepFM:
    """DeepFM from a named preset, with keyword overrides.

    Raises:
        ValueError: for an unknown preset name.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown DeepFM preset {preset!r}; choose from {sorted(PRESETS)}")
    return DeepFM(**{**PRESETS[preset], **overrides})

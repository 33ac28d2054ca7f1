"""AutoInt (Song et al. 2019): multi-head self-attention over field embeddings.

Dim letters: B batch, F fields (dense + sparse), D embedding dim, H heads, dh head dim.
Each dense feature m becomes a field x_m * v_m (v_m a learned D-vector, as in the paper), so the
attention runs over F = num_dense + num_sparse fields. Per layer, q/k/v and the residual projection
map D_in -> H * dh; the `view(B, F, H, dh)` splits that width into heads, so pruning must remove
whole heads or the same dh slice in every head. The output is relu(attention + residual).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .criteo import NUM_DENSE, capped_table_sizes, parameter_device, random_inputs


class InteractingLayer(nn.Module):
    """One AutoInt interacting layer: (B, F, D_in) -> (B, F, H * dh)."""

    def __init__(self, in_features: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        width = num_heads * head_dim
        self.query = nn.Linear(in_features, width, bias=False)
        self.key = nn.Linear(in_features, width, bias=False)
        self.value = nn.Linear(in_features, width, bias=False)
        self.residual = nn.Linear(in_features, width, bias=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, num_fields, _ = x.shape
        return x.view(batch_size, num_fields, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, num_fields, _ = x.shape
        query = self._split_heads(self.query(x))  # (B, H, F, dh)
        key = self._split_heads(self.key(x))
        value = self._split_heads(self.value(x))
        scores = torch.matmul(query, key.transpose(-2, -1)) / self.head_dim**0.5  # (B, H, F, F)
        weights = torch.softmax(scores, dim=-1)
        attended = torch.matmul(weights, value)  # (B, H, F, dh)
        attended = attended.transpose(1, 2).reshape(
            batch_size, num_fields, self.num_heads * self.head_dim
        )
        return torch.relu(attended + self.residual(x))


class AutoInt(nn.Module):
    """Field embeddings -> interacting layers -> Linear over the flattened output.

    Args:
        num_dense: number of dense features (each one is a field).
        table_sizes: rows of each embedding table (one field per table).
        embedding_dim: D.
        num_layers: number of interacting layers.
        num_heads: H.
        head_dim: dh.

    Example:
        >>> model = AutoInt(4, (10, 20), 8, 2, 2, 4)
        >>> model(*model.example_inputs(3)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        num_dense: int,
        table_sizes: Sequence[int],
        embedding_dim: int = 16,
        num_layers: int = 3,
        num_heads: int = 2,
        head_dim: int = 32,
    ) -> None:
        super().__init__()
        self.num_dense = num_dense
        self.table_sizes = tuple(table_sizes)
        self.num_fields = num_dense + len(self.table_sizes)
        self.dense_embedding = nn.Parameter(torch.empty(num_dense, embedding_dim))
        self.embeddings = nn.ModuleList(nn.Embedding(rows, embedding_dim) for rows in table_sizes)
        widths = [embedding_dim] + [num_heads * head_dim] * num_layers
        self.layers = nn.Sequential(
            *(InteractingLayer(widths[i], num_heads, head_dim) for i in range(num_layers))
        )
        self.head = nn.Linear(self.num_fields * widths[-1], 1)
        nn.init.normal_(self.dense_embedding, std=0.01)
        for table in self.embeddings:
            nn.init.normal_(table.weight, std=0.01)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """dense (B, num_dense), sparse (B, F_sparse) -> logits (B,)."""
        dense_fields = dense.unsqueeze(-1) * self.dense_embedding  # (B, num_dense, D)
        sparse_fields = torch.stack(
            [table(sparse[:, index]) for index, table in enumerate(self.embeddings)], dim=1
        )  # (B, F_sparse, D)
        fields = torch.cat([dense_fields, sparse_fields], dim=1)  # (B, F, D)
        interacted = self.layers(fields)  # (B, F, H * dh)
        return self.head(interacted.flatten(start_dim=1)).squeeze(-1)

    def example_inputs(self, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Random (dense (B, num_dense), sparse (B, F_sparse)) on the model's device."""
        return random_inputs(
            self.num_dense, self.table_sizes, batch_size, parameter_device(self), seed
        )


PRESETS: dict[str, dict] = {
    "small": dict(
        num_dense=4, table_sizes=(20, 50, 100, 30), embedding_dim=8,
        num_layers=2, num_heads=2, head_dim=4,
    ),
    # The paper's Criteo setting: 3 layers, 2 heads, attention width 32 per head.
    "default": dict(
        num_dense=NUM_DENSE, table_sizes=capped_table_sizes(), embedding_dim=16,
        num_layers=3, num_heads=2, head_dim=32,
    ),
}  # fmt: skip


def build(preset: str = "small", **overrides) -> AutoInt:
    """AutoInt from a named preset, with keyword overrides.

    Raises:
        ValueError: for an unknown preset name.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown AutoInt preset {preset!r}; choose from {sorted(PRESETS)}")
    return AutoInt(**{**PRESETS[preset], **overrides})

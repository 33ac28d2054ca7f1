"""DLRM (Naumov et al. 2019), written like facebookresearch/dlrm's `DLRM_Net`.

Dim letters: B batch, F sparse fields, D embedding dim.
The bottom MLP maps dense features to D, each sparse feature looks up one D-vector, and the dot
interaction takes the pairwise inner products of those F + 1 vectors. Coupling a dependency analyser
has to find: the last bottom-MLP width, every embedding dim and the bmm contraction are one dim (D),
and the top MLP's input width is D + (F + 1) * F / 2, a size that does not change when D is pruned.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .criteo import NUM_DENSE, capped_table_sizes, parameter_device, random_inputs


def _mlp(in_features: int, widths: Sequence[int], relu_last: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, width in enumerate(widths):
        layers.append(nn.Linear(in_features, width))
        if relu_last or index < len(widths) - 1:
            layers.append(nn.ReLU())
        in_features = width
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    """Bottom MLP + per-feature embeddings + dot interaction + top MLP.

    Args:
        num_dense: number of dense features.
        table_sizes: rows of each embedding table, one table per sparse feature (F tables).
        embedding_dim: D; must equal the last bottom-MLP width.
        bottom_mlp: bottom MLP widths, ReLU after every layer (as in the original code).
        top_mlp: top MLP hidden widths; a final Linear to 1 logit is appended.
        interaction_itself: also keep the diagonal of the interaction matrix.
        sparse_grads: `nn.Embedding(sparse=True)`, as DLRM trains with sparse SGD updates.

    Raises:
        ValueError: when `bottom_mlp[-1] != embedding_dim` or `table_sizes` is empty.

    Example:
        >>> model = DLRM(4, (10, 20), 8, (16, 8), (16,))
        >>> model(*model.example_inputs(3)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        num_dense: int,
        table_sizes: Sequence[int],
        embedding_dim: int = 16,
        bottom_mlp: Sequence[int] = (512, 256, 64, 16),
        top_mlp: Sequence[int] = (512, 256),
        interaction_itself: bool = False,
        sparse_grads: bool = True,
    ) -> None:
        super().__init__()
        if not table_sizes:
            raise ValueError("DLRM needs at least one sparse feature, got table_sizes=()")
        if bottom_mlp[-1] != embedding_dim:
            raise ValueError(
                f"bottom_mlp must end in embedding_dim={embedding_dim}, got {tuple(bottom_mlp)}"
            )
        self.num_dense = num_dense
        self.table_sizes = tuple(table_sizes)
        self.bottom_mlp = _mlp(num_dense, bottom_mlp, relu_last=True)
        self.embeddings = nn.ModuleList(
            nn.Embedding(rows, embedding_dim, sparse=sparse_grads) for rows in self.table_sizes
        )
        num_vectors = len(self.table_sizes) + 1
        offset = 0 if interaction_itself else -1
        rows, columns = torch.tril_indices(num_vectors, num_vectors, offset=offset)
        self.register_buffer("li", rows, persistent=False)
        self.register_buffer("lj", columns, persistent=False)
        interaction_width = embedding_dim + rows.numel()
        self.top_mlp = nn.Sequential(
            _mlp(interaction_width, top_mlp, relu_last=True),
            nn.Linear(top_mlp[-1] if top_mlp else interaction_width, 1),
        )
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # The original initialisation: uniform(+-sqrt(1/n)) rows, Glorot-normal MLP weights.
        for embedding in self.embeddings:
            bound = (1.0 / embedding.num_embeddings) ** 0.5
            nn.init.uniform_(embedding.weight, -bound, bound)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
                nn.init.normal_(module.bias, std=(1.0 / module.out_features) ** 0.5)

    def interact_features(self, x: torch.Tensor, embedded: list[torch.Tensor]) -> torch.Tensor:
        """Dot interaction: (B, D) and F x (B, D) -> (B, D + (F + 1) * F / 2)."""
        batch_size, dim = x.shape
        stacked = torch.cat([x] + embedded, dim=1).view(batch_size, -1, dim)  # (B, F + 1, D)
        products = torch.bmm(stacked, torch.transpose(stacked, 1, 2))  # (B, F + 1, F + 1)
        flat_products = products[:, self.li, self.lj]  # (B, (F + 1) * F / 2)
        return torch.cat([x, flat_products], dim=1)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """dense (B, num_dense) float32, sparse (B, F) int64 -> logits (B,)."""
        x = self.bottom_mlp(dense)  # (B, D)
        embedded = [table(sparse[:, index]) for index, table in enumerate(self.embeddings)]
        return self.top_mlp(self.interact_features(x, embedded)).squeeze(1)

    def example_inputs(self, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Random (dense (B, num_dense), sparse (B, F)) on the model's device, ids in range."""
        return random_inputs(
            self.num_dense, self.table_sizes, batch_size, parameter_device(self), seed
        )


PRESETS: dict[str, dict] = {
    "small": dict(
        num_dense=4, table_sizes=(20, 50, 100, 30), embedding_dim=8,
        bottom_mlp=(16, 8), top_mlp=(32, 16),
    ),
    # facebookresearch/dlrm's Criteo-Kaggle command line (bottom 13-512-256-64-16, top 512-256-1).
    "default": dict(
        num_dense=NUM_DENSE, table_sizes=capped_table_sizes(), embedding_dim=16,
        bottom_mlp=(512, 256, 64, 16), top_mlp=(512, 256),
    ),
    # MLPerf training v1 DLRM MLP shapes, on the capped Kaggle tables (about 110M parameters).
    "mlperf": dict(
        num_dense=NUM_DENSE, table_sizes=capped_table_sizes(), embedding_dim=128,
        bottom_mlp=(512, 256, 128), top_mlp=(1024, 1024, 512, 256),
    ),
    # Wide MLPs and 26 x 200k-row tables (about 700M parameters, 2.8 GB fp32): GPU benchmarks only.
    # The bottom MLP ends in 128 because the dot interaction needs its width to equal D.
    "industrial": dict(
        num_dense=NUM_DENSE, table_sizes=(200_000,) * 26, embedding_dim=128,
        bottom_mlp=(2048, 1024, 512, 128), top_mlp=(4096, 4096, 2048, 1024),
    ),
}  # fmt: skip
PRESETS["criteo"] = PRESETS["default"]


def build(preset: str = "small", **overrides) -> DLRM:
    """DLRM from a named preset, with keyword overrides of its constructor arguments.

    Raises:
        ValueError: for an unknown preset name.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown DLRM preset {preset!r}; choose from {sorted(PRESETS)}")
    return DLRM(**{**PRESETS[preset], **overrides})

"""MMoE (Ma et al. 2018): multi-gate mixture of experts for multi-task CTR.

Dim letters: B batch, F sparse fields, D embedding dim, E experts, H expert width, T tasks.
All experts read x = cat(dense, flatten(embeddings)) and end in the same width H, because the
per-task mix `einsum("be,beh->bh")` sums their outputs; so the last layer of every expert and the
first layer of every tower form one coupled dim, and E couples each gate's output with the stack.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .criteo import NUM_DENSE, capped_table_sizes, parameter_device, random_inputs


def _mlp(in_features: int, widths: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    return nn.Sequential(*layers)


class MMoE(nn.Module):
    """Shared experts, one softmax gate and one tower per task; returns (B, T) logits.

    Args:
        num_dense: number of dense features.
        table_sizes: rows of each embedding table (F tables).
        embedding_dim: D.
        num_experts: E.
        expert_mlp: widths of each expert MLP; the last one is H.
        tower_mlp: hidden widths of each task tower; a Linear to 1 logit is appended.
        num_tasks: T.

    Example:
        >>> model = MMoE(4, (10, 20), 8, 3, (16,), (8,), 2)
        >>> model(*model.example_inputs(3)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        num_dense: int,
        table_sizes: Sequence[int],
        embedding_dim: int = 16,
        num_experts: int = 8,
        expert_mlp: Sequence[int] = (256, 128),
        tower_mlp: Sequence[int] = (64,),
        num_tasks: int = 2,
    ) -> None:
        super().__init__()
        self.num_dense = num_dense
        self.table_sizes = tuple(table_sizes)
        self.embeddings = nn.ModuleList(nn.Embedding(rows, embedding_dim) for rows in table_sizes)
        in_features = num_dense + len(self.table_sizes) * embedding_dim
        self.experts = nn.ModuleList(_mlp(in_features, expert_mlp) for _ in range(num_experts))
        self.gates = nn.ModuleList(nn.Linear(in_features, num_experts) for _ in range(num_tasks))
        expert_width = expert_mlp[-1] if expert_mlp else in_features
        tower_width = tower_mlp[-1] if tower_mlp else expert_width
        self.towers = nn.ModuleList(
            nn.Sequential(_mlp(expert_width, tower_mlp), nn.Linear(tower_width, 1))
            for _ in range(num_tasks)
        )
        for table in self.embeddings:
            nn.init.normal_(table.weight, std=0.01)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """dense (B, num_dense), sparse (B, F) -> logits (B, T)."""
        embedded = torch.stack(
            [table(sparse[:, index]) for index, table in enumerate(self.embeddings)], dim=1
        )  # (B, F, D)
        x = torch.cat([dense, embedded.flatten(start_dim=1)], dim=1)  # (B, num_dense + F * D)
        expert_outputs = torch.stack([expert(x) for expert in self.experts], dim=1)  # (B, E, H)
        logits = []
        for gate, tower in zip(self.gates, self.towers):
            weights = torch.softmax(gate(x), dim=-1)  # (B, E)
            mixed = torch.einsum("be,beh->bh", weights, expert_outputs)  # (B, H)
            logits.append(tower(mixed))  # (B, 1)
        return torch.cat(logits, dim=1)

    def example_inputs(self, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Random (dense (B, num_dense), sparse (B, F)) on the model's device, ids in range."""
        return random_inputs(
            self.num_dense, self.table_sizes, batch_size, parameter_device(self), seed
        )


PRESETS: dict[str, dict] = {
    "small": dict(
        num_dense=4, table_sizes=(20, 50, 100, 30), embedding_dim=8, num_experts=3,
        expert_mlp=(32, 16), tower_mlp=(8,), num_tasks=2,
    ),
    # Criteo-Kaggle-shaped inputs with two tasks (e.g. click and conversion).
    "default": dict(
        num_dense=NUM_DENSE, table_sizes=capped_table_sizes(), embedding_dim=16, num_experts=8,
        expert_mlp=(256, 128), tower_mlp=(64,), num_tasks=2,
    ),
}  # fmt: skip


def build(preset: str = "small", **overrides) -> MMoE:
    """MMoE from a named preset, with keyword overrides.

    Raises:
        ValueError: for an unknown preset name.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown MMoE preset {preset!r}; choose from {sorted(PRESETS)}")
    return MMoE(**{**PRESETS[preset], **overrides})

"""Importance of each channel of a group, aggregated over every tensor slice the channel owns.

``l2``/``l1``: magnitude of all member slices (the weight rows, the next layer's columns, biases,
norm scales), the group-level magnitude criterion of torch-pruning's ``GroupMagnitudeImportance``
computed on amgp-fx's own groups (torch-pruning's criteria take its own ``Group`` objects, built
by its autograd-walking dependency graph, which is what amgp-fx replaces). ``taylor``: |w * grad|
summed over members, needing gradients; ``random``: a baseline.
"""
from __future__ import annotations

import torch

from amgp_fx.groups.analyze import DependencyGraph
from amgp_fx.groups.model import Group, Role

CRITERIA = ("l2", "l1", "taylor", "random")
_SCORED_ROLES = {Role.PRODUCER, Role.CONSUMER, Role.BIAS, Role.SCALE, Role.SHIFT}


def _slice_norms(tensor: torch.Tensor, dim: int, criterion: str) -> torch.Tensor:
    """Per index of ``dim``: the magnitude of the slice (all other dims reduced)."""
    moved = tensor.detach().float().movedim(dim, 0).reshape(tensor.shape[dim], -1)
    if criterion == "l1":
        return moved.abs().sum(1)
    return moved.pow(2).sum(1)


def score_group(graph: DependencyGraph, group: Group, criterion: str = "l2",
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Scores of the group's present channels, shape (group.size,); higher means keep."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown importance criterion {criterion!r}; choose one of {CRITERIA}")
    if criterion == "random":
        return torch.rand(group.size, generator=generator)
    present_now = group.alive
    totals = torch.zeros(group.full_size, dtype=torch.float64)
    present_cache: dict[tuple, torch.Tensor] = {}
    for member in group.members:
        if not member.is_parameter or member.role not in _SCORED_ROLES:
            continue
        tensor = dict(graph.module.named_parameters())[member.tensor]
        if criterion == "taylor":
            if tensor.grad is None or tensor.grad.is_sparse:
                continue
            source = (tensor.detach() * tensor.grad).abs()
            norms = _slice_norms(source, member.dim, "l1")
        else:
            norms = _slice_norms(tensor, member.dim, criterion)
        key = (member.tensor, member.dim)
        if key not in present_cache:  # full-size positions present in the tensor now
            td = next(t for t in graph.tensor_dims if (t.tensor, t.dim) == key)
            present_cache[key] = torch.from_numpy(graph.present(td.channels))
        present = present_cache[key]
        full_positions = torch.nonzero(present).reshape(-1)
        current_index = torch.full((len(present),), -1, dtype=torch.long)
        current_index[full_positions] = torch.arange(len(full_positions))
        positions = torch.as_tensor(member.positions, dtype=torch.long)
        channels = torch.as_tensor(member.channels, dtype=torch.long)
        where = current_index[positions]
        ok = where >= 0
        totals.index_add_(0, channels[ok], norms.double().cpu()[where[ok]])
    if criterion == "l2":
        totals = totals.sqrt()
    return totals[torch.from_numpy(present_now)].float()


def score(graph: DependencyGraph, criterion: str = "l2", groups=None,
          generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Importance per channel for each group (default: every prunable group)."""
    chosen = groups if groups is not None else graph.prunable_groups()
    chosen = [graph.group(g) if isinstance(g, str) else g for g in chosen]
    return {g.id: score_group(graph, g, criterion, generator) for g in chosen}

"""Importance of each channel of a group, aggregated over every tensor slice the channel owns.

``l2``/``l1``: magnitude of all member slices (the weight rows, the next layer's columns, biases,
norm scales), the group-level magnitude criterion of torch-pruning's ``GroupMagnitudeImportance``
computed on amgp-fx's own groups (torch-pruning's criteria take its own ``Group`` objects, built
by its autograd-walking dependency graph, which is what amgp-fx replaces). ``taylor``: |w * grad|
summed over members, needing gradients; ``random``: a baseline.

``activation``: what the channel adds to its consumers on real data, ``E[x_j^2] * |W[:, j]|^2``
summed over the plain consumer ops that read it (``amgp_fx.activations``: linear and one-group
convolutions; x_j is the channel as the consumer sees it, on a batch of inputs). Weights alone
cannot see a unit that is silent on the data: a ReLU unit whose pre-activation is negative on every
row has large incoming weights (a high ``l2`` score) and adds nothing; one whose output is the same
on every row adds only a constant. With ``centered=True`` the variance ``E[x_j^2] - E[x_j]^2``
replaces the second moment (FLAP's fluctuation, An et al. 2024): what is left of a unit once its
mean output is folded into the consumers' biases (``AmgpConfig.fold_bias``). A group with a present
channel that no plain consumer reads (only an interaction, a concat into attention, a matmul by a
computed tensor) is scored by ``l2`` instead, so that the scores within a group share one scale.

Dim letters: C channels of a group.
"""
from __future__ import annotations

import torch

from amgp_fx.activations import ConsumerInput, WEIGHT_DIM, uses_of
from amgp_fx.groups.analyze import DependencyGraph
from amgp_fx.groups.model import Group, Member, Role
from amgp_fx.rescale import member_views

CRITERIA = ("l2", "l1", "taylor", "random", "activation")
DATA_CRITERIA = ("activation",)  # criteria that score on a batch of inputs (``stats``)
_SCORED_ROLES = {Role.PRODUCER, Role.CONSUMER, Role.BIAS, Role.SCALE, Role.SHIFT}


def _slice_norms(tensor: torch.Tensor, dim: int, criterion: str) -> torch.Tensor:
    """Per index of ``dim``: the magnitude of the slice (all other dims reduced)."""
    moved = tensor.detach().float().movedim(dim, 0).reshape(tensor.shape[dim], -1)
    if criterion == "l1":
        return moved.abs().sum(1)
    return moved.pow(2).sum(1)


def _current_positions(graph: DependencyGraph, member: Member,
                       cache: dict[tuple, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(channels, indices in the tensor now) of the member's positions present now, shapes (n,)."""
    key = (member.tensor, member.dim)
    if key not in cache:  # full-size positions present in the tensor now -> current index (-1: absent)
        td = next(t for t in graph.tensor_dims if (t.tensor, t.dim) == key)
        present = torch.from_numpy(graph.present(td.channels))
        full_positions = torch.nonzero(present).reshape(-1)
        current_index = torch.full((len(present),), -1, dtype=torch.long)
        current_index[full_positions] = torch.arange(len(full_positions))
        cache[key] = current_index
    where = cache[key][torch.as_tensor(member.positions, dtype=torch.long)]
    ok = where >= 0
    return torch.as_tensor(member.channels, dtype=torch.long)[ok], where[ok]


def score_group(graph: DependencyGraph, group: Group, criterion: str = "l2",
                generator: torch.Generator | None = None, *, stats: dict[str, ConsumerInput] | None = None,
                centered: bool = False) -> torch.Tensor:
    """Scores of the group's present channels, shape (group.size,); higher means keep.

    Args:
        criterion: one of ``CRITERIA``.
        stats: ``amgp_fx.activations.consumer_inputs`` of the model as it is now; needed by
            ``activation`` (``DATA_CRITERIA``), ignored otherwise.
        centered: ``activation`` scores the variance of each channel instead of its second moment.
    Raises:
        ValueError: an unknown criterion, or ``activation`` without ``stats``.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown importance criterion {criterion!r}; choose one of {CRITERIA}")
    if criterion == "random":
        return torch.rand(group.size, generator=generator)
    if criterion == "activation":
        if stats is None:
            raise ValueError("criterion 'activation' scores channels on data: pass "
                             "stats=amgp_fx.activations.consumer_inputs(graph, inputs)")
        energy = channel_energy(graph, group, stats, centered)
        return energy[torch.from_numpy(group.alive)].float() if energy is not None else score_group(graph, group, "l2")
    present_now = group.alive
    totals = torch.zeros(group.full_size, dtype=torch.float64)
    cache: dict[tuple, torch.Tensor] = {}
    parameters = dict(graph.module.named_parameters())
    for member in group.members:
        if not member.is_parameter or member.role not in _SCORED_ROLES:
            continue
        tensor = parameters[member.tensor]
        if criterion == "taylor":
            if tensor.grad is None or tensor.grad.is_sparse:
                continue
            source = (tensor.detach() * tensor.grad).abs()
            norms = _slice_norms(source, member.dim, "l1")
        else:
            norms = _slice_norms(tensor, member.dim, criterion)
        channels, where = _current_positions(graph, member, cache)
        totals.index_add_(0, channels, norms.double().cpu()[where])
    if criterion == "l2":
        totals = totals.sqrt()
    return totals[torch.from_numpy(present_now)].float()


def channel_energy(graph: DependencyGraph, group: Group, stats: dict[str, ConsumerInput],
                   centered: bool = False) -> torch.Tensor | None:
    """What each channel adds to its plain consumers on the data, ``sum over consumers of
    E[x_j^2] |W[:, j]|^2`` (``Var[x_j]`` with ``centered``): the ``activation`` score, and the
    energy ``amgp_fx.rescale`` compensates when it is measured.

    Returns:
        shape (full_size,), float64, zero for absent channels; None when a present channel reaches no
        plain consumer.
    Raises:
        ValueError: ``stats`` measured on a model of other widths.
    """
    totals = torch.zeros(group.full_size, dtype=torch.float64)
    covered = torch.zeros(group.full_size, dtype=torch.bool)
    for member, tensor, index, channels in member_views(graph, group, Role.CONSUMER, normalized=True):
        if not member.is_parameter or member.dim != WEIGHT_DIM:
            continue
        uses = uses_of(stats, member.tensor)
        if not uses:
            continue
        column_energy = _slice_norms(tensor, member.dim, "l2").double().cpu()  # |W[:, c]|^2
        moment = sum((use.variance() if centered else use.mean_square).cpu() for use in uses)  # (C,)
        if len(moment) != len(column_energy):
            raise ValueError(f"activation statistics of {member.tensor} have {len(moment)} channels, the weight has "
                             f"{len(column_energy)} now: measure them on the model as it is")
        totals.index_add_(0, channels, (column_energy * moment)[index])
        covered[channels] = True
    return totals if bool(covered[torch.from_numpy(group.alive)].all()) else None


def score(graph: DependencyGraph, criterion: str = "l2", groups=None,
          generator: torch.Generator | None = None, *, stats: dict[str, ConsumerInput] | None = None,
          centered: bool = False) -> dict[str, torch.Tensor]:
    """Importance per channel for each group (default: every prunable group); ``stats`` and
    ``centered`` as in ``score_group``."""
    chosen = groups if groups is not None else graph.prunable_groups()
    chosen = [graph.group(g) if isinstance(g, str) else g for g in chosen]
    return {g.id: score_group(graph, g, criterion, generator, stats=stats, centered=centered) for g in chosen}

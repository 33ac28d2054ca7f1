"""Growth by splitting (Net2WiderNet, Chen et al. 2016): regrown units start as copies of kept units.

Why: a unit regrown with zero outgoing weights adds capacity only once it has learned something,
late in a run at a decaying rate; a copy of a trained unit is useful at once. Each regrown unit
copies a kept unit of its group (incoming weights, biases, norm parameters and running statistics,
and their optimizer state), and the source's outgoing weights are shared between the source and its
copies in random shares that sum to one. The model computes what it computed before (exactly for
hidden units whose every path out goes through consumer weights, as for the other function-
preserving growths), and the unequal shares give the copies unequal gradients, so they drift apart.

Dim letters: C channels of a group.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from amgp_fx.groups.analyze import DependencyGraph
from amgp_fx.groups.model import Group, Role
from amgp_fx.rescale import member_views

__all__ = ["split_sources", "split_shares", "split_grow_"]

SHARE_SPREAD = 0.5  # raw shares are uniform on [1 - spread, 1 + spread] before normalising


def split_sources(kept: np.ndarray, regrown: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """The kept channel each regrown channel copies: a random order of the kept channels, repeated
    when more units come back than stayed, so that sources are used as evenly as possible."""
    if len(kept) == 0:
        raise ValueError("a split growth needs at least one kept channel to copy")
    order = torch.randperm(len(kept), generator=generator).numpy()
    return np.asarray(kept)[order[np.arange(len(regrown)) % len(kept)]]


def split_shares(sources: np.ndarray, regrown: np.ndarray, generator: torch.Generator) -> dict[int, float]:
    """Each unit's share of its family's outgoing weights (a source and its copies), summing to one
    per family; drawn at random so that no two members of a family train alike."""
    families: dict[int, list[int]] = {}
    for unit, source in zip(np.asarray(regrown).tolist(), np.asarray(sources).tolist()):
        families.setdefault(source, [source]).append(unit)
    shares: dict[int, float] = {}
    for members in families.values():
        raw = 1 - SHARE_SPREAD + 2 * SHARE_SPREAD * torch.rand(len(members), generator=generator, dtype=torch.float64)
        for unit, share in zip(members, (raw / raw.sum()).tolist()):
            shares[unit] = share
    return shares


def _paired(index: torch.Tensor, channel: torch.Tensor, mapping: Mapping[int, int]) -> tuple[torch.Tensor, ...]:
    """(destination indices, source indices, destination channels) of one member: the k-th position of
    a channel pairs with the k-th position of its source."""
    by_channel: dict[int, list[int]] = {}
    for i, c in zip(index.tolist(), channel.tolist()):
        by_channel.setdefault(c, []).append(i)
    dst, src, chans = [], [], []
    for d, s in mapping.items():
        to, frm = by_channel.get(d, []), by_channel.get(s, [])
        if len(to) != len(frm):
            raise ValueError(f"channel {d} and its source {s} hold {len(to)} and {len(frm)} positions")
        dst += to
        src += frm
        chans += [d] * len(to)
    return torch.tensor(dst, dtype=torch.long), torch.tensor(src, dtype=torch.long), torch.tensor(chans, dtype=torch.long)


def _state_slots(optimizers: Sequence[torch.optim.Optimizer], param: torch.Tensor):
    """Optimizer state tensors shaped like ``param`` (moments, accumulators), for every optimizer."""
    for optimizer in optimizers:
        for value in optimizer.state.get(param, {}).values():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape == param.shape:
                yield value


@torch.no_grad()
def split_grow_(graph: DependencyGraph, group: Group, kept: np.ndarray, regrown: np.ndarray,
                optimizers: Sequence[torch.optim.Optimizer], generator: torch.Generator) -> dict[int, int]:
    """Make the present, just regrown channels ``regrown`` of ``group`` copies of its ``kept`` channels
    (full-size ids), splitting the sources' outgoing weights; returns {regrown channel: its source}.

    Every member but the consumers (outgoing weights) gets the source's slice, and so does every
    optimizer state tensor shaped like a member's parameter; a consumer's slices of a family become
    the source's slice times each member's share (``split_shares``)."""
    sources = split_sources(kept, regrown, generator)
    copies = dict(zip(np.asarray(regrown).tolist(), sources.tolist()))
    shares = split_shares(sources, regrown, generator)
    family = {unit: copies.get(unit, unit) for unit in shares}  # every unit of a family -> its source
    for role in Role:
        for member, tensor, index, channel in member_views(graph, group, role, normalized=True):
            dim = member.dim
            if role is Role.CONSUMER:
                dst, src, chans = _paired(index, channel, family)
                factor = torch.tensor([shares[c] for c in chans.tolist()], dtype=torch.float64)
                shape = [1] * tensor.dim()
                shape[dim] = -1
                factor = factor.reshape(shape)
                dst, src = dst.to(tensor.device), src.to(tensor.device)
                tensor.index_copy_(dim, dst, tensor.index_select(dim, src) * factor.to(tensor.device, tensor.dtype))
                targets = list(_state_slots(optimizers, tensor))
            else:
                dst, src, _ = _paired(index, channel, copies)
                dst, src = dst.to(tensor.device), src.to(tensor.device)
                targets = [tensor, *_state_slots(optimizers, tensor)]
            for target in targets:  # a consumer's moments: every family member gets the gradient its source had
                target.index_copy_(dim, dst, target.index_select(dim, src))
    return copies

"""Keep each layer's input scale when units are removed, and give it back when they return.

Removing half the hidden units of a ReLU MLP removes about half of the variance of every next
layer's pre-activation; through the four hidden layers of a DLRM top MLP the logit's spread falls
about fourfold, and at a small Adam learning rate the pruned model spends most of its phase only
re-growing its weights (H200 DLRM benchmark at lr 1e-4: AMGP -0.019 AUC vs dense without this,
-0.015 with it; docs/benchmarks.md). A Linear layer sums its inputs, so the fix is the one inverted dropout
uses: multiply the outgoing weights (``Role.CONSUMER`` members) of the kept units by

    factor = sqrt(sum over present units of e_j / sum over kept units of e_j),

where the energy ``e_j = |outgoing weights of j|^2 * |incoming weights of j|^2`` estimates unit
j's share of the next layer's pre-activation variance (``|outgoing|^2`` alone when a group has
no producer weights). With equal units this is sqrt(present / kept); units that an ``l2`` or
``taylor`` criterion removes are weaker, and the factor shrinks accordingly.

Where the units' activations were measured on data (the ``activation`` criterion or ``fold_bias``
of ``AmgpConfig``), ``e_j`` is the measured ``E[x_j^2] * |outgoing weights of j|^2`` instead
(``amgp_fx.importance.channel_energy``), or with ``fold_bias`` ``Var[x_j] * |outgoing|^2``: the
fold gives back the removed units' mean (``amgp_fx.bias_fold``), so the rescale has only their
fluctuation to make up for.

A consumer whose outputs pass through a BatchNorm or LayerNorm (DCN-v2's deep tower) is left
alone: the normalization already restores the scale.

``AmgpHook`` computes the factors before a shrink, scales the kept units right after it and divides
the same factors out before growing back with ``grow_init="restore"``, so the regrown full-size
model has its pre-pruning scale; fresh growth keeps the scaled weights (the new units' outgoing
weights are zero, so nothing else changes).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from amgp_fx.groups.analyze import DependencyGraph
from amgp_fx.groups.model import Group, Role

__all__ = ["consumer_scales", "member_slices", "member_views", "scale_consumers_"]


_NORM_ROLES = (Role.SCALE, Role.RUNNING_VAR)


def _normalized(graph: DependencyGraph, tensor: str, dim: int) -> bool:
    """Whether the outputs of the layer that owns ``tensor`` (consuming along ``dim``) go through a
    normalization (BatchNorm, affine LayerNorm): its output channels' group has a norm's scale or
    running variance. Such a layer's output scale is normalized away, so it needs no compensation
    (scaling it would only shrink its effective learning rate and stale the running statistics)."""
    for group in graph.groups:
        producing = any(m.tensor == tensor and m.dim != dim and m.role is Role.PRODUCER for m in group.members)
        if producing and any(m.role in _NORM_ROLES for m in group.members):
            return True
    return False


def member_slices(graph: DependencyGraph, group: Group, role: Role, *, normalized: bool = False):
    """(tensor, dim, current indices (n,), group channel of each (n,)) of the group's present
    positions in each ``role`` member, in the tensor's current (possibly shrunk) coordinates;
    consumers whose outputs are normalized are left out unless ``normalized``."""
    for member, tensor, index, channel in member_views(graph, group, role, normalized=normalized):
        yield tensor, member.dim, index, channel


def member_views(graph: DependencyGraph, group: Group, role: Role, *, normalized: bool = False):
    """``member_slices`` with the ``Member`` itself first: (member, tensor, current indices (n,),
    group channel of each (n,))."""
    dims = {(td.tensor, td.dim): td for td in graph.tensor_dims}
    for member in group.members:
        if member.role is not role:
            continue
        if role is Role.CONSUMER and not normalized and _normalized(graph, member.tensor, member.dim):
            continue
        td = dims.get((member.tensor, member.dim))
        if td is None:
            continue
        present = graph.present(td.channels)
        current = np.cumsum(present) - 1  # full position -> index in the current tensor
        here = present[member.positions] & group.alive[member.channels]
        tensor = graph.module
        for part in member.tensor.split("."):
            tensor = getattr(tensor, part)
        yield (member, tensor, torch.from_numpy(current[member.positions[here]]),
               torch.from_numpy(member.channels[here]))


def _energy(graph: DependencyGraph, group: Group, role: Role) -> torch.Tensor | None:
    """(full_size,) sum of squares of each channel's ``role`` weights, or None without such members."""
    total = None
    for tensor, dim, index, channel in member_slices(graph, group, role):
        values = tensor.detach().index_select(dim, index.to(tensor.device)).float()
        squares = values.pow(2).movedim(dim, 0).reshape(len(index), -1).sum(dim=1).cpu()
        total = torch.zeros(group.full_size) if total is None else total
        total.index_add_(0, channel, squares)
    return total


def consumer_scales(graph: DependencyGraph, keep: Mapping[str, Sequence[int]],
                    energies: Mapping[str, torch.Tensor] | None = None) -> dict[str, float]:
    """Per group of ``keep`` (``shrink_``'s argument: positions among present channels), the factor
    that keeps the next layer's input variance when only those channels remain (1.0 for a group
    with no outgoing weights or nothing removed).

    ``energies`` (group id -> (full_size,)) replaces the weight-based estimate of each channel's
    share where it was measured on data (``amgp_fx.importance.channel_energy``): a unit that is
    silent on the data has large weights and no share, and the weight estimate would rescale the
    kept units for a loss that never happens."""
    factors: dict[str, float] = {}
    for group_id, positions in keep.items():
        group = graph.group(group_id)
        present = np.nonzero(group.alive)[0]
        kept = present[sorted(int(p) for p in positions)]
        outgoing = _energy(graph, group, Role.CONSUMER) if len(kept) < len(present) else None
        if outgoing is None:  # nothing removed, or no outgoing weights to compensate with
            factors[group_id] = 1.0
            continue
        measured = (energies or {}).get(group_id)
        if measured is not None:
            energy = measured.double().cpu()
        else:
            incoming = _energy(graph, group, Role.PRODUCER)
            energy = outgoing * incoming if incoming is not None else outgoing
        kept_energy = float(energy[torch.from_numpy(kept)].sum())
        all_energy = float(energy[torch.from_numpy(present)].sum())
        factors[group_id] = math.sqrt(all_energy / kept_energy) if kept_energy > 0 else 1.0
    return factors


@torch.no_grad()
def scale_consumers_(graph: DependencyGraph, factors: Mapping[str, float], *, inverse: bool = False) -> None:
    """Multiply (or with ``inverse`` divide) the outgoing weights of each group's present channels
    by its factor, in place; parameters keep their identity, so optimizers need no change. Call it
    on the shrunk model (after ``shrink_``, before ``grow_``), so the saved slices are untouched."""
    for group_id, factor in factors.items():
        if factor == 1.0:
            continue
        scale = 1.0 / factor if inverse else factor
        for tensor, dim, index, _ in member_slices(graph, graph.group(group_id), Role.CONSUMER):
            index = index.to(tensor.device)
            tensor.index_copy_(dim, index, tensor.index_select(dim, index) * scale)

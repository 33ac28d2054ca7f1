"""Fold what a shrink takes from the consumers' mean input into their biases (FLAP, An et al. 2024).

A plain consumer op (``amgp_fx.activations``: linear, one-group convolution) computes
``y = b + sum_j W[:, j] x_j``. Removing the channels R takes ``W[:, R] @ x_R`` from every row; its
mean over the data, ``W[:, R] @ E[x_R]``, can be given back through the bias, so that the shrunk
model's output at the mean input is what it was (first order: exact where the removed channels
are constant over the data, as a unit whose ReLU input is a positive constant is). A group's
channels are measured on a batch of real inputs (``consumer_inputs``) just before the shrink.

The fold keeps ``E[y]`` of every consumer through everything a shrink does to its weights, not only
the removal: it adds ``M_before - M_after`` to the bias, where ``M = sum over present channels of
W[:, j] E[x_j]`` before and after the edit. With ``rescale`` (``amgp_fx.rescale``) the kept units'
outgoing weights grow by s > 1 to give back the lost *variance*; that also moves their mean
contribution by ``(s - 1) W[:, K] E[x_K]``, which the fold takes back out, so the two split the work:
the bias restores the mean, the rescale the fluctuation around it. (Folding only the removed
units' mean on top of the rescale would restore the mean twice over.) A fade applies the same rule
at each of its steps with the means measured when it began, and the shrink after a finished fade
changes no weight and folds nothing more.

What a fold added belongs to the pruned phase, like the rescale: ``amgp_fx.switch`` subtracts it
where it divides the rescale out (at once at a restoring growth, in equal parts along a growth ramp)
and keeps it where the rescale stays (a fresh or a function-preserving growth without a ramp).

Not folded: a consumer without a bias (no parameter is created), a weight read by more than one
node (one bias, several means), consumers that are not plain ops. A convolution's fold uses each
kernel's sum, exact away from the padded border.

Dim letters: O output channels of a consumer op, C its input channels, n channels of a group.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from amgp_fx.activations import WEIGHT_DIM, ConsumerInput, uses_of
from amgp_fx.groups.analyze import DependencyGraph
from amgp_fx.groups.model import Group, Role
from amgp_fx.rescale import member_views

log = logging.getLogger(__name__)

__all__ = ["mean_outputs", "fold_change", "add_to_biases_", "sum_folds"]


@torch.no_grad()
def mean_outputs(graph: DependencyGraph, group: Group, channels: np.ndarray,
                 stats: Mapping[str, ConsumerInput]) -> dict[str, torch.Tensor]:
    """What ``channels`` add to the mean output of each foldable consumer, by its bias.

    Args:
        group: the group whose channels are measured.
        channels: full-size channel ids of ``group``, present now, shape (n,).
        stats: ``consumer_inputs`` of the model as it is now.
    Returns:
        bias FQN -> ``sum over channels j of W[:, j] E[x_j]`` (kernels summed), shape (O,), float64.
    """
    wanted = torch.from_numpy(np.asarray(channels, dtype=np.int64))
    totals: dict[str, torch.Tensor] = {}
    for member, tensor, index, channel in member_views(graph, group, Role.CONSUMER, normalized=True):
        uses = uses_of(stats, member.tensor)
        if member.dim != WEIGHT_DIM or len(uses) != 1 or uses[0].bias is None:
            continue
        use = uses[0]
        if len(use.mean) != tensor.shape[WEIGHT_DIM]:
            raise ValueError(f"activation statistics of {member.tensor} have {len(use.mean)} channels, the weight has "
                             f"{tensor.shape[WEIGHT_DIM]} now: measure them on the model as it is")
        chosen = index[torch.isin(channel, wanted)]
        if not chosen.numel():
            continue
        chosen = chosen.to(tensor.device)
        columns = tensor.detach().index_select(WEIGHT_DIM, chosen).double()  # (O, n, ...)
        columns = columns.movedim(WEIGHT_DIM, -1).reshape(columns.shape[0], -1, len(chosen)).sum(1)  # (O, n)
        added = columns @ use.mean.to(columns.device)[chosen]
        totals[use.bias] = totals[use.bias] + added if use.bias in totals else added
    return totals


def fold_change(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``before - after`` per bias (a bias missing on one side counts as zero there)."""
    change = {name: value.clone() for name, value in before.items()}
    for name, value in after.items():
        change[name] = change[name] - value if name in change else -value
    return change


@torch.no_grad()
def add_to_biases_(graph: DependencyGraph, deltas: Mapping[str, torch.Tensor],
                   weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Add ``weight`` x ``deltas[name]`` to each bias parameter, in place (parameters keep their
    identity, so optimizers need no change).

    Returns:
        bias FQN -> what was added, shape (O,) (a bias whose shape no longer fits is skipped and logged).
    """
    added = {}
    for name, delta in deltas.items():
        bias = graph.module.get_parameter(name)
        if tuple(bias.shape) != tuple(delta.shape):
            log.warning("bias fold of %s skipped: it has shape %s now, the fold %s", name, tuple(bias.shape),
                        tuple(delta.shape))
            continue
        step = (delta * weight).to(bias.device, bias.dtype)
        bias.add_(step)
        added[name] = step
    return added


def sum_folds(folds: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per bias, the sum of several folds."""
    total: dict[str, torch.Tensor] = {}
    for fold in folds:
        for name, value in fold.items():
            total[name] = total[name] + value.to(total[name]) if name in total else value.clone()
    return total

"""Result types of the dependency analysis: groups of channels and the tensor slices they own.

Glossary: a *channel* is one unit that can be removed (a neuron, an embedding dimension, a head);
a *group* is a set of channels that come from the same producer (one hidden layer, one embedding
width shared through an interaction); a *member* is one dimension of one parameter or buffer
together with the positions in it that belong to the group.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class Role(str, enum.Enum):
    """How a parameter dimension relates to the channels it holds; decides fresh initialisation."""

    PRODUCER = "producer"  # incoming weights (Linear rows, embedding columns): random on growth
    CONSUMER = "consumer"  # outgoing weights (next Linear's columns): zero on growth
    BIAS = "bias"  # zero on growth
    SCALE = "scale"  # norm weight: one on growth
    SHIFT = "shift"  # norm bias: zero on growth
    RUNNING_MEAN = "running_mean"  # zero on growth
    RUNNING_VAR = "running_var"  # one on growth
    OTHER = "other"  # zero on growth


@dataclass(frozen=True)
class Member:
    """One dimension of a parameter or buffer, and which of its positions belong to a group.

    ``positions[i]`` is an index into the full-size tensor dimension and ``channels[i]`` the
    channel (index into ``Group.channels``) it carries. A flattened (F, D) dimension lists F
    positions per embedding channel.
    """

    tensor: str
    dim: int
    positions: np.ndarray
    channels: np.ndarray
    role: Role
    is_parameter: bool

    def __repr__(self) -> str:  # numpy arrays make the default repr unreadable
        return f"Member({self.tensor}[dim {self.dim}], {len(self.positions)} positions, {self.role.value})"


@dataclass
class Group:
    """A set of channels that must be removed or restored together."""

    id: str
    name: str
    kind: str
    full_size: int
    members: list[Member] = field(default_factory=list)
    prunable: bool = True
    reason: str | None = None
    mask_equivalent: bool = True
    notes: tuple[str, ...] = ()
    alive: np.ndarray | None = None  # bool (full_size,): channels currently present
    channel_ids: np.ndarray | None = field(default=None, repr=False)  # (full_size,) base atom per channel
    owns_name: bool = field(default=True, repr=False)  # its first producer's dim holds exactly its channels

    @property
    def size(self) -> int:
        """Number of channels present now (``full_size`` until a shrink)."""
        return int(self.alive.sum()) if self.alive is not None else self.full_size

    @property
    def parameters(self) -> list[str]:
        return sorted({m.tensor for m in self.members if m.is_parameter})

    def __repr__(self) -> str:
        state = "prunable" if self.prunable else f"frozen: {self.reason}"
        return f"Group({self.id} {self.name!r}, {self.kind}, size {self.size}/{self.full_size}, {state})"


@dataclass(frozen=True)
class UnknownOp:
    """An op without a rule; the dimensions it touches are frozen."""

    node: str
    target: str
    stack_trace: str | None
    module_stack: str | None

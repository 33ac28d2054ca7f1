"""What a coupling rule sees: its node, the labels of its inputs, and verbs to couple them.

A *dim label* is an int64 array with one atom per index of a concrete dimension, or ``None`` for
a symbolic dimension (the batch) which is never pruned. A *tensor label* is a tuple of dim labels.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.fx as fx

from amgp_fx.groups.atoms import AtomTable
from amgp_fx.groups.model import Role


def as_size(size):
    """``size`` as an int when it is known, else the SymInt.

    A batch that tracing specialised half-way (a guard such as ``B == 4`` met after the first ops)
    leaves SymInts in the earlier nodes' values that are constants by now; they are concrete too,
    or one dim would be labelled as symbolic in one node and as concrete in the next.
    """
    if isinstance(size, torch.SymInt):
        value = size.node.maybe_as_int()
        return int(value) if value is not None else size
    return size


def is_concrete(size) -> bool:
    return isinstance(as_size(size), int)


def sizes_of(fake) -> tuple:
    """The shape of a fake tensor with every known size as an int (see :func:`as_size`)."""
    return tuple(as_size(s) for s in fake.shape)


class RuleContext:
    """Per-node view handed to a rule function."""

    def __init__(self, node: fx.Node, atoms: AtomTable, labels: dict, roles: dict, param_names: dict) -> None:
        self.node = node
        self.atoms = atoms
        self._labels = labels
        self._roles = roles
        self._param_names = param_names

    # -- reading ----------------------------------------------------------------------------
    def arg(self, index: int, name: str | None = None, default: Any = None) -> Any:
        """Positional argument ``index`` or keyword ``name`` of the node, else ``default``."""
        if index < len(self.node.args):
            return self.node.args[index]
        if name is not None and name in self.node.kwargs:
            return self.node.kwargs[name]
        return default

    def label(self, value) -> tuple | None:
        """The tensor label of a node argument (``None`` for non-tensors)."""
        if isinstance(value, fx.Node):
            lab = self._labels.get(value)
            return lab if isinstance(lab, tuple) else None
        return None

    @staticmethod
    def val(value):
        """The fake value of a node argument (FakeTensor, SymInt, ...) or the literal itself."""
        if isinstance(value, fx.Node):
            return value.meta.get("val")
        return value

    def shape(self, value) -> tuple:
        return sizes_of(self.val(value))

    @property
    def out(self):
        return self.node.meta.get("val")

    @property
    def out_shape(self) -> tuple:
        """The shape of the node's (single tensor) output, known sizes as ints."""
        return sizes_of(self.out)

    # -- minting ----------------------------------------------------------------------------
    def fresh(self, size, *, frozen: str | None = None, grouping: bool = False, kind: str = "other", what: str = ""):
        """New atoms for a dimension of ``size`` (``None`` if the size is symbolic)."""
        size = as_size(size)
        if not isinstance(size, int):
            return None
        atoms = self.atoms.new_block(size, f"{self.node.name}{what}", grouping=grouping, kind=kind)
        if frozen:
            self.atoms.freeze(atoms, frozen)
        return atoms

    def unit_dim(self, what: str):
        """The label of a size-1 dim an op inserts: frozen, because nothing can shrink it.

        Concatenated along that dim ((B, 1) columns, (B, 1, D) fields, (B, H, 1) experts), its atom
        would otherwise become a channel of the next layer that no rewrite can take out of the ``cat``
        (a whole input would have to go); ``stack`` freezes its new dim for the same reason.
        """
        return self.fresh(1, frozen=f"{self.node.name}: a size-1 dim inserted by {what} holds no channel")

    def fresh_tensor(self, fake, reason: str) -> tuple:
        """Frozen atoms for every dimension of ``fake`` (an output nobody can prune)."""
        return tuple(self.fresh(s, frozen=reason, what=f"[{d}]") for d, s in enumerate(sizes_of(fake)))

    # -- coupling ---------------------------------------------------------------------------
    def couple(self, left, right) -> None:
        """Make index i of ``left`` and index i of ``right`` one channel."""
        if left is None and right is None:
            return
        if left is None or right is None:
            self.freeze(right if left is None else left, f"{self._where()} couples it with a symbolic dimension")
            return
        if len(left) != len(right):
            if len(left) == 1 or len(right) == 1:
                return  # broadcasting: the size-1 side is repeated, not coupled
            self.freeze(left, f"{self._where()} couples dimensions of different sizes")
            self.freeze(right, f"{self._where()} couples dimensions of different sizes")
            return
        self.atoms.union_arrays(left, right)

    def broadcast(self, *labels, out_rank: int) -> tuple:
        """Couple right-aligned dimensions of broadcasting operands; return the output label."""
        out = []
        for k in range(1, out_rank + 1):
            dims = [lab[-k] for lab in labels if lab is not None and len(lab) >= k]
            full = [d for d in dims if d is None or len(d) != 1]
            chosen = full[0] if full else (dims[0] if dims else None)
            for other in full[1:]:
                self.couple(chosen, other)
            out.append(chosen)
        return tuple(reversed(out))

    def freeze(self, label, reason: str) -> None:
        """Freeze every atom of a dim label or tensor label."""
        if label is None:
            return
        if isinstance(label, tuple):
            for dim in label:
                self.freeze(dim, reason)
            return
        self.atoms.freeze(label, reason)

    def note(self, label, note: str) -> None:
        """Mark channels whose removal is not equivalent to zeroing them (normalisations)."""
        if label is None:
            return
        self.atoms.note(label, note)

    def role(self, value, dim: int, role: Role, kind: str = "hidden") -> None:
        """Record how a parameter's dimension relates to its channels (used for growth).

        A PRODUCER dimension decides which channels form one group.
        """
        name = self._param_names.get(value) if isinstance(value, fx.Node) else None
        if name is None:
            return
        rank = len(self.shape(value))
        dim = dim % rank
        self._roles.setdefault((name, dim), role)
        if role is Role.PRODUCER:
            self._roles.setdefault(("kind", name, dim), kind)
        lab = self._labels[value][dim]
        if role is Role.PRODUCER and lab is not None and len(lab):
            block = self.atoms.block_of(int(lab[0]))
            block.grouping = True
            block.kind = kind

    def _where(self) -> str:
        return f"{self.node.target} ({self.node.name})"


def normalize_dim(dim: int, rank: int) -> int:
    return dim % rank if rank else 0


def dims_arg(value, rank: int) -> list[int]:
    """A ``dim`` argument as a sorted list of non-negative dims (``None`` means all)."""
    if value is None:
        return list(range(rank))
    if isinstance(value, int):
        value = [value]
    return sorted({normalize_dim(d, rank) for d in value})


def seq(value) -> Sequence:
    return value if isinstance(value, (list, tuple)) else [value]


__all__ = ["RuleContext", "as_size", "sizes_of", "is_concrete", "normalize_dim", "dims_arg", "seq"]

"""Atoms: the unit of coupling in the dependency analysis.

Every index of every concrete tensor dimension in the traced graph is labelled with an *atom*.
Two atoms are united when the two indices must be removed together (a Linear's output row and the
next Linear's input column, both sides of a residual add, the contracted index of a ``bmm``).
An atom may also stand for a *product* of other atoms: ``flatten`` of a (F, D) tensor gives F*D
atoms, each the pair (f, d), so removing embedding dimension d removes F columns of the next layer.

Atoms live in *blocks*: the atoms minted together for one dimension of one value. Blocks that
*produce* channels (a Linear's output rows, an embedding table's columns, the factors of a
reshaped dimension) decide which channels form one group.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Block:
    """One dimension's worth of freshly minted atoms."""

    start: int
    size: int
    origin: str
    grouping: bool = False
    kind: str = "other"


class AtomTable:
    """Union-find over atoms with product substitutions, freeze reasons and notes.

    ``subst[root] = (a1, ..., ak)`` says the class ``root`` is the product of the classes of
    ``a1..ak`` (row-major), so it is removed when any factor is removed.
    """

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._size: list[int] = []
        self._block_of: list[int] = []
        self.blocks: list[Block] = []
        self._subst: dict[int, tuple[int, ...]] = {}
        self._frozen: dict[int, str] = {}
        self._notes: dict[int, set[str]] = {}

    # -- creation ---------------------------------------------------------------------------
    def new_block(self, size: int, origin: str, *, grouping: bool = False, kind: str = "other") -> np.ndarray:
        start = len(self._parent)
        block_id = len(self.blocks)
        self.blocks.append(Block(start, size, origin, grouping, kind))
        self._parent.extend(range(start, start + size))
        self._size.extend([1] * size)
        self._block_of.extend([block_id] * size)
        return np.arange(start, start + size, dtype=np.int64)

    def block_of(self, atom: int) -> Block:
        return self.blocks[self._block_of[atom]]

    def __len__(self) -> int:
        return len(self._parent)

    # -- union-find -------------------------------------------------------------------------
    def find(self, atom: int) -> int:
        parent = self._parent
        root = atom
        while parent[root] != root:
            root = parent[root]
        while parent[atom] != root:
            parent[atom], atom = root, parent[atom]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self._size[ra] < self._size[rb]:
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._size[ra] += self._size[rb]
        if rb in self._frozen:
            self._frozen.setdefault(ra, self._frozen.pop(rb))
        if rb in self._notes:
            self._notes.setdefault(ra, set()).update(self._notes.pop(rb))
        sa, sb = self._subst.get(ra), self._subst.pop(rb, None)
        if sb is None:
            return
        if sa is None:
            self._subst[ra] = sb
        elif len(sa) == len(sb):
            for x, y in zip(sa, sb):
                self.union(x, y)
        else:
            reason = "the same channels are reshaped into incompatible factorisations"
            for factor in sa + sb:
                self.freeze_atom(factor, reason)

    def union_arrays(self, left: np.ndarray, right: np.ndarray) -> None:
        for a, b in zip(left.tolist(), right.tolist()):
            if a != b:
                self.union(a, b)

    def new_products(self, factor_labels: list[np.ndarray], origin: str) -> np.ndarray:
        """Fresh atoms for the row-major product of several dims (what ``flatten`` makes)."""
        grids = np.meshgrid(*factor_labels, indexing="ij")
        flat = [g.reshape(-1).tolist() for g in grids]
        atoms = self.new_block(len(flat[0]), origin, kind="product")
        for i, atom in enumerate(atoms.tolist()):
            self._subst[atom] = tuple(f[i] for f in flat)
        return atoms

    def set_product(self, atom: int, factors: tuple[int, ...]) -> None:
        """Declare ``atom`` equal to the row-major product of ``factors``."""
        product = self.new_block(1, "product")[0]
        self._subst[int(product)] = tuple(int(f) for f in factors)
        self.union(atom, int(product))

    # -- annotations ------------------------------------------------------------------------
    def freeze_atom(self, atom: int, reason: str) -> None:
        self._frozen.setdefault(self.find(atom), reason)

    def note_atom(self, atom: int, note: str) -> None:
        self._notes.setdefault(self.find(atom), set()).add(note)

    # -- resolution -------------------------------------------------------------------------
    def resolve(self, atom: int, _depth: int = 0) -> tuple[int, ...]:
        """The base (un-substituted) roots whose product this atom is, flattened."""
        root = self.find(atom)
        factors = self._subst.get(root)
        if factors is None:
            return (root,)
        if _depth > 32:
            raise RecursionError("cyclic product of atoms")
        out: tuple[int, ...] = ()
        for f in factors:
            out += self.resolve(f, _depth + 1)
        return out

    def frozen_roots(self) -> dict[int, str]:
        return {self.find(r): why for r, why in self._frozen.items()}

    def noted_roots(self) -> dict[int, set[str]]:
        merged: dict[int, set[str]] = {}
        for r, notes in self._notes.items():
            merged.setdefault(self.find(r), set()).update(notes)
        return merged

    def has_product(self, atom: int) -> bool:
        return self.find(atom) in self._subst

"""Atoms: the unit of coupling in the dependency analysis.

Every index of every concrete tensor dimension in the traced graph is labelled with an *atom*.
Two atoms are united when the two indices must be removed together (a Linear's output row and the
next Linear's input column, both sides of a residual add, the contracted index of a ``bmm``).
An atom may also stand for a *product* of other atoms: ``flatten`` of a (F, D) tensor gives F*D
atoms, each the pair (f, d), so removing embedding dimension d removes F columns of the next layer.

Atoms live in *blocks*: the atoms minted together for one dimension of one value. Blocks that
*produce* channels (a Linear's output rows, an embedding table's columns, the factors of a
reshaped dimension) decide which channels form one group.

Unions happen one by one while the graph is walked; afterwards ``finalize`` computes every atom's
root at once with numpy, so that tables with millions of rows cost array operations, not loops.
"""
from __future__ import annotations

import bisect
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
    ``a1..ak`` (row-major), so it is removed when any factor is removed. ``shape[root]`` holds the
    factors' dim sizes: two products are the same channels factor by factor only when their
    factors have the same sizes ((4, 8) and (8, 4) index the same 32 positions differently).
    """

    def __init__(self) -> None:
        self._parent = np.zeros(1024, dtype=np.int64)
        self._count = 0
        self._size: dict[int, int] = {}
        self._starts: list[int] = []
        self.blocks: list[Block] = []
        self._subst: dict[int, tuple[int, ...]] = {}
        self._shape: dict[int, tuple[int, ...]] = {}
        self._frozen: list[tuple[np.ndarray, str]] = []
        self._notes: list[tuple[np.ndarray, str]] = []
        self._root: np.ndarray | None = None

    # -- creation ---------------------------------------------------------------------------
    def new_block(self, size: int, origin: str, *, grouping: bool = False, kind: str = "other") -> np.ndarray:
        start = self._count
        self._starts.append(start)
        self.blocks.append(Block(start, size, origin, grouping, kind))
        if start + size > len(self._parent):
            grown = np.zeros(max(2 * len(self._parent), start + size), dtype=np.int64)
            grown[:start] = self._parent[:start]
            self._parent = grown
        atoms = np.arange(start, start + size, dtype=np.int64)
        self._parent[start:start + size] = atoms
        self._count = start + size
        return atoms

    def block_index(self, atom: int) -> int:
        return bisect.bisect_right(self._starts, atom) - 1

    def block_of(self, atom: int) -> Block:
        return self.blocks[self.block_index(atom)]

    def __len__(self) -> int:
        return self._count

    def new_products(self, factor_labels: list[np.ndarray], origin: str) -> np.ndarray:
        """Fresh atoms for the row-major product of several dims (what ``flatten`` makes)."""
        if any(label is None for label in factor_labels):
            raise ValueError("a product of dims needs atoms for every factor (a symbolic dim has none)")
        shape = tuple(len(label) for label in factor_labels)
        grids = np.meshgrid(*factor_labels, indexing="ij")
        flat = [g.reshape(-1).tolist() for g in grids]
        atoms = self.new_block(len(flat[0]), origin, kind="product")
        for i, atom in enumerate(atoms.tolist()):
            self._subst[atom] = tuple(f[i] for f in flat)
            self._shape[atom] = shape
        return atoms

    # -- union-find (while walking the graph) -----------------------------------------------
    def find(self, atom: int) -> int:
        atom = int(atom)
        parent = self._parent
        root = atom
        while parent[root] != root:
            root = int(parent[root])
        while parent[atom] != root:
            parent[atom], atom = root, int(parent[atom])
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        sa_size, sb_size = self._size.get(ra, 1), self._size.get(rb, 1)
        if sa_size < sb_size:
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._size[ra] = sa_size + sb_size
        self._size.pop(rb, None)
        sa, sb = self._subst.get(ra), self._subst.pop(rb, None)
        shape_b = self._shape.pop(rb, None)
        if sb is None:
            return
        if sa is None:
            self._subst[ra], self._shape[ra] = sb, shape_b
        elif self._shape[ra] == shape_b:
            for x, y in zip(sa, sb):
                self.union(x, y)
        else:
            self.freeze(np.asarray(sa + sb), "the same channels are reshaped into incompatible factorisations")

    def union_arrays(self, left: np.ndarray, right: np.ndarray) -> None:
        for a, b in zip(left.tolist(), right.tolist()):
            if a != b:
                self.union(a, b)

    # -- annotations (recorded now, resolved in finalize) -----------------------------------
    def freeze(self, atoms: np.ndarray, reason: str) -> None:
        self._frozen.append((np.asarray(atoms, dtype=np.int64).reshape(-1), reason))

    def note(self, atoms: np.ndarray, note: str) -> None:
        self._notes.append((np.asarray(atoms, dtype=np.int64).reshape(-1), note))

    # -- after the walk ---------------------------------------------------------------------
    def finalize(self) -> None:
        """Compute every atom's root with vectorised pointer jumping; no unions after this."""
        parent = self._parent[: self._count].copy()
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        self._root = parent
        self.class_size = np.bincount(parent, minlength=self._count)
        self._subst_roots = np.fromiter(self._subst.keys(), dtype=np.int64, count=len(self._subst))

    def roots(self, atoms: np.ndarray) -> np.ndarray:
        return self._root[atoms]

    def resolve(self, atom: int, _depth: int = 0) -> tuple[int, ...]:
        """The base (un-substituted) roots whose product this atom is, flattened."""
        root = int(self._root[atom])
        factors = self._subst.get(root)
        if factors is None:
            return (root,)
        if _depth > 32:
            raise RecursionError("cyclic product of atoms")
        out: tuple[int, ...] = ()
        for f in factors:
            out += self.resolve(f, _depth + 1)
        return out

    def resolve_many(self, atoms: np.ndarray) -> np.ndarray:
        """(n, k) base roots of each atom, -1 padded (k is the largest product arity)."""
        roots = self._root[atoms]
        product = np.isin(roots, self._subst_roots) if len(self._subst_roots) else np.zeros(len(roots), bool)
        if not product.any():
            return roots.reshape(-1, 1)
        rows = {i: self.resolve(int(atoms[i])) for i in np.nonzero(product)[0].tolist()}
        width = max(len(r) for r in rows.values())
        out = np.full((len(roots), width), -1, dtype=np.int64)
        out[:, 0] = roots
        for i, r in rows.items():
            out[i, : len(r)] = r
        return out

    def _resolved_annotations(self, records) -> list[tuple[np.ndarray, str]]:
        out = []
        for atoms, text in records:
            if len(atoms):
                resolved = self.resolve_many(atoms)
                out.append((resolved[resolved >= 0], text))
        return out

    def frozen_bases(self) -> tuple[np.ndarray, list[str]]:
        """Per atom id: index into the returned reasons of its first freeze reason, or -1.

        A frozen product freezes all its factors.
        """
        reason_of = np.full(len(self), -1, dtype=np.int64)
        reasons: list[str] = []
        for bases, reason in self._resolved_annotations(self._frozen):
            unset = bases[reason_of[bases] < 0]
            if len(unset):
                reason_of[unset] = len(reasons)
                reasons.append(reason)
        return reason_of, reasons

    def noted_bases(self) -> list[tuple[np.ndarray, str]]:
        """(base ids, note) records: channels whose removal is not the same as zeroing them."""
        return self._resolved_annotations(self._notes)

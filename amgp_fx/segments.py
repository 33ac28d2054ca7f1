"""Segments of a group and which of its channels to keep per segment.

A group that spans a ``cat`` (five embedding tables and a dense tower concatenated into one x0, all
read by the same cross layers) holds channels owned by different tensors. A *segment* is a run of
channels held by the same set of parameter tensors: each table's columns are one segment, the cross
layers hold them all. Keeping the top-k channels of the whole group can drop a segment entirely,
which silently removes a feature (a tensor left with a zero-size dim); the ``balanced`` policy keeps
the same share of every segment instead, by importance within each segment.

Policies:
    ``balanced``: every segment keeps as close to ``width * size / full_size`` channels as the
        bounds allow (at least one unless ``allow_empty``), by importance within the segment.
    ``global``: the group's top-k by importance; unless ``allow_empty``, a segment left with
        nothing gets its best channel back in place of the weakest kept channel of a larger segment.
    ``auto`` (default): ``balanced`` for embedding groups and groups of several segments, else ``global``.

Example:
    >>> import numpy as np, torch
    >>> segments = [np.arange(0, 4), np.arange(4, 8)]
    >>> keep_channels(torch.tensor([9., 8, 7, 6, 1, 2, 3, 4]), 4, segments, "balanced")
    [0, 1, 6, 7]
    >>> keep_channels(torch.tensor([9., 8, 7, 6, 1, 2, 3, 4]), 4, segments, "global")
    [0, 1, 2, 7]
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from amgp_fx.groups.model import Group, Member, Role

__all__ = ["POLICIES", "MemberSize", "Segment", "group_segments", "keep_channels", "member_sizes",
           "resolve_policy", "segments_needed"]

POLICIES = ("auto", "balanced", "global")


@dataclass(frozen=True)
class Segment:
    """Channels (positions in the group) held by the same parameter tensors; ``owner`` names the
    narrowest tensor holding them (the embedding table or tower layer that produces them)."""

    channels: np.ndarray
    owner: str


@dataclass(frozen=True)
class MemberSize:
    """One member tensor dim of a group: its size now and after a plan, and the group's share of it."""

    tensor: str
    dim: int
    role: str
    channels: int  # the group's channels this dim holds
    before: int
    after: int

    @property
    def label(self) -> str:
        return f"{self.tensor}[{self.dim}]"


def _member_masks(group: Group) -> tuple[list[Member], np.ndarray]:
    members = [m for m in group.members if m.is_parameter] or list(group.members)
    masks = np.zeros((len(members), group.full_size), dtype=bool)
    for row, member in enumerate(members):
        masks[row, member.channels[member.channels >= 0]] = True
    return members, masks


def group_segments(group: Group) -> list[Segment]:
    """The group's segments in channel order (one segment for an ordinary layer)."""
    members, masks = _member_masks(group)
    if not len(members):
        return [Segment(np.arange(group.full_size), group.name)]
    _, labels = np.unique(masks.T, axis=0, return_inverse=True)
    labels = labels.reshape(-1)
    firsts = sorted({int(np.flatnonzero(labels == label)[0]): label for label in np.unique(labels)}.items())
    segments = []
    for _, label in firsts:
        channels = np.flatnonzero(labels == label)
        holders = [row for row in range(len(members)) if masks[row, channels[0]]]
        producers = [row for row in holders if members[row].role is Role.PRODUCER] or holders
        owner = min(producers, key=lambda row: (masks[row].sum(), row)) if producers else None
        segments.append(Segment(channels, f"{members[owner].tensor}[{members[owner].dim}]" if owner is not None
                                else group.name))
    return segments


def resolve_policy(policy: str, group: Group, segments: Sequence[Segment]) -> str:
    """``balanced`` or ``global`` for this group (``auto`` decides by kind and segment count)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown pruning policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if policy != "auto":
        return policy
    return "balanced" if group.kind == "embedding" or len(segments) > 1 else "global"


def segments_needed(segments: Sequence[Segment], allow_empty: bool) -> int:
    """The fewest channels a group may keep: one per segment unless emptying is allowed."""
    return 1 if allow_empty else len(segments)


def _quotas(width: int, sizes: np.ndarray, allow_empty: bool) -> np.ndarray:
    """Split ``width`` over segments as close as possible to their shares ``width * size / sum``:
    minimises the sum of squared distances to the shares with each quota in [1, size] ([0, size] with
    ``allow_empty``). Greedy from the lower bounds, one channel at a time to the segment whose
    distance drops most, which is optimal for a separable convex objective."""
    low = 0 if allow_empty else 1
    shares = width * sizes / sizes.sum()
    quotas = np.minimum(np.full(len(sizes), low, dtype=np.int64), sizes)
    heap = [(-(shares[i] - quotas[i] - 0.5), i) for i in range(len(sizes)) if quotas[i] < sizes[i]]
    heapq.heapify(heap)
    for _ in range(max(0, width - int(quotas.sum()))):
        if not heap:
            break
        _, index = heapq.heappop(heap)
        quotas[index] += 1
        if quotas[index] < sizes[index]:
            heapq.heappush(heap, (-(shares[index] - quotas[index] - 0.5), index))
    return quotas


def _top(scores: torch.Tensor, channels: np.ndarray, count: int) -> list[int]:
    """The ``count`` highest-scoring of ``channels``; ties broken by position (stable)."""
    if count <= 0:
        return []
    local = torch.sort(scores[torch.as_tensor(channels)], descending=True, stable=True).indices[:count]
    return channels[local.numpy()].tolist()


def keep_channels(scores: torch.Tensor, width: int, segments: Sequence[Segment | np.ndarray], policy: str,
                  allow_empty: bool = False) -> list[int]:
    """Channels to keep (ascending): ``width`` of them (more when one per segment needs more),
    chosen by ``policy`` (``balanced`` or ``global``; resolve ``auto`` with :func:`resolve_policy`)."""
    parts = [s.channels if isinstance(s, Segment) else np.asarray(s) for s in segments]
    width = max(width, 1 if allow_empty else len(parts))
    if policy == "balanced":
        sizes = np.asarray([len(p) for p in parts], dtype=np.int64)
        return sorted(c for part, quota in zip(parts, _quotas(width, sizes, allow_empty).tolist())
                      for c in _top(scores, part, quota))
    if policy != "global":
        raise ValueError(f"policy must be 'balanced' or 'global' here, got {policy!r}")
    kept = set(_top(scores, np.arange(len(scores)), width))
    if not allow_empty:
        segment_of = np.empty(len(scores), dtype=np.int64)
        for index, part in enumerate(parts):
            segment_of[part] = index
        for index, part in enumerate(parts):
            if kept.intersection(part.tolist()):
                continue
            counts = np.bincount(segment_of[sorted(kept)], minlength=len(parts))
            donors = [c for c in kept if counts[segment_of[c]] > 1]
            kept.discard(min(donors, key=lambda c: (float(scores[c]), -c)))
            kept.add(_top(scores, part, 1)[0])
    return sorted(kept)


def member_sizes(group: Group, shapes: dict[str, tuple[int, ...]],
                 removed: dict[tuple[str, int], int]) -> list[MemberSize]:
    """Every member tensor dim of ``group`` with its size now and after removing ``removed``
    positions per (tensor, dim) (summed over all groups a plan prunes)."""
    rows = []
    for member in group.members:
        before = int(shapes[member.tensor][member.dim]) if member.tensor in shapes else len(member.positions)
        rows.append(MemberSize(member.tensor, member.dim, member.role.value, len(np.unique(member.channels)),
                               before, before - removed.get((member.tensor, member.dim), 0)))
    return rows

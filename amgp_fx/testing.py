"""Reusable oracles for dependency groups and surgery (used by the test suite; usable on your models).

* Mask oracle: physically removing channels of a group equals zeroing every slice the group owns in
  an unpruned copy (for groups whose channels are not normalised together; see ``Group.notes``).
* Round trip: shrink, then grow with restored values, reproduces outputs and optimizer state exactly.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils import _pytree as pytree

from amgp_fx.groups.analyze import DependencyGraph, analyze
from amgp_fx.groups.model import Group
from amgp_fx.surgery import grow_, shrink_


def _tensor(module: nn.Module, name: str) -> torch.Tensor:
    obj = module
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def masked_copy(model: nn.Module, group: Group, dropped: np.ndarray) -> nn.Module:
    """A deep copy of ``model`` with every slice of the ``dropped`` channels of ``group`` zeroed."""
    clone = copy.deepcopy(model)
    dropped_set = set(np.asarray(dropped).tolist())
    with torch.no_grad():
        for member in group.members:
            positions = [p for p, c in zip(member.positions.tolist(), member.channels.tolist()) if c in dropped_set]
            if positions:
                tensor = _tensor(clone, member.tensor)
                tensor.index_fill_(member.dim, torch.tensor(sorted(set(positions)), device=tensor.device), 0)
    return clone


def random_keep(group: Group, fraction: float, generator: torch.Generator) -> list[int]:
    """A random subset of the group's present channels, at least one kept and one dropped."""
    size = group.size
    count = min(max(1, int(round(size * fraction))), size - 1)
    return sorted(torch.randperm(size, generator=generator)[:count].tolist())


def _run(module: nn.Module, args: tuple, kwargs: dict):
    module.eval()
    with torch.no_grad():
        return module(*args, **kwargs)


def assert_mask_oracle(model_factory: Callable[[], tuple[nn.Module, tuple]], *, fraction: float = 0.5, seed: int = 0,
                       atol: float = 1e-5, rtol: float = 1e-4, kinds=None, only_mask_equivalent: bool = True) -> list[str]:
    """For each prunable group: pruned outputs == masked outputs. Returns the ids checked.

    ``model_factory()`` must return a fresh ``(model, example_args)`` each call (same weights).
    """
    model, args = model_factory()
    graph = analyze(model, args)
    checked = []
    for group in graph.prunable_groups(kinds):
        if only_mask_equivalent and not group.mask_equivalent:
            continue
        model, args = model_factory()
        g = analyze(model, args)
        target = g.group(group.id)
        keep = random_keep(target, fraction, torch.Generator().manual_seed(seed))
        dropped = np.setdiff1d(np.arange(target.full_size), keep)
        expected = _run(masked_copy(model, target, dropped), args, {})
        shrink_(g, {target.id: keep})
        actual = _run(g.module, args, {})
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol,
                                   msg=lambda m, gid=group.id, name=group.name: f"group {gid} ({name}): {m}")
        checked.append(group.id)
    return checked


def assert_round_trip(graph: DependencyGraph, args: tuple, optimizer: torch.optim.Optimizer | None = None,
                      *, fraction: float = 0.5, seed: int = 0) -> None:
    """Shrink every prunable group, grow with restore: outputs and optimizer state are bit-identical."""
    gen = torch.Generator().manual_seed(seed)
    before = _run(graph.module, args, {})
    state_before = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    keep = {g.id: random_keep(g, fraction, gen) for g in graph.prunable_groups()}
    record = shrink_(graph, keep, optimizer)
    _run(graph.module, args, {})  # the pruned model runs
    grow_(graph, record, optimizer)
    after = _run(graph.module, args, {})
    pytree.tree_map(lambda a, b: torch.testing.assert_close(a, b, atol=0, rtol=0), before, after)
    if optimizer is not None:
        _assert_state_equal(state_before, optimizer.state_dict())


def _assert_state_equal(a: Any, b: Any) -> None:
    for pid, state in a["state"].items():
        for key, value in state.items():
            other = b["state"][pid][key]
            if isinstance(value, torch.Tensor):
                if value.is_sparse:  # representation may differ (coalescing); values must not
                    value, other = value.to_dense(), other.to_dense()
                torch.testing.assert_close(other, value, atol=0, rtol=0, msg=lambda m, k=key: f"optimizer state {k}: {m}")
            else:
                assert other == value, f"optimizer state {key}: {other} != {value}"


class GroupConformance:
    """Standard dependency-group tests for one model: subclass it in a pytest module and set
    ``factory`` (a callable returning a fresh ``(model, example_args)`` with fixed weights).

    Example::

        class TestMyModel(GroupConformance):
            factory = staticmethod(lambda: (MyModel(), (torch.randn(4, 13),)))
    """

    factory: Callable[[], tuple[nn.Module, tuple]]
    min_prunable_groups = 1

    def test_has_prunable_groups(self):
        model, args = self.factory()
        assert len(analyze(model, args).prunable_groups()) >= self.min_prunable_groups

    def test_mask_oracle(self):
        assert_mask_oracle(self.factory)

    def test_round_trip(self):
        model, args = self.factory()
        graph = analyze(model, args)
        optimizer = torch.optim.Adam(model.parameters())
        graph.module(*args).float().sum().backward()
        optimizer.step()
        assert_round_trip(graph, args, optimizer)

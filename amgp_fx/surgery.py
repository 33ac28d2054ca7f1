"""Physical shrink and regrow of dependency groups.

``shrink_`` removes channels from every parameter, buffer, gradient and optimizer state tensor
that holds them, in place (the same ``nn.Parameter`` objects, so an existing optimizer keeps
working), and rewrites the graph's size literals. The removed slices are kept on the CPU in the
returned ``SurgeryRecord``; ``grow_`` puts them back (or initialises new units: random incoming
and zero outgoing weights, which leaves the function unchanged at the moment of growth).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from amgp_fx.groups.analyze import DependencyGraph
from amgp_fx.groups.model import Role

_ZERO_ROLES = {Role.CONSUMER, Role.BIAS, Role.SHIFT, Role.RUNNING_MEAN, Role.OTHER}
_ONE_ROLES = {Role.SCALE, Role.RUNNING_VAR}


class SurgeryError(ValueError):
    """A shrink or grow request that cannot be carried out (names the group and the fix)."""


@dataclass
class TensorSurgery:
    """How one tensor was cut: per changed dim, the kept and removed positions (of the tensor as
    it was before that step) and the removed slices of its value and optimizer state."""

    name: str
    steps: list[tuple[int, torch.Tensor, torch.Tensor, Role]]
    saved: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for slices in self.saved.values() for t in slices)


@dataclass
class SurgeryRecord:
    """What a shrink changed; hand it to ``grow_`` to undo it. ``nbytes`` is the memory its saved slices hold."""

    alive_before: np.ndarray
    alive_after: np.ndarray
    tensors: list[TensorSurgery]
    sizes: dict[str, tuple[int, int]]  # group id -> (size before, size after)
    keep: dict[str, list[int]]  # group id -> kept channel positions (relative to before)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def saved_state(self) -> dict:
        """The removed slices as a weights_only-safe dict (for checkpoints)."""
        return {t.name: {k: list(v) for k, v in t.saved.items()} for t in self.tensors}

    def load_saved_state_(self, state: Mapping) -> None:
        for t in self.tensors:
            if t.name in state:
                t.saved = {k: list(v) for k, v in state[t.name].items()}


def optimizer_list(optimizers) -> list[torch.optim.Optimizer]:
    """An optimizer, a list of them, or an object with ``.optimizers`` (the trainer's) as a list."""
    if optimizers is None:
        return []
    if isinstance(optimizers, torch.optim.Optimizer):
        return [optimizers]
    if hasattr(optimizers, "optimizers"):
        return list(optimizers.optimizers)
    return list(optimizers)


def _get_tensor(module: nn.Module, name: str) -> torch.Tensor:
    obj = module
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _state_tensors(optimizers: list, param: torch.Tensor, shape) -> Iterable[tuple[str, dict, str]]:
    for i, opt in enumerate(optimizers):
        state = opt.state.get(param)
        if not state:
            continue
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and tuple(value.shape) == tuple(shape) and value.dim() > 0:
                yield f"opt{i}:{key}", state, key


def _new_alive(graph: DependencyGraph, keep: Mapping[str, Sequence[int]]) -> tuple[np.ndarray, dict, dict]:
    alive = graph.alive.copy()
    sizes, kept = {}, {}
    for group_id, indices in keep.items():
        group = graph.group(group_id)
        if not group.prunable:
            raise SurgeryError(f"group {group.id} ({group.name}) cannot be pruned: {group.reason}")
        index = torch.as_tensor(indices, dtype=torch.long).reshape(-1).tolist()
        size = group.size
        if len(index) == 0:
            raise SurgeryError(f"keeping no channel of group {group.id} ({group.name}) would empty it; keep at least one")
        if len(set(index)) != len(index) or min(index) < 0 or max(index) >= size:
            raise SurgeryError(f"keep indices of group {group.id} must be distinct and in [0, {size}); got {indices!r}")
        present = group.channel_ids[group.alive]
        dropped = np.setdiff1d(present, present[sorted(index)])
        alive[dropped] = False
        sizes[group.id] = (size, len(index))
        kept[group.id] = sorted(index)
    return alive, sizes, kept


def _plan(graph: DependencyGraph, before: np.ndarray, after: np.ndarray) -> dict[str, list]:
    """Per tensor, the (dim, keep, removed, role) steps taking it from ``before`` to ``after``."""
    plan: dict[str, list] = {}
    for td in graph.tensor_dims:
        was = graph.present(td.channels, before)
        now = graph.present(td.channels, after)
        if np.array_equal(was, now):
            continue
        local = now[was]
        keep = torch.from_numpy(np.nonzero(local)[0])
        removed = torch.from_numpy(np.nonzero(~local)[0])
        plan.setdefault(td.tensor, []).append((td.dim, keep, removed, td.role))
    return plan


def shrink_(graph: DependencyGraph, keep: Mapping[str, Sequence[int]], optimizers=None, *,
            saved_device: torch.device | str | None = "cpu") -> SurgeryRecord:
    """Remove channels in place from every tensor that holds them.

    Args:
        graph: the analysed model.
        keep: group id -> positions (among the group's present channels) to keep; shape (K,), 0 < K <= size.
        optimizers: an optimizer, a list of them, or an object with ``.optimizers``; their
            per-parameter state (momentum, Adam moments, Adagrad sums) is sliced too.
        saved_device: where the removed slices are kept: the CPU (default: no accelerator memory
            held) or ``None`` for each tensor's own device (no device-to-host copy; an AMGP run that
            grows them back in a few hundred steps saves that time).
    Returns:
        ``SurgeryRecord`` with the removed slices.
    Raises:
        SurgeryError: a frozen group, an empty keep list, or out-of-range indices.
    Example:
        A Linear 16->32 -> Linear 32->8 pair kept at 24 hidden units has weights (24, 16) and (8, 24).
    """
    opts = optimizer_list(optimizers)
    before = graph.alive.copy()
    after, sizes, kept = _new_alive(graph, keep)
    records = []
    for name, steps in _plan(graph, before, after).items():
        tensor = _get_tensor(graph.module, name)
        record = TensorSurgery(name, [(d, k, r, role) for d, k, r, role in steps])
        old_shape = tuple(tensor.shape)
        states = list(_state_tensors(opts, tensor, old_shape))
        record.saved["value"], new_value = _cut(tensor.data, steps, saved_device=saved_device)
        for key, state, field_name in states:
            record.saved[key], state[field_name] = _cut(state[field_name], steps, saved_device=saved_device)
        grad = tensor.grad if isinstance(tensor, nn.Parameter) else None
        tensor.grad = None
        _replace_data(tensor, new_value)
        if grad is not None and not grad.is_sparse:
            tensor.grad = _cut(grad, steps, save=False)[1]
        records.append(record)
    graph.set_alive_(after)
    sync_module_attributes_(graph.model)
    return SurgeryRecord(before, after, records, sizes, kept)


def _cut(tensor: torch.Tensor, steps, save: bool = True, saved_device: torch.device | str | None = "cpu"):
    if tensor.is_sparse:  # e.g. SGD momentum of a sparse embedding gradient
        saved, dense = _cut(tensor.to_dense(), steps, save, saved_device)
        return saved, dense.to_sparse(tensor.sparse_dim())
    saved = []
    for dim, keep, removed, _ in steps:
        if save:
            piece = tensor.index_select(dim, removed.to(tensor.device)).detach()  # a new tensor, not a view
            saved.append(piece if saved_device is None else piece.to(saved_device))
        tensor = tensor.index_select(dim, keep.to(tensor.device))
    return saved, tensor


def _replace_data(tensor: torch.Tensor, value: torch.Tensor) -> None:
    """Give ``tensor`` new data of another shape, keeping the object.

    Autograd caches a leaf's shape in its gradient accumulator, which lives as long as any earlier
    graph does (a ``loss`` still referenced), and ``.data =`` only drops that cache when the dtype
    or device changes. Passing through a tensor of another dtype forces a fresh accumulator.
    """
    if tensor.requires_grad:
        other = torch.float64 if value.dtype != torch.float64 else torch.float32
        tensor.data = torch.empty(0, dtype=other, device=value.device)
    tensor.data = value


def _fresh(role: Role, shape, like: torch.Tensor, generator) -> torch.Tensor:
    if role in _ONE_ROLES:
        return torch.ones(shape, dtype=like.dtype)
    if role is Role.PRODUCER:
        std = float(like.float().std()) if like.numel() > 1 else 0.0
        std = std if std > 0 else 0.02
        return torch.randn(shape, generator=generator, dtype=torch.float32).mul_(std).to(like.dtype)
    return torch.zeros(shape, dtype=like.dtype)


def _paste(tensor: torch.Tensor, steps, fills) -> torch.Tensor:
    if tensor.is_sparse:
        return _paste(tensor.to_dense(), steps, fills).to_sparse(tensor.sparse_dim())
    for (dim, keep, removed, _), fill in zip(reversed(steps), reversed(fills)):
        shape = list(tensor.shape)
        shape[dim] = len(keep) + len(removed)
        full = tensor.new_empty(shape)
        full.index_copy_(dim, keep.to(tensor.device), tensor)
        full.index_copy_(dim, removed.to(tensor.device), fill(dim, tuple(full.index_select(dim, removed.to(tensor.device)).shape), tensor))
        tensor = full
    return tensor


# optimizer state fields that hold squared-gradient statistics (Adam/AdamW/Adamax, Adagrad, RMSprop, Adadelta)
SECOND_MOMENTS = frozenset({"exp_avg_sq", "max_exp_avg_sq", "exp_inf", "sum", "square_avg", "acc_delta"})


def _zeros(role, dim: int, shape, current: torch.Tensor) -> torch.Tensor:
    return torch.zeros(shape, dtype=current.dtype)


def _kept_mean(role, dim: int, shape, current: torch.Tensor) -> torch.Tensor:
    """The kept channels' mean along ``dim`` (``current`` holds only those there), for each regrown one."""
    return current.mean(dim, keepdim=True).expand(shape)


def grow_(graph: DependencyGraph, record: SurgeryRecord, optimizers=None, *, init: str = "restore",
          optimizer_state: str = "restore", generator: torch.Generator | None = None) -> None:
    """Bring the channels removed by ``record`` back.

    Args:
        init: ``"restore"`` puts the saved values back; ``"fresh"`` initialises new units (random
            incoming weights, zero outgoing weights and biases, unit norm scales), which keeps the
            function unchanged for hidden units.
        optimizer_state: ``"restore"`` puts saved optimizer state back; ``"reset"`` zeros it;
            ``"mean"`` zeros first moments and gives second moments (``SECOND_MOMENTS``) the kept
            channels' mean, so that a regrown channel's first updates are the size of the others'.
    Raises:
        SurgeryError: the record is not the most recent shrink still in effect.
    """
    if init not in ("restore", "fresh") or optimizer_state not in ("restore", "reset", "mean"):
        raise SurgeryError("init must be 'restore' or 'fresh' and optimizer_state 'restore', 'reset' or 'mean'")
    if not np.array_equal(graph.alive, record.alive_after):
        raise SurgeryError("this record is not the most recent shrink in effect; grow the later shrinks first")
    opts = optimizer_list(optimizers)
    for ts in record.tensors:
        tensor = _get_tensor(graph.module, ts.name)
        shrunk_shape = tuple(tensor.shape)
        steps = ts.steps

        def restore_or(saved, fallback):
            def fill(dim, shape, current):
                index = [s[0] for s in steps].index(dim) if saved is None else None
                if saved is not None:
                    position = [s[0] for s in steps].index(dim)
                    return saved[position].to(current.device, current.dtype)
                return fallback(steps[index][3], dim, shape, current).to(current.device)
            return fill

        saved_value = ts.saved.get("value") if init == "restore" else None
        new_value = _paste(tensor.data, steps, [restore_or(saved_value, lambda role, dim, shape, cur: _fresh(role, shape, cur, generator))] * len(steps))
        for key, state, field_name in _state_tensors(opts, tensor, shrunk_shape):
            saved = ts.saved.get(key) if optimizer_state == "restore" else None
            fallback = _kept_mean if optimizer_state == "mean" and field_name in SECOND_MOMENTS else _zeros
            state[field_name] = _paste(state[field_name], steps, [restore_or(saved, fallback)] * len(steps))
        grad = tensor.grad if isinstance(tensor, nn.Parameter) else None
        tensor.grad = None
        _replace_data(tensor, new_value)
        if grad is not None and not grad.is_sparse:
            tensor.grad = _paste(grad, steps, [restore_or(None, _zeros)] * len(steps))
    graph.set_alive_(record.alive_before)
    sync_module_attributes_(graph.model)


def sync_module_attributes_(model: nn.Module) -> None:
    """Keep size attributes of standard layers (``in_features``, ``embedding_dim``, ...) truthful."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            module.embedding_dim = module.weight.shape[1]
        elif isinstance(module, nn.LayerNorm) and module.weight is not None:
            module.normalized_shape = tuple(module.weight.shape)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None:
            module.num_features = module.weight.shape[0]

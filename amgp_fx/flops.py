"""Training FLOPs of one step, counted on the traced graph with real shapes.

Forward and backward are counted by ``torch.utils.flop_counter.FlopCounterMode`` while the module
runs on *meta* tensors of the real shapes (parameters, buffers and inputs are replaced by meta
tensors through ``torch.func.functional_call``), so counting costs no memory and no compute, leaves
the CPU random generator as it was, and never touches the model's values, gradients or batch-norm
statistics. The counter counts matrix products (mm, addmm, bmm, baddbmm, convolutions, attention) as 2 FLOPs per
multiply-add, and only those: element-wise ops, embeddings and reductions are not counted. The
backward pass is whatever autograd runs, about twice the forward (the first layer computes no
input gradient when the input needs none).

Optimizer FLOPs are ``k`` per updated element, with ``k`` from ``OPTIMIZER_FLOPS_PER_ELEMENT``
(one per element-wise multiply, add, divide or square root of the update rule, scalar factors
folded), plus 2 for L2 weight decay (1 for AdamW's decoupled decay), 2 for momentum. A dense
gradient updates every element of its parameter; a sparse embedding gradient updates its
``nnz x D`` values (one row per looked-up id, before coalescing: an upper bound).

Dim letters: B batch, H hidden width.

Example:
    >>> import torch.nn as nn
    >>> mlp = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    >>> flops = count_training_flops(mlp, (torch.randn(4, 6),), batch_size=8)
    >>> flops.forward == 2 * 8 * (6 * 16 + 16 * 1), flops.backward == 2 * 8 * 6 * 16 + 4 * 8 * 16 * 1
    (True, True)
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OPTIMIZER_FLOPS_PER_ELEMENT", "TrainingFlops", "count_training_flops", "optimizer_flops_per_element",
           "mlp_training_flops", "graph_step_flops", "width_scale_for_flops"]

# FLOPs per updated element of the plain update rule (no weight decay, no momentum):
#   SGD        p -= lr * g                                              2
#   Adam       m = b1 m + (1-b1) g (3); v = b2 v + (1-b2) g^2 (4);
#              d = sqrt(v) / c2 + eps (3); p -= s * m / d (3)             13
#   AdamW      Adam                                                     13
#   SparseAdam Adam on the looked-up rows                               13
#   Adagrad    s += g^2 (2); d = sqrt(s) + eps (2); p -= clr * g / d (3)  7
#   RMSprop    v = a v + (1-a) g^2 (4); d = sqrt(v) + eps (2); p -= lr g / d (3)  9
#   other      assumed like Adam                                        13
OPTIMIZER_FLOPS_PER_ELEMENT: dict[str, int] = {
    "SGD": 2, "Adam": 13, "AdamW": 13, "SparseAdam": 13, "Adagrad": 7, "RMSprop": 9,
}
_DEFAULT_FLOPS_PER_ELEMENT = 13


@dataclasses.dataclass(frozen=True)
class TrainingFlops:
    """FLOPs of one training step at ``batch_size`` rows.

    Attributes:
        forward, backward, optimizer: FLOPs of each part.
        batch_size: B the count was made at.
        by_operator: forward+backward FLOPs per ATen op name ("aten.addmm", ...).
    """

    forward: int
    backward: int
    optimizer: int
    batch_size: int
    by_operator: dict[str, int] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def total(self) -> int:
        return self.forward + self.backward + self.optimizer

    def to_dict(self) -> dict[str, Any]:
        return {"forward": self.forward, "backward": self.backward, "optimizer": self.optimizer,
                "total": self.total, "batch_size": self.batch_size, "by_operator": dict(self.by_operator)}


def optimizer_flops_per_element(optimizer: torch.optim.Optimizer, group: dict | None = None) -> int:
    """``k`` for one parameter group of ``optimizer`` (its first group by default)."""
    group = group if group is not None else optimizer.param_groups[0]
    name = type(optimizer).__name__
    flops = OPTIMIZER_FLOPS_PER_ELEMENT.get(name, _DEFAULT_FLOPS_PER_ELEMENT)
    if group.get("weight_decay", 0):
        flops += 1 if name == "AdamW" else 2
    if group.get("momentum", 0):
        flops += 2 + (2 if group.get("nesterov") else 0)
    if group.get("amsgrad"):
        flops += 1
    return flops


def _resize_batch(example_inputs: Any, batch_size: int | None) -> Any:
    """Meta copies of the inputs, with dim 0 of every tensor of dim >= 1 set to ``batch_size``."""
    def meta(value):
        if not isinstance(value, torch.Tensor):
            return value
        shape = list(value.shape)
        if batch_size is not None and value.dim() >= 1:
            shape[0] = batch_size
        return torch.empty(shape, dtype=value.dtype, device="meta")
    return pytree.tree_map(meta, example_inputs)


class _OnMeta(TorchDispatchMode):
    """Keeps the count on meta: a tensor the module makes on a real device (``torch.zeros(n, 8)``,
    ``torch.arange(L)`` in ``forward``: a ``device=cpu`` a traced graph spells out) or holds as a
    constant is made or taken as a meta tensor, so it mixes with the meta parameters and inputs."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if isinstance(kwargs.get("device"), (torch.device, str)) and torch.device(kwargs["device"]).type != "meta":
            kwargs["device"] = torch.device("meta")
        args, kwargs = pytree.tree_map(
            lambda v: v.to("meta") if isinstance(v, torch.Tensor) and not v.is_meta else v, (args, kwargs))
        return func(*args, **kwargs)


def _as_args(example_inputs: Any) -> tuple:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def _op_name(op) -> str:
    return f"aten.{getattr(op, '__name__', str(op)).split('.')[0]}"


def _outputs_sum(output: Any) -> torch.Tensor:
    leaves = [t for t in pytree.tree_leaves(output) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not leaves:
        raise ValueError("count_training_flops: the module returned no floating-point tensor to differentiate")
    return sum(t.sum() for t in leaves)


def count_training_flops(module: nn.Module, example_inputs: Any, *, batch_size: int | None = None,
                         optimizers: Iterable[torch.optim.Optimizer] | torch.optim.Optimizer | None = None,
                         optimizer_flops: int | None = None,
                         shapes: Mapping[str, Sequence[int]] | None = None) -> TrainingFlops:
    """FLOPs of one training step (forward, backward, optimizer update) of ``module``.

    Args:
        module: the module as it runs now (after surgery, pass the graph's ``module``).
        example_inputs: positional inputs (a tuple); only shapes and dtypes are used.
        batch_size: B to count at (dim 0 of every input is replaced); None keeps the inputs' B.
        optimizers: the optimizers that update ``module``'s parameters; a parameter no
            optimizer holds is not updated. None: every trainable parameter is updated with
            ``optimizer_flops`` FLOPs per element (default 13, Adam's).
        optimizer_flops: ``k`` when ``optimizers`` is None.
        shapes: parameter or buffer FQN -> shape to count at instead of its current shape.
    Returns:
        ``TrainingFlops``.
    Raises:
        ValueError: the module returns no floating-point tensor.
    """
    shapes = shapes or {}

    def meta(name: str, tensor: torch.Tensor) -> torch.Tensor:
        return torch.empty(tuple(shapes.get(name, tensor.shape)), dtype=tensor.dtype, device="meta")

    names = {id(p): name for name, p in module.named_parameters()}
    params = {name: meta(name, p).requires_grad_(p.requires_grad) for name, p in module.named_parameters()}
    buffers = {name: meta(name, b) for name, b in module.named_buffers()}
    inputs = _resize_batch(_as_args(example_inputs), batch_size)
    first = next((t for t in pytree.tree_leaves(inputs) if isinstance(t, torch.Tensor) and t.dim() >= 1), None)
    rows = batch_size if batch_size is not None else (int(first.shape[0]) if first is not None else 1)
    trainable = [name for name, p in params.items() if p.requires_grad]
    from torch.utils.flop_counter import FlopCounterMode

    with torch.random.fork_rng(devices=[]):  # dropout on meta tensors still draws from the CPU generator
        with FlopCounterMode(display=False) as forward_counter, _OnMeta():
            output = torch.func.functional_call(module, {**params, **buffers}, inputs)
        with FlopCounterMode(display=False) as backward_counter, _OnMeta():
            grads = torch.autograd.grad(_outputs_sum(output), [params[n] for n in trainable], allow_unused=True)
    by_operator: dict[str, int] = {}
    for counter in (forward_counter, backward_counter):
        for op, flops in counter.get_flop_counts().get("Global", {}).items():
            by_operator[_op_name(op)] = by_operator.get(_op_name(op), 0) + int(flops)

    per_element = _per_element_table(module, names, optimizers, optimizer_flops)
    optimizer_total = 0
    for name, grad in zip(trainable, grads):
        k = per_element.get(name, 0)
        if grad is None or k == 0:
            continue
        updated = grad._values().numel() if grad.is_sparse else grad.numel()
        optimizer_total += k * updated
    return TrainingFlops(int(forward_counter.get_total_flops()), int(backward_counter.get_total_flops()),
                         int(optimizer_total), int(rows), by_operator)


def _per_element_table(module: nn.Module, names: dict[int, str], optimizers, optimizer_flops: int | None) -> dict:
    if optimizers is None:
        k = _DEFAULT_FLOPS_PER_ELEMENT if optimizer_flops is None else int(optimizer_flops)
        return {name: k for name in names.values()}
    if isinstance(optimizers, torch.optim.Optimizer):
        optimizers = [optimizers]
    elif hasattr(optimizers, "optimizers"):
        optimizers = optimizers.optimizers
    table: dict[str, int] = {}
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            k = optimizer_flops_per_element(optimizer, group)
            for p in group["params"]:
                if id(p) in names:
                    table[names[id(p)]] = table.get(names[id(p)], 0) + k
    return table


def mlp_training_flops(widths: Sequence[int], batch_size: int, optimizer_flops: int = 13) -> TrainingFlops:
    """Hand formula for an MLP of Linear layers ``widths[0] -> widths[1] -> ... -> widths[-1]``
    (with biases, element-wise activations) whose input needs no gradient.

    forward = sum_l 2 B n_l n_{l+1}; backward = sum_l 2 B n_l n_{l+1} (weight gradient) +
    sum_{l >= 1} 2 B n_l n_{l+1} (input gradient, not needed by the first layer);
    optimizer = k * sum_l (n_l n_{l+1} + n_{l+1}).

    Example:
        >>> mlp_training_flops([6, 16, 1], batch_size=8, optimizer_flops=2).total  # 1792 + 2048 + 258
        4098
    """
    pairs = list(zip(widths[:-1], widths[1:]))
    forward = sum(2 * batch_size * n_in * n_out for n_in, n_out in pairs)
    backward = forward + sum(2 * batch_size * n_in * n_out for n_in, n_out in pairs[1:])
    params = sum(n_in * n_out + n_out for n_in, n_out in pairs)
    return TrainingFlops(forward, backward, optimizer_flops * params, batch_size)


def graph_step_flops(graph, sizes: dict[str, int] | None = None, *, batch_size: int,
                     optimizers=None, optimizer_flops: int | None = None) -> TrainingFlops:
    """FLOPs of one step of an analysed model as it would be with group ``sizes`` (group id ->
    kept channels; unlisted groups stay as they are now), without changing any value.

    The graph's size literals are set for the hypothetical widths while counting and put back
    afterwards; parameters are replaced by meta tensors of the hypothetical shapes, so the
    model's tensors are not touched. Which channels are kept does not change the count.

    Raises:
        ValueError: a size outside [1, current size] or a frozen group.
    """
    alive_now = graph.alive.copy()
    alive = alive_now.copy()
    for group_id, size in (sizes or {}).items():
        group = graph.group(group_id)
        if not group.prunable and size != group.size:
            raise ValueError(f"group {group.id} ({group.name}) cannot be pruned: {group.reason}")
        if not 1 <= size <= group.size:
            raise ValueError(f"size of group {group.id} must be in [1, {group.size}], got {size}")
        present = group.channel_ids[group.alive]
        alive[present[size:]] = False
    module = graph.module
    shapes: dict[str, list[int]] = {}
    tensors = dict([*module.named_parameters(), *module.named_buffers()])
    for td in graph.tensor_dims:
        if td.tensor in tensors:
            shape = shapes.setdefault(td.tensor, list(tensors[td.tensor].shape))
            shape[td.dim] = int(graph.present(td.channels, alive).sum())
    try:
        graph.set_alive_(alive)
        return count_training_flops(module, graph.traced.args, batch_size=batch_size, optimizers=optimizers,
                                    optimizer_flops=optimizer_flops, shapes=shapes)
    finally:
        graph.set_alive_(alive_now)


def width_scale_for_flops(build: Callable[[float], nn.Module], target_flops: float,
                          example_inputs: Callable[[nn.Module], Any] | Any, *, batch_size: int,
                          optimizer_flops: int | None = None, low: float = 0.05, high: float = 1.0,
                          tolerance: float = 0.002) -> float:
    """The width scale s in [low, high] whose model ``build(s)`` costs ``target_flops`` per step.

    ``build`` is called under ``torch.device("meta")`` (no memory, no initialisation cost), so a
    700M-parameter model is cheap to try. Training FLOPs grow with s, so bisection finds it.

    Args:
        build: scale -> model (e.g. every hidden width times s, rounded to a multiple of 8).
        target_flops: FLOPs per step to match (e.g. an AMGP run's average).
        example_inputs: inputs, or a function model -> inputs.
        batch_size: B of the count.
    Returns:
        s, the largest scale whose model costs at most ``target_flops`` (``low`` if none does).

    Example:
        >>> import torch.nn as nn
        >>> build = lambda s: nn.Sequential(nn.Linear(8, round(64 * s)), nn.ReLU(), nn.Linear(round(64 * s), 1))
        >>> full = count_training_flops(build(1.0), (torch.randn(2, 8),), batch_size=32, optimizer_flops=0).total
        >>> scale = width_scale_for_flops(build, full / 2, (torch.randn(2, 8),), batch_size=32, optimizer_flops=0)
        >>> round(64 * scale)
        32
    """
    def flops(scale: float) -> int:
        with torch.device("meta"):
            model = build(scale)
        inputs = example_inputs(model) if callable(example_inputs) else example_inputs
        return count_training_flops(model, inputs, batch_size=batch_size, optimizer_flops=optimizer_flops).total

    if flops(high) <= target_flops:
        return high
    if flops(low) > target_flops:
        return low
    while high - low > tolerance:
        middle = (low + high) / 2
        low, high = (middle, high) if flops(middle) <= target_flops else (low, middle)
    return low if not math.isclose(flops(high), target_flops, rel_tol=1e-9) else high

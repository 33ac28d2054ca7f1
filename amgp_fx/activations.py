"""What each plain consumer op sees: per-channel statistics of its input on a batch of real inputs.

A *plain consumer* is a weight-times-input op whose weight is a parameter of the graph module:
``aten.linear`` (the input's last dim contracts with the weight's dim 1) and ``aten.conv1d/2d/3d``
with one group (the input's dim 1 contracts with the weight's dim 1). Each of them sums
``W[:, j] * x_j`` over its input channels j, so the channel's mean ``E[x_j]`` and second moment
``E[x_j^2]`` over the batch (and positions) say what the channel adds to the op's output:
``amgp_fx.importance`` scores channels by ``E[x_j^2] * |W[:, j]|^2`` (criterion ``activation``) and
``amgp_fx.bias_fold`` folds ``W[:, removed] @ E[x_removed]`` into the op's bias at a shrink.

Other ops that read a group's channels (an interaction ``bmm``, a ``cat`` into attention scores, a
matmul by a computed tensor) have no weight column per channel and are not recorded; callers fall
back to weight magnitudes for channels that no plain consumer reads.

One pass, one ``torch.fx.Interpreter`` subclass; it returns a result keyed by node name and writes
no ``node.meta``. The module runs in eval mode under ``no_grad`` (BatchNorm uses, and does not update,
its running statistics; dropout is off), and its train/eval mode is restored after.

Dim letters: B batch, C input channels of a consumer op (its weight's dim 1), O its output channels.

Example:
    >>> import torch, amgp_fx
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> graph = amgp_fx.analyze(model, (torch.randn(3, 4),))
    >>> stats = consumer_inputs(graph, (torch.randn(16, 4),))
    >>> [(s.weight, s.bias, tuple(s.mean.shape), s.rows) for s in stats.values()]
    [('0.weight', '0.bias', (4,), 16), ('2.weight', '2.bias', (8,), 16)]
    >>> bool((stats["linear_1"].mean >= 0).all())  # the second layer reads ReLU outputs
    True
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import fx

from amgp_fx.groups.analyze import DependencyGraph

__all__ = ["ConsumerInput", "PlainConsumer", "PLAIN_CONSUMERS", "WEIGHT_DIM", "consumer_inputs", "plain_consumer_nodes", "uses_of"]

_aten = torch.ops.aten


@dataclasses.dataclass(frozen=True)
class PlainConsumer:
    """How a weight-times-input op reads its weight: the argument positions of its weight and bias,
    the weight dim that holds its input channels (its dim 0 holds the output channels), and the
    input dim that carries them."""

    op: Any  # the OpOverload
    weight_arg: int
    bias_arg: int | None
    input_dim: int
    groups_arg: int | None = None  # convolutions: only groups == 1 is plain


PLAIN_CONSUMERS: dict[Any, PlainConsumer] = {
    rule.op: rule for rule in (
        PlainConsumer(_aten.linear.default, 1, 2, -1),
        PlainConsumer(_aten.conv1d.default, 1, 2, 1, groups_arg=6),
        PlainConsumer(_aten.conv2d.default, 1, 2, 1, groups_arg=6),
        PlainConsumer(_aten.conv3d.default, 1, 2, 1, groups_arg=6),
    )
}
WEIGHT_DIM = 1  # the input-channel dim of a plain consumer's weight (O, C, ...)


@dataclasses.dataclass(frozen=True)
class ConsumerInput:
    """The input of one plain consumer node, reduced per input channel.

    Attributes:
        node: the consumer node's name.
        weight: FQN of its weight parameter, shape (O, C, ...); ``WEIGHT_DIM`` holds the channels.
        bias: FQN of its bias parameter, shape (O,); None when the op has none (or it is not a parameter).
        mean: E[x_c] over the batch and positions, shape (C,), float64.
        mean_square: E[x_c^2], shape (C,), float64.
        rows: values averaged per channel (B times positions).
    """

    node: str
    weight: str
    bias: str | None
    mean: torch.Tensor
    mean_square: torch.Tensor
    rows: int

    def variance(self) -> torch.Tensor:
        """E[x_c^2] - E[x_c]^2, clamped at 0 (rounding), shape (C,)."""
        return (self.mean_square - self.mean.pow(2)).clamp_min(0.0)

    def to_state(self) -> dict[str, Any]:
        """Plain values and CPU tensors (``from_state`` rebuilds it), for checkpoints."""
        return {**dataclasses.asdict(self), "mean": self.mean.cpu(), "mean_square": self.mean_square.cpu()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ConsumerInput:
        return cls(**dict(state))


def _parameter_target(node: Any, parameters: Mapping[str, torch.nn.Parameter]) -> str | None:
    if isinstance(node, fx.Node) and node.op == "get_attr" and node.target in parameters:
        return str(node.target)
    return None


def plain_consumer_nodes(module: fx.GraphModule) -> dict[fx.Node, tuple[str, str | None, int]]:
    """Plain consumer nodes -> (weight FQN, bias FQN or None, input dim)."""
    parameters = dict(module.named_parameters())
    watched = {}
    for node in module.graph.nodes:
        rule = PLAIN_CONSUMERS.get(node.target) if node.op == "call_function" else None
        if rule is None or len(node.args) <= rule.weight_arg:
            continue
        weight = _parameter_target(node.args[rule.weight_arg], parameters)
        if weight is None:
            continue
        if rule.groups_arg is not None and len(node.args) > rule.groups_arg and node.args[rule.groups_arg] != 1:
            continue
        bias = None
        if rule.bias_arg is not None and len(node.args) > rule.bias_arg:
            bias = _parameter_target(node.args[rule.bias_arg], parameters)
        watched[node] = (weight, bias, rule.input_dim)
    return watched


class _InputRecorder(fx.Interpreter):
    """Runs the graph and reduces the input of every watched node per channel."""

    def __init__(self, module: fx.GraphModule, watched: Mapping[fx.Node, tuple[str, str | None, int]]) -> None:
        super().__init__(module)
        self.watched = watched
        self.result: dict[str, ConsumerInput] = {}

    def run_node(self, node: fx.Node) -> Any:
        if node in self.watched:
            weight, bias, dim = self.watched[node]
            args, _ = self.fetch_args_kwargs_from_env(node)
            values = args[0].detach()
            per_channel = values.movedim(dim, -1).reshape(-1, values.shape[dim]).double()
            self.result[node.name] = ConsumerInput(node.name, weight, bias, per_channel.mean(0),
                                                   per_channel.pow(2).mean(0), int(per_channel.shape[0]))
        return super().run_node(node)


def consumer_inputs(graph: DependencyGraph, inputs: tuple) -> dict[str, ConsumerInput]:
    """Per-channel input statistics of every plain consumer of ``graph.module``, as it is now
    (shrunk or not), on ``inputs``.

    Args:
        graph: the analysed model.
        inputs: the module's positional arguments for a batch of real rows (the same structure as
            its example inputs; ``amgp_fx.batch_inputs`` builds them from a ``Batch``).
    Returns:
        consumer node name -> ``ConsumerInput``, in graph order; mean and mean_square have the
        size of the weight's dim 1 now, shape (C,).
    Raises:
        ValueError: the inputs do not run through the graph (wrong structure, shapes or dtypes);
            names the node that failed.
    """
    module = graph.module
    recorder = _InputRecorder(module, plain_consumer_nodes(module))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            recorder.run(*inputs)
    except (RuntimeError, TypeError, ValueError, IndexError) as error:
        raise ValueError(f"consumer_inputs: the inputs do not run through the model's graph: {error}") from error
    finally:
        module.train(was_training)
    return recorder.result


def uses_of(stats: Mapping[str, ConsumerInput], weight: str) -> list[ConsumerInput]:
    """The recorded uses of parameter ``weight`` (one per consumer node that reads it)."""
    return [use for use in stats.values() if use.weight == weight]

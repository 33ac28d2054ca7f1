"""Put a module in inference mode for export: training flags off, on a copy when it is a GraphModule.

``model.eval()`` does nothing to a ``torch.export(...).module()`` graph: its dropout and batch-norm
nodes carry the training flag as a literal argument (``aten.dropout.default(x, 0.1, True)``) and the
module refuses ``.eval()``. :func:`inference_graph` copies the graph (parameters stay shared), flips
those literals to eval, and drops the ``num_batches_tracked += 1`` nodes that only training runs.
:func:`eval_mode` sets every submodule's ``training`` flag off for the duration of a ``with`` block
and restores the caller's flags on exit.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5))
    >>> gm = torch.export.export(model, (torch.randn(2, 4),)).module()
    >>> copy, flips = inference_graph(gm)
    >>> flips, torch.equal(copy(torch.ones(2, 4)), model[0](torch.ones(2, 4)))
    (1, True)
"""
from __future__ import annotations

import contextlib
import copy
import logging
from typing import Iterator

import torch
from torch import fx

logger = logging.getLogger(__name__)

aten = torch.ops.aten

__all__ = ["eval_mode", "inference_graph", "set_inference_literals_"]

# op -> (position of its training literal, eval value); batch norms flip only with running stats
_DROPOUT_FLAG = {
    aten.dropout.default: (2, False),
    aten.dropout_.default: (2, False),
    aten.feature_dropout.default: (2, False),
    aten.alpha_dropout.default: (2, False),
    aten.feature_alpha_dropout.default: (2, False),
    aten.native_dropout.default: (2, False),
    aten.rrelu.default: (3, False),
    aten.scaled_dot_product_attention.default: (4, 0.0),  # dropout_p
}
_BATCH_NORM_FLAG = {
    aten.batch_norm.default: 5,
    aten.native_batch_norm.default: 5,
    aten._native_batch_norm_legit_functional.default: 5,
}


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Set ``training = False`` on every submodule inside the block; restore each flag afterwards."""
    saved = [(submodule, submodule.training) for submodule in module.modules()]
    try:
        for submodule, _ in saved:
            submodule.training = False  # direct write: export GraphModules refuse .eval()
        yield module
    finally:
        for submodule, flag in saved:
            submodule.training = flag


def _set_arg(node: fx.Node, position: int, value) -> bool:
    argument = node.target._schema.arguments[position]
    if position < len(node.args):
        if isinstance(node.args[position], fx.Node) or node.args[position] == value:
            return False  # already eval (or computed at run time: left alone)
        node.args = node.args[:position] + (value,) + node.args[position + 1 :]
        return True
    default = argument.default_value if argument.has_default_value() else None
    if node.kwargs.get(argument.name, default) == value:
        return False
    node.kwargs = {**node.kwargs, argument.name: value}
    return True


def _is_batch_counter_increment(node: fx.Node) -> bool:
    target = node.args[0] if node.args else None
    return (
        node.target is aten.add_.Tensor
        and not node.users
        and isinstance(target, fx.Node)
        and target.op == "get_attr"
        and str(target.target).endswith("num_batches_tracked")
    )


def set_inference_literals_(graph_module: fx.GraphModule) -> int:
    """Flip training literals to eval in place; returns how many nodes changed."""
    graph = graph_module.graph
    changed = 0
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in _DROPOUT_FLAG:
            changed += _set_arg(node, *_DROPOUT_FLAG[node.target])
        elif node.target in _BATCH_NORM_FLAG:
            running_mean = node.args[3] if len(node.args) > 3 else node.kwargs.get("running_mean")
            if running_mean is not None:  # track_running_stats=False keeps batch statistics in eval too
                changed += _set_arg(node, _BATCH_NORM_FLAG[node.target], False)
        elif node.target is aten._native_batch_norm_legit.default and len(node.args) >= 8 and node.args[5]:
            data, weight, bias, running_mean, running_var, _, momentum, eps = node.args[:8]
            node.target = aten._native_batch_norm_legit_no_training.default
            node.args = (data, weight, bias, running_mean, running_var, momentum, eps)
            changed += 1
        elif _is_batch_counter_increment(node):
            graph.erase_node(node)
            changed += 1
    if changed:
        graph.lint()
        graph_module.recompile()
        logger.info("inference mode: %d training literal(s) flipped or removed", changed)
    return changed


def inference_graph(graph_module: fx.GraphModule) -> tuple[fx.GraphModule, int]:
    """A copy of ``graph_module`` (new graph, shared parameters) in inference mode, and the flip count.

    Args:
        graph_module: e.g. ``torch.export.export(model, args, strict=False).module()``; not modified.

    Returns:
        ``(copy, changed)``: the eval-mode copy and how many nodes :func:`set_inference_literals_` changed.
    """
    graph_copy = copy.deepcopy(graph_module.graph)
    module_copy = fx.GraphModule(graph_module, graph_copy)
    for name in ("_in_spec", "_out_spec", "meta"):
        if hasattr(graph_module, name) and not hasattr(module_copy, name):
            setattr(module_copy, name, getattr(graph_module, name))
    changed = set_inference_literals_(module_copy)
    module_copy.training = False  # submodules are shared with the caller's module: left as they are
    return module_copy, changed

"""Drop ``squeeze`` dims that are not 1, so ONNX Runtime can load the model.

PyTorch's ``x.squeeze(d)`` is a no-op when dim ``d`` is not 1 (code written for a size-1 config, such
as ``interests.squeeze(1)`` in a multi-interest model with one interest), and ``torch.export`` keeps
the node. ONNX's ``Squeeze`` on a dim that is not 1 is an error, so ONNX Runtime refuses to load the
exported file ("Dimension of input 1 must be 1 instead of 4"). This pass removes the dims whose size
is statically not 1, and the node itself when nothing is left (or when the traced output has the
input's rank, i.e. the trace squeezed nothing).

Example:
    >>> import torch
    >>> from amgp_fx.passes.noop_squeeze import drop_noop_squeezes
    >>> class M(torch.nn.Module):
    ...     def forward(self, x):
    ...         return x.squeeze(1) * 2
    >>> gm = torch.export.export(M(), (torch.randn(3, 4),)).module()
    >>> drop_noop_squeezes(gm)
    1
    >>> any("squeeze" in str(n.target) for n in gm.graph.nodes)
    False
"""
from __future__ import annotations

import torch
from torch import fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

from amgp_fx.passes import ExportPass

_SQUEEZES = {torch.ops.aten.squeeze.dim, torch.ops.aten.squeeze.dims}


def _shape(node) -> tuple | None:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _rewrite_one(node: fx.Node) -> bool:
    source, dims = node.args[0], node.args[1]
    shape, out = _shape(source), _shape(node)
    if shape is None or out is None or not shape:
        return False
    if len(out) == len(shape):  # the trace squeezed nothing: the node is the identity
        node.replace_all_uses_with(source)
        node.graph.erase_node(node)
        return True
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = sorted({d % len(shape) for d in dims})
    kept = [d for d in dims if not statically_known_true(shape[d] != 1)]
    if kept == dims:
        return False
    node.target, node.args = torch.ops.aten.squeeze.dims, (source, kept)
    return True


def drop_noop_squeezes(graph_module: fx.GraphModule) -> int:
    """Rewrite every squeeze of dims that are not 1 in place; returns how many nodes changed."""
    nodes = [n for n in graph_module.graph.nodes if n.op == "call_function" and n.target in _SQUEEZES]
    return sum(_rewrite_one(node) for node in nodes)


NOOP_SQUEEZE_PASS = ExportPass(
    "drop_noop_squeezes", drop_noop_squeezes,
    "remove squeeze dims that are not 1 (a no-op in PyTorch, an error in ONNX Runtime's Squeeze)",
)

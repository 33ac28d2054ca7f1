"""The table size behind each sparse input field of a model, read from its embedding tables.

Data made for a model (synthetic rows, hashed or vocabulary ids of a user's file) must fit its
tables; the ids of an 8-row example batch say almost nothing about their sizes. This module runs
the model once on its example inputs and watches every embedding lookup: `nn.Embedding` /
`nn.EmbeddingBag` modules of an eager model (forward pre-hooks), or the `aten.embedding*` nodes
of a GraphModule (an fx Interpreter), whose weight is a `get_attr`. Each lookup is matched to the
sparse column whose ids it received (a model that shifts or hashes ids before the lookup matches
none); one table indexed by `ids + per-field offsets` gives each field the rows between its offset
and the next. When a column is left unmatched, the answer is None (not a guess).

Dim letters: B batch, F sparse fields.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["model_table_sizes"]


def model_table_sizes(module: nn.Module, inputs: tuple, sparse_index: int = 1) -> list[int] | None:
    """Rows of the table each of the F columns of `inputs[sparse_index]` (B, F) int64 is looked up
    in, or None when the lookups cannot be matched to the columns.

    Example:
        >>> class Two(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b = nn.Embedding(7, 2), nn.Embedding(30, 2)
        ...     def forward(self, dense, sparse):
        ...         return (self.b(sparse[:, 1]) + self.a(sparse[:, 0])).sum(1) + dense.sum(1)
        >>> model_table_sizes(Two(), (torch.zeros(4, 3), torch.tensor([[1, 2], [3, 4], [5, 6], [0, 9]])))
        [7, 30]
    """
    sparse = inputs[sparse_index]
    if not isinstance(sparse, torch.Tensor) or sparse.dim() != 2 or sparse.dtype != torch.int64:
        return None
    try:
        calls = _graph_lookups(module, inputs) if isinstance(module, torch.fx.GraphModule) \
            else _eager_lookups(module, inputs)
    except Exception:  # noqa: BLE001 - a model that cannot be watched has no answer, not an error
        return None
    sizes = _match(calls, sparse)
    if sizes is None or any(size <= int(sparse[:, f].max()) for f, size in enumerate(sizes) if sparse.shape[0]):
        return None
    return sizes


def _eager_lookups(module: nn.Module, inputs: tuple) -> list[tuple[int, int, torch.Tensor]]:
    """(table id, rows, ids) of every Embedding/EmbeddingBag call of one forward pass, in call order."""
    calls: list[tuple[int, int, torch.Tensor]] = []

    def record(table, args):
        if args and isinstance(args[0], torch.Tensor):
            calls.append((id(table.weight), int(table.weight.shape[0]), args[0].detach()))

    handles = [child.register_forward_pre_hook(record) for child in module.modules()
               if isinstance(child, (nn.Embedding, nn.EmbeddingBag))]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _graph_lookups(module: torch.fx.GraphModule, inputs: tuple) -> list[tuple[int, int, torch.Tensor]]:
    """The same for a GraphModule's `aten.embedding*` nodes whose weight is a get_attr."""
    calls: list[tuple[int, int, torch.Tensor]] = []

    class Watcher(torch.fx.Interpreter):
        def run_node(self, node):
            result = super().run_node(node)
            if node.op == "call_function" and "embedding" in str(node.target) and len(node.args) > 1 \
                    and isinstance(node.args[0], torch.fx.Node) and node.args[0].op == "get_attr":
                weight, ids = self.env[node.args[0]], self.env.get(node.args[1]) \
                    if isinstance(node.args[1], torch.fx.Node) else None
                if isinstance(weight, torch.Tensor) and weight.dim() == 2 and isinstance(ids, torch.Tensor):
                    calls.append((id(weight), int(weight.shape[0]), ids.detach()))
            return result

    with torch.no_grad():
        Watcher(module).run(*inputs)
    return calls


def _match(calls: list[tuple[int, int, torch.Tensor]], sparse: torch.Tensor) -> list[int] | None:
    batch, fields = sparse.shape
    sizes: list[int | None] = [None] * fields
    for _, rows, ids in calls:
        flat = ids.reshape(-1)
        columns = [f for f in range(fields) if flat.numel() == batch and torch.equal(flat, sparse[:, f])]
        free = [f for f in columns if sizes[f] is None]
        if free:
            sizes[free[0]] = rows
        elif not columns:
            offsets = _offsets(ids, sparse)
            if offsets is not None and sizes == [None] * fields:
                bounds = offsets + [rows]
                return [bounds[f + 1] - bounds[f] for f in range(fields)]
    return None if any(size is None for size in sizes) else [int(size) for size in sizes]


def _offsets(ids: torch.Tensor, sparse: torch.Tensor) -> list[int] | None:
    """Per-field offsets when `ids` is `sparse + offsets` (one table for all fields), else None."""
    if ids.numel() != sparse.numel() or sparse.shape[0] == 0:
        return None
    shift = ids.reshape(sparse.shape) - sparse
    offsets = shift[0]
    if not bool((shift == offsets).all()) or int(offsets[0]) != 0 or not bool((offsets[1:] > offsets[:-1]).all()):
        return None
    return [int(value) for value in offsets]

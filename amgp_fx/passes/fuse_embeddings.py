"""Fuse per-feature ``aten.embedding`` lookups of equal dim into one lookup in a concatenated table.

DLRM-style models look up F tables one by one: F ``Gather`` s (plus F column selects and a concat)
in ONNX, each a kernel launch. This pass stacks the F tables into one ``(sum of rows, D)`` buffer,
adds per-table row offsets to the ids and does one lookup ``(B, F, D)``. The F results become
``out[:, f]``; where they fed ``torch.stack(..., dim=1)`` or ``torch.cat(..., dim=1)`` in order, the
stack/cat takes ``out`` (or ``out.flatten(1)``) directly, and ids that were ``sparse[:, f]`` for
consecutive f become one slice.

It copies the tables (memory for one more set of embeddings during export) and is not in
:func:`amgp_fx.passes.default_passes`: add ``FUSE_EMBEDDINGS_PASS`` where it measures faster.

Dim letters: B batch, F fused fields, D embedding dim, R rows of the fused table.

Example:
    >>> import torch
    >>> class TwoTables(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b = torch.nn.Embedding(5, 3), torch.nn.Embedding(7, 3)
    ...     def forward(self, sparse):
    ...         return torch.stack([self.a(sparse[:, 0]), self.b(sparse[:, 1])], dim=1)
    >>> model, ids = TwoTables(), torch.tensor([[4, 6], [0, 1]])
    >>> gm = torch.export.export(model, (ids,)).module()
    >>> fuse_embedding_lookups(gm), torch.equal(gm(ids), model(ids))
    (2, True)
"""
from __future__ import annotations

import logging
from collections import defaultdict

import torch
from torch import fx

from amgp_fx.passes import ExportPass, attribute_tensor

logger = logging.getLogger(__name__)

aten = torch.ops.aten

__all__ = ["FUSE_EMBEDDINGS_PASS", "fuse_embedding_lookups"]


def _lookup_key(graph_module: fx.GraphModule, node: fx.Node):
    """(D, dtype, device, ids shape) for a plain ``embedding(weight, ids)`` node, else None."""
    if node.op != "call_function" or node.target is not aten.embedding.default:
        return None
    padding_idx = node.args[2] if len(node.args) > 2 else node.kwargs.get("padding_idx", -1)
    if padding_idx != -1:
        return None  # padding rows have special gradients; forward is the same, but keep it simple
    # scale_grad_by_freq and sparse only change the backward pass: fine for an inference export
    weight, ids = node.args[0], node.args[1]
    table = attribute_tensor(graph_module, weight)
    ids_value = ids.meta.get("val") if isinstance(ids, fx.Node) else None
    if table is None or table.dim() != 2 or ids_value is None or ids_value.dim() != 1:
        return None
    return table.shape[1], table.dtype, table.device, str(tuple(ids_value.shape))


def _column_of(node) -> tuple[fx.Node, int] | None:
    """(source, f) when ``node`` is ``source[:, f]`` (select on dim 1, maybe after a full slice)."""
    if not (isinstance(node, fx.Node) and node.target is aten.select.int and node.args[1] == 1):
        return None
    source = node.args[0]
    if isinstance(source, fx.Node) and source.target is aten.slice.Tensor and tuple(source.args[1:3]) == (0, 0):
        end = source.args[3] if len(source.args) > 3 else None
        if end is None or end >= 2**62:
            source = source.args[0]
    return source, node.args[2]


def _fused_ids(graph: fx.Graph, lookups: list[fx.Node]) -> fx.Node:
    """(B, F) ids: one slice when they are consecutive columns of one tensor, else a stack."""
    columns = [_column_of(node.args[1]) for node in lookups]
    if all(columns) and len({source for source, _ in columns}) == 1:
        source, first = columns[0]
        if first >= 0 and [f for _, f in columns] == list(range(first, first + len(columns))):
            return graph.call_function(aten.slice.Tensor, (source, 1, first, first + len(columns)))
    return graph.call_function(aten.stack.default, ([node.args[1] for node in lookups], 1))


def _use_whole_output(graph: fx.Graph, lookups: list[fx.Node], fused: fx.Node) -> int:
    """Where a stack/cat on dim 1 takes all lookups in order, feed it the fused (B, F, D) output."""
    rewired = 0
    users = {user for node in lookups for user in node.users}
    for user in users:
        if user.target not in (aten.stack.default, aten.cat.default) or not isinstance(user.args[0], (list, tuple)):
            continue
        dim = user.args[1] if len(user.args) > 1 else user.kwargs.get("dim", 0)
        pieces = list(user.args[0])
        if dim != 1 or len(pieces) < len(lookups):
            continue
        for start in range(len(pieces) - len(lookups) + 1):
            if pieces[start : start + len(lookups)] != lookups:
                continue
            if user.target is aten.stack.default and len(pieces) == len(lookups):
                user.replace_all_uses_with(fused)
            elif user.target is aten.cat.default:
                with graph.inserting_before(user):
                    flat = graph.call_function(aten.flatten.using_ints, (fused, 1, 2))  # (B, F * D)
                user.args = (pieces[:start] + [flat] + pieces[start + len(lookups) :], *user.args[1:])
            else:
                break
            rewired += 1
            break
    return rewired


def _fuse_group(graph_module: fx.GraphModule, lookups: list[fx.Node], index: int) -> bool:
    graph = graph_module.graph
    order = {node: position for position, node in enumerate(graph.nodes)}
    # the fused lookup goes after the last ids; every user of a lookup must come later
    point = max((node.args[1] for node in lookups), key=order.__getitem__)
    if any(order[user] <= order[point] for node in lookups for user in node.users):
        logger.info("embedding lookups %s: a result is used before the last ids exist; not fused",
                    [node.name for node in lookups])
        return False
    tables = [attribute_tensor(graph_module, node.args[0]) for node in lookups]
    rows = torch.tensor([0] + [t.shape[0] for t in tables[:-1]], device=tables[0].device).cumsum(0)
    weight_name, offsets_name = f"_fused_embedding_weight_{index}", f"_fused_embedding_offsets_{index}"
    graph_module.register_buffer(weight_name, torch.cat([t.detach() for t in tables]))  # (R, D)
    graph_module.register_buffer(offsets_name, rows)  # (F,)
    with graph.inserting_before(point.next):
        ids = _fused_ids(graph, lookups)  # (B, F)
        shifted = graph.call_function(aten.add.Tensor, (ids, graph.get_attr(offsets_name)))
        fused = graph.call_function(aten.embedding.default, (graph.get_attr(weight_name), shifted))  # (B, F, D)
        columns = [graph.call_function(aten.select.int, (fused, 1, position)) for position in range(len(lookups))]
    rewired = _use_whole_output(graph, lookups, fused)
    for node, column in zip(lookups, columns):
        node.replace_all_uses_with(column)
        graph.erase_node(node)
    logger.debug("fused %d lookups, %d stack/cat rewired", len(lookups), rewired)
    return True


def fuse_embedding_lookups(graph_module: fx.GraphModule) -> int:
    """Fuse groups of >= 2 lookups with equal D, dtype, device and ids shape; returns lookups fused."""
    groups = defaultdict(list)
    for node in graph_module.graph.nodes:
        key = _lookup_key(graph_module, node)
        if key is not None:
            groups[key].append(node)
    fused = 0
    for index, lookups in enumerate(group for group in groups.values() if len(group) >= 2):
        if _fuse_group(graph_module, lookups, index):
            fused += len(lookups)
    if fused:
        graph_module.graph.eliminate_dead_code()
        graph_module.graph.lint()
        graph_module.recompile()
    return fused


FUSE_EMBEDDINGS_PASS = ExportPass(
    "fuse_embedding_lookups",
    fuse_embedding_lookups,
    "F per-feature embedding lookups of equal dim -> one lookup in a concatenated table (fewer kernels)",
)

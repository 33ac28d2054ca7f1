"""Rewrite ``embedding_bag`` nodes into gather + reduce, so the ONNX graph has no ``Loop``.

torch.onnx translates ``aten.embedding_bag`` (offsets form) into an ONNX ``Loop`` over bags that
ONNX Runtime runs op by op with host copies: minutes per batch for a DLRM on the GPU. This pass
replaces each bag node by plain ops that export to ``Gather`` + ``Reduce*`` / ``ScatterElements``:

- fixed bag size ``L`` (offsets provably ``arange(0, N, L)`` with ``N == B * L``, e.g. the 2-D input
  form of ``nn.EmbeddingBag`` or one id per sample): ``weight[indices].view(B, L, D)`` reduced over L
  (no reduction at all when ``L == 1``);
- any other offsets: a segment reduction, ``bag_of = cumsum(scatter_add(zeros(N + 1), offsets, 1)) - 1``
  then ``scatter_add`` / ``scatter_reduce(amax)`` of the gathered rows into ``(B, D)``.

Modes sum / mean / max, ``per_sample_weights`` and ``padding_idx`` are supported. A bag node whose
auxiliary outputs (offset2bag, bag_size, max_indices) are used is left alone (logged).

Dim letters: B bags (batch), L ids per bag, N ids in all, D embedding dim.

Example:
    >>> import torch
    >>> from amgp_fx.passes.embedding_bag import rewrite_embedding_bags
    >>> bag = torch.nn.EmbeddingBag(10, 4, mode="sum")
    >>> gm = torch.export.export(bag, (torch.randint(0, 10, (3, 2)),)).module()
    >>> rewrite_embedding_bags(gm)
    1
    >>> any("embedding_bag" in str(n.target) for n in gm.graph.nodes)
    False
"""
from __future__ import annotations

import logging
import operator

import torch
import torch.nn.functional as F
from torch import fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

from amgp_fx.passes import ExportPass

logger = logging.getLogger(__name__)

aten = torch.ops.aten

__all__ = ["EMBEDDING_BAG_PASS", "fixed_size_bag", "rewrite_embedding_bags", "segment_bag"]

SUM, MEAN, MAX = 0, 1, 2

# bag overloads -> True when a negative padding_idx means "no padding" (the private ops use -1)
_BAG_TARGETS = {
    aten.embedding_bag.default: False,
    aten.embedding_bag.padding_idx: False,
    aten._embedding_bag.default: True,
    aten._embedding_bag_forward_only.default: True,
}
_PASS_THROUGH = {aten._to_copy.default, aten.to.dtype, aten.clone.default, aten.alias.default}


def fixed_size_bag(weight, indices, bag_size, mode, per_sample_weights=None, padding_idx=None):
    """Bags of exactly ``bag_size`` ids each: indices (B * L,) -> (B, D)."""
    rows = F.embedding(indices, weight)  # (B * L, D)
    if per_sample_weights is not None:
        rows = rows * per_sample_weights.unsqueeze(-1)
    if bag_size == 1 and padding_idx is None:
        return rows
    rows = rows.reshape(-1, bag_size, weight.shape[1])  # (B, L, D)
    if padding_idx is None:
        if mode == SUM:
            return rows.sum(1)
        if mode == MEAN:
            return rows.mean(1)
        return rows.amax(1)
    keep = (indices != padding_idx).reshape(-1, bag_size, 1)  # (B, L, 1)
    if mode == MAX:
        largest = rows.masked_fill(~keep, float("-inf")).amax(1)
        return torch.where(keep.any(1), largest, torch.zeros_like(largest))  # all-padding bag -> 0
    total = (rows * keep).sum(1)
    if mode == SUM:
        return total
    return total / keep.sum(1).clamp(min=1).to(total.dtype)


def segment_bag(weight, indices, offsets, mode, per_sample_weights=None, include_last_offset=False, padding_idx=None):
    """Bags of any size given by ``offsets`` (bag starts): indices (N,) -> (B, D); empty bags give 0."""
    num_ids = indices.shape[0]
    starts = offsets[:-1] if include_last_offset else offsets  # (B,)
    num_bags, dim = starts.shape[0], weight.shape[1]
    marks = torch.zeros(num_ids + 1, dtype=starts.dtype, device=starts.device)
    marks = marks.scatter_add(0, starts, torch.ones_like(starts))
    bag_of = marks[:num_ids].cumsum(0) - 1  # (N,): the last bag starting at or before each id
    rows = F.embedding(indices, weight)  # (N, D)
    if per_sample_weights is not None:
        rows = rows * per_sample_weights.unsqueeze(-1)
    keep = None if padding_idx is None else (indices != padding_idx)
    ones = torch.ones(num_ids, dtype=rows.dtype, device=rows.device) if keep is None else keep.to(rows.dtype)
    counts = torch.zeros(num_bags, dtype=rows.dtype, device=rows.device).scatter_add(0, bag_of, ones)
    index = bag_of.unsqueeze(1).expand(-1, dim)  # (N, D)
    if mode == MAX:
        if keep is not None:
            rows = rows.masked_fill(~keep.unsqueeze(1), float("-inf"))
        largest = torch.full((num_bags, dim), float("-inf"), dtype=rows.dtype, device=rows.device)
        largest = largest.scatter_reduce(0, index, rows, "amax", include_self=True)
        return torch.where(counts.unsqueeze(1) > 0, largest, torch.zeros_like(largest))
    if keep is not None:
        rows = rows * keep.unsqueeze(1).to(rows.dtype)
    total = torch.zeros(num_bags, dim, dtype=rows.dtype, device=rows.device).scatter_add(0, index, rows)
    if mode == SUM:
        return total
    return total / counts.clamp(min=1).unsqueeze(1)


def _bind(node: fx.Node) -> dict:
    """Arguments of an aten node by schema name, defaults filled in."""
    bound = {}
    for position, argument in enumerate(node.target._schema.arguments):
        if position < len(node.args):
            bound[argument.name] = node.args[position]
        elif argument.name in node.kwargs:
            bound[argument.name] = node.kwargs[argument.name]
        else:
            bound[argument.name] = argument.default_value if argument.has_default_value() else None
    return bound


def _arange_step(node) -> int | None:
    """``s`` when ``node`` is provably ``arange(0, end, s)`` (possibly times an int), else None."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return None
    if node.target in _PASS_THROUGH:
        return _arange_step(node.args[0])
    if node.target is aten.arange.default:
        return 1
    if node.target is aten.arange.start:
        return 1 if node.args[0] == 0 else None
    if node.target is aten.arange.start_step:
        start, _, step = node.args[:3]
        return step if start == 0 and isinstance(step, int) else None
    if node.target is aten.mul.Tensor:
        left, right = node.args[:2]
        if isinstance(right, int):
            step = _arange_step(left)
            return None if step is None else step * right
        if isinstance(left, int):
            step = _arange_step(right)
            return None if step is None else step * left
    return None


def _fixed_bag_size(indices: fx.Node, offsets, include_last_offset: bool) -> int | None:
    """L when every bag provably holds L ids (offsets == arange(0, N, L) and N == B * L)."""
    if include_last_offset:
        return None
    step = _arange_step(offsets)
    indices_value = indices.meta.get("val") if isinstance(indices, fx.Node) else None
    offsets_value = offsets.meta.get("val")
    if step is None or step < 1 or indices_value is None or offsets_value is None or indices_value.dim() != 1:
        return None
    return step if statically_known_true(offsets_value.shape[0] * step == indices_value.shape[0]) else None


def _rewrite_one(graph: fx.Graph, node: fx.Node, negative_means_none: bool) -> bool:
    getitems = list(node.users)
    if any(user.target is not operator.getitem for user in getitems):
        logger.info("embedding_bag %s: a user is not a getitem; left alone", node.format_node())
        return False
    if any(user.args[1] != 0 and user.users for user in getitems):
        logger.info("embedding_bag %s: offset2bag/bag_size/max_indices are used; left alone", node.format_node())
        return False
    args = _bind(node)
    mode, padding_idx = args["mode"], args.get("padding_idx")
    if padding_idx is not None and negative_means_none and padding_idx < 0:
        padding_idx = None
    if mode not in (SUM, MEAN, MAX):
        logger.info("embedding_bag %s: unknown mode %r; left alone", node.format_node(), mode)
        return False
    weight, indices, offsets = args["weight"], args["indices"], args["offsets"]
    per_sample_weights, include_last_offset = args["per_sample_weights"], bool(args["include_last_offset"])
    bag_size = _fixed_bag_size(indices, offsets, include_last_offset)
    with graph.inserting_before(node):
        if bag_size is not None:
            new = graph.call_function(
                fixed_size_bag, (weight, indices, bag_size, mode, per_sample_weights, padding_idx)
            )
        else:
            new = graph.call_function(
                segment_bag, (weight, indices, offsets, mode, per_sample_weights, include_last_offset, padding_idx)
            )
    for key in ("stack_trace", "nn_module_stack", "source_fn_stack"):
        if key in node.meta:
            new.meta[key] = node.meta[key]
    for user in getitems:
        if user.args[1] == 0:
            if "val" in user.meta:
                new.meta["val"] = user.meta["val"]
            user.replace_all_uses_with(new)
        graph.erase_node(user)
    graph.erase_node(node)
    logger.debug("embedding_bag rewritten to %s (bag size %s)", new.target.__name__, bag_size)
    return True


def rewrite_embedding_bags(graph_module: fx.GraphModule) -> int:
    """Replace every rewritable ``embedding_bag`` node in place; returns how many were replaced.

    Args:
        graph_module: an ATen-level graph (``torch.export(...).module()``); edited in place.

    Returns:
        The number of bag nodes replaced. Outputs are unchanged up to float summation order.
    """
    graph = graph_module.graph
    count = 0
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in _BAG_TARGETS:
            count += _rewrite_one(graph, node, _BAG_TARGETS[node.target])
    if count:
        graph.lint()
        graph_module.recompile()
    return count


EMBEDDING_BAG_PASS = ExportPass(
    "embedding_bag_to_gather",
    rewrite_embedding_bags,
    "embedding_bag -> Gather + reduce (fixed bag size) or Gather + ScatterElements (segments); avoids ONNX Loop",
)

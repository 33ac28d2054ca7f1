"""Gather a pairwise-interaction's pairs from the flattened matrix, not with two index tensors.

DLRM-style interactions take the lower triangle of a batch of small matrices as ``z[:, li, lj]``
(``aten.index.Tensor`` with two constant index buffers). The ONNX exporter writes that as a
Transpose of the whole ``(B, n, m)`` matrix, a GatherND and a Transpose back: two extra copies of
a tensor the size of the matrix per call, memory-bound at serving batch sizes (issue 16). The
same values are ``z.flatten(1)[:, li * m + lj]``: a Reshape (no copy) and one Gather along axis 1.

Opt-in (not in ``default_passes``): on ONNX Runtime's CPU provider the exporter's form is faster
(the interaction alone at batch 65536 on 2 cores: 118 ms against 152 ms with this pass; its GatherND
moves rows of B contiguous values, the Gather moves single values). Whether it pays on the CUDA
provider is for ``tools/profile_onnx.py --pair-gather`` on the GPU to say.

Example:
    >>> import torch
    >>> from amgp_fx.passes.pair_gather import gather_pairs_from_flat
    >>> class M(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         rows, cols = torch.tril_indices(4, 4, offset=-1)
    ...         self.register_buffer("li", rows, persistent=False)
    ...         self.register_buffer("lj", cols, persistent=False)
    ...     def forward(self, z):
    ...         return z[:, self.li, self.lj]
    >>> gm = torch.export.export(M(), (torch.randn(2, 4, 4),)).module()
    >>> gather_pairs_from_flat(gm)
    1
"""
from __future__ import annotations

import torch
from torch import fx

from amgp_fx.passes import ExportPass, attribute_tensor


def _flat_index(graph_module: fx.GraphModule, node: fx.Node) -> torch.Tensor | None:
    """``li * m + lj`` when ``node`` is ``x[:, li, lj]`` on a 3-d ``x`` with static (n, m) and 1-d
    integer constants ``li``, ``lj`` of one length, in range; else None (the node is left alone)."""
    source, indices = node.args[0], node.args[1]
    value = source.meta.get("val") if isinstance(source, fx.Node) else None
    if not isinstance(value, torch.Tensor) or value.dim() != 3 or len(indices) != 3 or indices[0] is not None:
        return None
    rows, cols = attribute_tensor(graph_module, indices[1]), attribute_tensor(graph_module, indices[2])
    n, m = value.shape[1], value.shape[2]
    if rows is None or cols is None or not isinstance(n, int) or not isinstance(m, int):
        return None
    if rows.dim() != 1 or rows.shape != cols.shape or rows.is_floating_point() or cols.is_floating_point():
        return None
    if rows.dtype == torch.bool or cols.dtype == torch.bool or not rows.numel():
        return None
    if not (-n <= int(rows.min()) and int(rows.max()) < n and -m <= int(cols.min()) and int(cols.max()) < m):
        return None
    return ((rows % n) * m + cols % m).to(torch.int64)


def gather_pairs_from_flat(graph_module: fx.GraphModule) -> int:
    """Rewrite each ``x[:, li, lj]`` with constant ``li``, ``lj`` in place; returns how many."""
    rewritten = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_function" or node.target != torch.ops.aten.index.Tensor:
            continue
        flat_index = _flat_index(graph_module, node)
        if flat_index is None:
            continue
        name = f"_pair_gather_index_{rewritten}"
        while hasattr(graph_module, name):
            name += "_"
        graph_module.register_buffer(name, flat_index, persistent=False)  # on the index buffers' device
        with graph_module.graph.inserting_before(node):
            index = graph_module.graph.get_attr(name)
            flat = graph_module.graph.call_function(torch.ops.aten.flatten.using_ints, (node.args[0], 1, 2))
            gathered = graph_module.graph.call_function(torch.ops.aten.index_select.default, (flat, 1, index))
        gathered.meta.update(node.meta)
        node.replace_all_uses_with(gathered)
        graph_module.graph.erase_node(node)
        rewritten += 1
    return rewritten


PAIR_GATHER_PASS = ExportPass(
    "gather_pairs_from_flat", gather_pairs_from_flat,
    "x[:, li, lj] with constant index buffers as one Gather of x.flatten(1) (no Transpose/GatherND/Transpose)",
)

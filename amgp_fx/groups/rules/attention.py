"""Fused attention. Heads are batch dims shared by query, key and value; the query/key feature dim
is contracted; the value feature dim is the output's."""
from __future__ import annotations

import torch

from amgp_fx.groups.context import RuleContext
from amgp_fx.groups.registry import builtin

aten = torch.ops.aten


@builtin(aten.scaled_dot_product_attention.default, family="attention")
def aten_scaled_dot_product_attention(ctx: RuleContext):
    """``scaled_dot_product_attention(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, ...)``:
    query[-1] ~ key[-1]; key[-2] ~ value[-2]; leading dims (batch, heads) shared."""
    q, k, v = (ctx.label(ctx.arg(i)) for i in range(3))
    mask = ctx.label(ctx.arg(3, "attn_mask"))
    ctx.couple(q[-1], k[-1])
    ctx.couple(k[-2], v[-2])
    rank = max(len(q), len(k), len(v))
    batch = ctx.broadcast(q[:-2], k[:-2], v[:-2], out_rank=rank - 2)
    if mask is not None:
        ctx.broadcast(mask, batch + (q[-2], k[-2]), out_rank=max(len(mask), rank))
    if ctx.arg(5, "is_causal", False):
        ctx.freeze(q[-2], f"{ctx.node.name}: causal mask depends on positions")
        ctx.freeze(k[-2], f"{ctx.node.name}: causal mask depends on positions")
    ctx.note(k[-2], f"{ctx.node.name}: softmax over keys")
    if ctx.arg(6, "scale") is None:
        ctx.note(q[-1], f"{ctx.node.name}: the default scale 1/sqrt(E) depends on the head dim")
    return batch + (q[-2], v[-1])

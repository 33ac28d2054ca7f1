"""Embedding lookups: a table's columns are the embedding channels; its rows are ids and never pruned."""
from __future__ import annotations

import torch

from amgp_fx.groups.context import RuleContext
from amgp_fx.groups.model import Role
from amgp_fx.groups.registry import builtin

aten = torch.ops.aten


@builtin(aten.embedding.default, family="embedding")
def aten_embedding(ctx: RuleContext):
    """``embedding(Tensor weight, Tensor indices, ...)``: output[-1] ~ weight[1]; output[:-1] are the index dims."""
    weight, indices = ctx.arg(0), ctx.arg(1)
    wl, il = ctx.label(weight), ctx.label(indices)
    ctx.freeze(wl[0], f"{ctx.node.name}: embedding rows are ids")
    ctx.role(weight, 1, Role.PRODUCER, kind="embedding")
    return tuple(il) + (wl[1],)


@builtin(aten._embedding_bag.default, aten.embedding_bag.default, aten.embedding_bag.padding_idx,
         aten._embedding_bag_forward_only.default, family="embedding")
def aten_embedding_bag(ctx: RuleContext):
    """``_embedding_bag(Tensor weight, Tensor indices, Tensor offsets, ...)``: pooled output[1] ~ weight[1]."""
    weight = ctx.arg(0)
    wl = ctx.label(weight)
    ctx.freeze(wl[0], f"{ctx.node.name}: embedding rows are ids")
    ctx.role(weight, 1, Role.PRODUCER, kind="embedding")
    outs = [ctx.fresh_tensor(v, f"{ctx.node.name}: embedding-bag bookkeeping") for v in ctx.out]
    pooled = ctx.out[0]
    outs[0] = (ctx.fresh(pooled.shape[0], frozen=f"{ctx.node.name}: bag index"), wl[1])
    return outs

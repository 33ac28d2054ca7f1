"""Reductions and normalising maps. A reduced dim disappears (or shrinks to 1 with keepdim);
removing a channel from a sum equals zeroing it, but not from a mean, max, variance or softmax,
so those dims are noted as not mask-equivalent."""
from __future__ import annotations

import torch

from amgp_fx.groups.context import RuleContext, dims_arg, normalize_dim
from amgp_fx.groups.registry import builtin

aten = torch.ops.aten


def _reduce(ctx: RuleContext, dims, keepdim: bool, note: str | None, freeze: str | None = None):
    xl = ctx.label(ctx.arg(0))
    reduced = dims_arg(dims, len(xl))
    out = []
    for d, lab in enumerate(xl):
        if d in reduced:
            if note:
                ctx.note(lab, f"{ctx.node.name}: {note}")
            if freeze:
                ctx.freeze(lab, f"{ctx.node.name}: {freeze}")
            if keepdim:
                out.append(ctx.unit_dim("a reduction with keepdim"))
        else:
            out.append(lab)
    return tuple(out)


@builtin(aten.sum.dim_IntList, aten.nansum.default, aten.linalg_vector_norm.default, aten.norm.ScalarOpt_dim,
         family="reduction")
def aten_sum(ctx: RuleContext):
    """``sum.dim_IntList(Tensor self, int[1]? dim, bool keepdim=False)``: reduced dims vanish."""
    target = ctx.node.target
    if target is aten.linalg_vector_norm.default:
        return _reduce(ctx, ctx.arg(2, "dim"), ctx.arg(3, "keepdim", False), None)
    return _reduce(ctx, ctx.arg(1, "dim"), ctx.arg(2, "keepdim", False), None)


@builtin(aten.sum.default, family="reduction")
def aten_sum_all(ctx: RuleContext):
    """``sum(Tensor self)``: a scalar."""
    return ()


@builtin(aten.mean.default, family="reduction")
def aten_mean_all(ctx: RuleContext):
    """``mean(Tensor self)``: a scalar whose divisor counts every channel."""
    for lab in ctx.label(ctx.arg(0)):
        ctx.note(lab, f"{ctx.node.name}: the mean's divisor counts the channels")
    return ()


@builtin(aten.mean.dim, aten.amax.default, aten.amin.default, aten.var.correction, aten.var.dim,
         aten.std.correction, aten.std.dim, aten.logsumexp.default, aten.prod.dim_int, aten.any.dim, aten.any.dims,
         aten.all.dim, family="reduction")
def aten_mean(ctx: RuleContext):
    """``mean.dim(Tensor self, int[1]? dim, bool keepdim=False)`` and kin: reduced dims vanish, not mask-equivalent."""
    target = ctx.node.target
    if target in (aten.var.correction, aten.std.correction):
        return _reduce(ctx, ctx.arg(1, "dim"), ctx.node.kwargs.get("keepdim", False), "variance depends on the channels present")
    if target is aten.prod.dim_int:
        dims, keep = [ctx.arg(1, "dim")], ctx.arg(2, "keepdim", False)
    else:
        dims, keep = ctx.arg(1, "dim"), ctx.arg(2, "keepdim", False)
    return _reduce(ctx, dims, keep, f"{target.__name__} depends on the channels present")


@builtin(aten.max.dim, aten.min.dim, family="reduction")
def aten_max_dim(ctx: RuleContext):
    """``max.dim(Tensor self, int dim, bool keepdim=False) -> (values, indices)``: indices are positions; frozen."""
    out = _reduce(ctx, ctx.arg(1, "dim"), ctx.arg(2, "keepdim", False), None, freeze="returns positions along the dim")
    return [out, out]


@builtin(aten.argmax.default, aten.argmin.default, family="reduction")
def aten_argmax(ctx: RuleContext):
    """``argmax(Tensor self, int? dim=None, bool keepdim=False)``: positions; the dim is frozen."""
    dim = ctx.arg(1, "dim")
    return _reduce(ctx, dim, ctx.arg(2, "keepdim", False), None, freeze="returns positions along the dim")


@builtin(aten.max.default, aten.min.default, family="reduction")
def aten_max_all(ctx: RuleContext):
    """``max(Tensor self)``: a scalar."""
    for lab in ctx.label(ctx.arg(0)):
        ctx.note(lab, f"{ctx.node.name}: max over the channels")
    return ()


@builtin(aten.softmax.int, aten._softmax.default, aten.log_softmax.int, aten._log_softmax.default,
         family="reduction")
def aten_softmax(ctx: RuleContext):
    """``softmax.int(Tensor self, int dim, ...)``: same labels; the normalised dim is not mask-equivalent."""
    xl = ctx.label(ctx.arg(0))
    dim = normalize_dim(ctx.arg(1, "dim"), len(xl))
    ctx.note(xl[dim], f"{ctx.node.name}: softmax normalises over the channels present")
    return xl

"""Normalisation layers: their affine parameters and running statistics follow the channels they
normalise. LayerNorm over a pruned dimension changes the statistics, so it is noted as not
mask-equivalent; BatchNorm normalises each channel on its own and stays mask-equivalent."""
from __future__ import annotations

import torch

from amgp_fx.groups.context import RuleContext
from amgp_fx.groups.model import Role
from amgp_fx.groups.registry import builtin

aten = torch.ops.aten


def _rewrite_normalized_shape(rw):
    args = list(rw.args)
    out = rw.out_label
    k = len(args[1])
    args[1] = [rw.count(out[len(out) - k + i], default=s) for i, s in enumerate(args[1])]
    return rw.target, tuple(args)


def _layer_norm(ctx: RuleContext, x, normalized_shape, weight, bias):
    xl = ctx.label(x)
    k = len(normalized_shape)
    for i in range(k):
        dim = xl[len(xl) - k + i]
        ctx.note(dim, f"{ctx.node.name}: layer norm statistics depend on the channels present")
        for param, role in ((weight, Role.SCALE), (bias, Role.SHIFT)):
            pl = ctx.label(param)
            if pl is not None:
                ctx.couple(dim, pl[i])
                ctx.role(param, i, role)
    return xl


@builtin(aten.layer_norm.default, family="norm", rewrite=_rewrite_normalized_shape)
def aten_layer_norm(ctx: RuleContext):
    """``layer_norm(Tensor input, SymInt[] normalized_shape, Tensor? weight, Tensor? bias, ...)``:
    the last len(normalized_shape) dims ~ weight ~ bias."""
    return _layer_norm(ctx, ctx.arg(0), ctx.arg(1), ctx.arg(2, "weight"), ctx.arg(3, "bias"))


@builtin(aten.native_layer_norm.default, family="norm", rewrite=_rewrite_normalized_shape)
def aten_native_layer_norm(ctx: RuleContext):
    """``native_layer_norm(input, normalized_shape, weight, bias, eps) -> (out, mean, rstd)``."""
    xl = _layer_norm(ctx, ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3))
    stats = tuple(xl[: len(xl) - len(ctx.arg(1))]) + tuple(ctx.unit_dim("layer-norm statistics") for _ in ctx.arg(1))
    return [xl, stats, stats]


@builtin(aten.rms_norm.default, family="norm", rewrite=_rewrite_normalized_shape)
def aten_rms_norm(ctx: RuleContext):
    """``rms_norm(Tensor input, SymInt[] normalized_shape, Tensor? weight, float? eps)``."""
    return _layer_norm(ctx, ctx.arg(0), ctx.arg(1), ctx.arg(2, "weight"), None)


def _batch_norm(ctx: RuleContext, x, params):
    xl = ctx.label(x)
    roles = (Role.SCALE, Role.SHIFT, Role.RUNNING_MEAN, Role.RUNNING_VAR)
    for param, role in zip(params, roles):
        pl = ctx.label(param)
        if pl is not None:
            ctx.couple(xl[1], pl[0])
            ctx.role(param, 0, role)
    return xl


@builtin(aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default, family="norm")
def aten_batch_norm(ctx: RuleContext):
    """``batch_norm(input, weight, bias, running_mean, running_var, training, ...)``: input[1] ~ all four."""
    xl = _batch_norm(ctx, ctx.arg(0), ctx.node.args[1:5])
    if ctx.node.target is aten.batch_norm.default:
        return xl
    channel = (xl[1],)
    return [xl, channel, channel]


@builtin(aten._native_batch_norm_legit_functional.default, aten.native_batch_norm.default,
         aten._native_batch_norm_legit.default, family="norm")
def aten_native_batch_norm(ctx: RuleContext):
    """``native_batch_norm(input, weight, bias, running_mean, running_var, training, ...) -> (out, ...)``."""
    xl = _batch_norm(ctx, ctx.arg(0), ctx.node.args[1:5])
    return [xl] + [(xl[1],) for _ in ctx.out[1:]]


@builtin(aten.group_norm.default, aten.native_group_norm.default, family="norm")
def aten_group_norm(ctx: RuleContext):
    """``group_norm(input, num_groups, weight, bias, ...)``: channels come in groups; frozen."""
    reason = f"{ctx.node.name}: group norm channels are not pruned"
    for a in ctx.node.args:
        ctx.freeze(ctx.label(a), reason)
    if isinstance(ctx.out, (tuple, list)):
        return [ctx.fresh_tensor(v, reason) for v in ctx.out]
    return ctx.fresh_tensor(ctx.out, reason)

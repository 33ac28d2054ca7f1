"""Layers with a weight matrix: ``linear`` and convolutions couple input features to weight columns
and make weight rows (and bias) the output channels."""
from __future__ import annotations

import torch

from amgp_fx.groups.context import RuleContext, seq
from amgp_fx.groups.model import Role
from amgp_fx.groups.registry import builtin

aten = torch.ops.aten


@builtin(aten.linear.default, family="linear")
def aten_linear(ctx: RuleContext):
    """``linear(Tensor input, Tensor weight, Tensor? bias=None)``: input[-1] ~ weight[1]; output[-1] ~ weight[0] ~ bias."""
    x, weight, bias = ctx.arg(0), ctx.arg(1), ctx.arg(2, "bias")
    xl, wl, bl = ctx.label(x), ctx.label(weight), ctx.label(bias)
    ctx.couple(xl[-1], wl[1])
    if bl is not None:
        ctx.couple(bl[0], wl[0])
        ctx.role(bias, 0, Role.BIAS)
    ctx.role(weight, 0, Role.PRODUCER)
    ctx.role(weight, 1, Role.CONSUMER)
    return xl[:-1] + (wl[0],)


@builtin(aten.conv1d.default, aten.conv2d.default, aten.convolution.default, family="linear")
def aten_convolution(ctx: RuleContext):
    """``convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)``:
    input channels ~ weight[1]; output channels ~ weight[0] ~ bias; spatial dims couple only for 1x1 kernels."""
    node = ctx.node
    x, weight, bias = node.args[0], node.args[1], ctx.arg(2, "bias")
    if node.target is aten.convolution.default:
        stride, padding, dilation, transposed, groups = node.args[3], node.args[4], node.args[5], node.args[6], node.args[8]
    else:
        stride, padding, dilation = ctx.arg(3, "stride", 1), ctx.arg(4, "padding", 0), ctx.arg(5, "dilation", 1)
        transposed, groups = False, ctx.arg(6, "groups", 1)
    xl, wl, bl = ctx.label(x), ctx.label(weight), ctx.label(bias)
    out_shape = ctx.out_shape
    if transposed or groups != 1:
        ctx.freeze(xl, f"{node.name}: grouped or transposed convolution channels are not pruned")
        ctx.freeze(wl, f"{node.name}: grouped or transposed convolution channels are not pruned")
        return ctx.fresh_tensor(ctx.out, f"{node.name}: output of a grouped or transposed convolution")
    ctx.couple(xl[1], wl[1])
    if bl is not None:
        ctx.couple(bl[0], wl[0])
        ctx.role(bias, 0, Role.BIAS)
    ctx.role(weight, 0, Role.PRODUCER)
    ctx.role(weight, 1, Role.CONSUMER)
    pointwise = all(k == 1 for k in ctx.shape(weight)[2:]) and all(s == 1 for s in seq(stride)) \
        and all(p == 0 for p in seq(padding)) and all(d == 1 for d in seq(dilation))
    if pointwise:
        spatial = xl[2:]
        if bl is not None:
            for lab in spatial:
                ctx.note(lab, f"{node.name}: the convolution bias is added at every position")
    else:
        ctx.freeze(xl[2:], f"{node.name}: spatial positions of a convolution")
        spatial = tuple(ctx.fresh(s, frozen=f"{node.name}: convolution output positions") for s in out_shape[2:])
        ctx.freeze(wl[2:], f"{node.name}: convolution kernel taps")
    return (xl[0], wl[0]) + tuple(spatial)

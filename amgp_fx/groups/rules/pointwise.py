"""Element-wise ops: unary ops keep their input's label, broadcasting ops couple aligned dims."""
from __future__ import annotations

import torch

from amgp_fx.groups.context import RuleContext, normalize_dim
from amgp_fx.groups.registry import builtin

aten = torch.ops.aten

_UNARY = [
    aten.relu.default, aten.relu_.default, aten.sigmoid.default, aten.sigmoid_.default, aten.tanh.default,
    aten.gelu.default, aten.silu.default, aten.silu_.default, aten.elu.default, aten.leaky_relu.default,
    aten.leaky_relu_.default, aten.hardtanh.default, aten.hardtanh_.default, aten.hardsigmoid.default,
    aten.hardswish.default, aten.softplus.default, aten.mish.default, aten.prelu.default,
    aten.dropout.default, aten.dropout_.default, aten.feature_dropout.default, aten.alpha_dropout.default,
    aten.clone.default, aten.contiguous.default, aten.detach.default, aten.alias.default,
    aten.lift_fresh_copy.default, aten.neg.default, aten.exp.default, aten.log.default, aten.log1p.default,
    aten.abs.default, aten.sqrt.default, aten.rsqrt.default, aten.reciprocal.default, aten.square.default,
    aten.pow.Tensor_Scalar, aten.clamp.default, aten.clamp.Tensor, aten.clamp_min.default,
    aten.clamp_max.default, aten.clamp_.default, aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout,
    aten.to.device, aten.to.other, aten.type_as.default, aten.sign.default, aten.sin.default, aten.cos.default,
    aten.erf.default, aten.logit.default, aten.nan_to_num.default, aten.isnan.default, aten.logical_not.default,
    aten.bitwise_not.default, aten.zeros_like.default, aten.ones_like.default, aten.full_like.default,
    aten.empty_like.default, aten.rand_like.default, aten.randn_like.default, aten.cumsum.default,
    aten.add.Scalar, aten.sub.Scalar, aten.mul.Scalar, aten.div.Scalar, aten.rsub.Scalar, aten.eq.Scalar,
    aten.ne.Scalar, aten.gt.Scalar, aten.lt.Scalar, aten.ge.Scalar, aten.le.Scalar, aten.fill_.Scalar,
    aten.detach_.default, aten.masked_fill_.Tensor, aten.where.ScalarSelf, aten.where.ScalarOther,
    # in-place forms (the graph keeps them when a model writes ``h.tanh_()``) and scalar masks
    aten.tanh_.default, aten.exp_.default, aten.neg_.default, aten.sqrt_.default, aten.abs_.default,
    aten.elu_.default, aten.gelu_.default, aten.hardswish_.default, aten.hardsigmoid_.default, aten.log_.default,
    aten.reciprocal_.default, aten.pow_.Scalar, aten.clamp_min_.default, aten.clamp_max_.default,
    aten.mul_.Scalar, aten.div_.Scalar, aten.add_.Scalar, aten.sub_.Scalar, aten.relu6.default,
    aten.__and__.Scalar, aten.__or__.Scalar, aten.bitwise_and.Scalar, aten.bitwise_or.Scalar,
]

# adding a constant along a dim makes removed channels differ from zeroed ones
_ADDITIVE = {aten.add.Tensor, aten.add_.Tensor, aten.sub.Tensor, aten.sub_.Tensor, aten.rsub.Tensor,
             aten.add.Scalar, aten.sub.Scalar, aten.rsub.Scalar, aten.add_.Scalar, aten.sub_.Scalar}

_BROADCAST = [
    aten.add.Tensor, aten.add_.Tensor, aten.sub.Tensor, aten.sub_.Tensor, aten.mul.Tensor, aten.mul_.Tensor,
    aten.div.Tensor, aten.div_.Tensor, aten.div.Tensor_mode, aten.pow.Tensor_Tensor, aten.maximum.default,
    aten.minimum.default, aten.eq.Tensor, aten.ne.Tensor, aten.gt.Tensor, aten.lt.Tensor, aten.ge.Tensor,
    aten.le.Tensor, aten.logical_and.default, aten.logical_or.default, aten.bitwise_and.Tensor,
    aten.bitwise_or.Tensor, aten.where.self, aten.masked_fill.Scalar, aten.masked_fill.Tensor,
    aten.masked_fill_.Scalar, aten.rsub.Tensor, aten.copy_.default, aten.copy.default, aten.addcmul.default,
    aten.lerp.Scalar, aten.atan2.default, aten.remainder.Tensor, aten.fmod.Tensor, aten.where.Scalar,
    aten.__and__.Tensor, aten.__or__.Tensor, aten.__xor__.Tensor, aten.bitwise_xor.Tensor,
    aten.logical_xor.default,
]


def _unique(ops):
    seen, out = set(), []
    for op in ops:
        if op not in seen:
            seen.add(op)
            out.append(op)
    return out


@builtin(*_unique(_UNARY), family="pointwise")
def aten_unary(ctx: RuleContext):
    """``relu(Tensor self) -> Tensor`` and friends: output index i is input index i."""
    out = ctx.label(ctx.node.args[0])
    if ctx.node.target in _ADDITIVE:
        _note_added_constant(ctx, out, [])
    return out


def _note_added_constant(ctx: RuleContext, out, operands) -> None:
    """Note output dims along which some operand is constant (broadcast or a scalar)."""
    rank = len(out)
    for k in range(1, rank + 1):
        covered = [lab for lab in operands if lab is not None and len(lab) >= k and (lab[-k] is None or len(lab[-k]) > 1)]
        if len(covered) < max(len(operands), 2):
            ctx.note(out[-k], f"{ctx.node.name}: a constant is added along this dim")


@builtin(*_unique(_BROADCAST), family="pointwise")
def aten_broadcast(ctx: RuleContext):
    """``add.Tensor(Tensor self, Tensor other)`` and friends: right-aligned dims of equal size couple."""
    labels = [ctx.label(a) for a in ctx.node.args]
    labels = [lab for lab in labels if lab is not None]
    out = ctx.broadcast(*labels, out_rank=len(ctx.out_shape))
    if ctx.node.target in _ADDITIVE:
        _note_added_constant(ctx, out, labels)
    return out


@builtin(aten.glu.default, family="pointwise")
def aten_glu(ctx: RuleContext):
    """``glu(Tensor self, int dim=-1)``: ``a * sigmoid(b)`` of the two halves of ``dim``, so index i of
    the output is index i of the first half and index i of the second (one channel, two positions)."""
    xl = list(ctx.label(ctx.arg(0)))
    dim = normalize_dim(ctx.arg(1, "dim", -1), len(xl))
    lab = xl[dim]
    if lab is None:
        return tuple(xl)
    half = len(lab) // 2
    ctx.couple(lab[:half], lab[half:])
    xl[dim] = lab[:half]
    return tuple(xl)

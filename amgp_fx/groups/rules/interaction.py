"""Products that contract a dimension: ``mm``/``bmm``/``matmul``/``einsum``.

The contracted dimension of both operands is one channel set (DLRM's ``bmm(Z, Z^T)`` couples every
table's embedding dimension); batch dims broadcast; the free dims pass through to the output.
"""
from __future__ import annotations

import torch

from amgp_fx.groups.context import RuleContext
from amgp_fx.groups.model import Role
from amgp_fx.groups.registry import builtin

aten = torch.ops.aten


def _matmul_labels(ctx: RuleContext, left, right):
    """Labels of ``left @ right`` following torch.matmul's 1-D and broadcasting rules."""
    left_vec, right_vec = len(left) == 1, len(right) == 1
    a = (None,) + left if left_vec else left
    b = right + (None,) if right_vec else right
    ctx.couple(a[-1], b[-2])
    batch = ctx.broadcast(a[:-2], b[:-2], out_rank=max(len(a), len(b)) - 2) if max(len(a), len(b)) > 2 else ()
    out = batch + (a[-2], b[-1])
    if right_vec:
        out = out[:-1]
    if left_vec:
        out = out[:-2] + out[-1:] if not right_vec else out[:-1]
    return out


@builtin(aten.matmul.default, aten.mm.default, aten.bmm.default, aten.dot.default, aten.mv.default,
         family="interaction")
def aten_matmul(ctx: RuleContext):
    """``matmul(Tensor self, Tensor other)``: self[-1] ~ other[-2] (contracted); batch dims broadcast."""
    left, right = ctx.arg(0), ctx.arg(1)
    out = _matmul_labels(ctx, ctx.label(left), ctx.label(right))
    if len(ctx.shape(right)) == 2:  # x @ W with W of shape (in, out)
        ctx.role(right, 0, Role.CONSUMER)
        ctx.role(right, 1, Role.PRODUCER)
    return out


@builtin(aten.addmm.default, aten.baddbmm.default, family="interaction")
def aten_addmm(ctx: RuleContext):
    """``addmm(Tensor self, Tensor mat1, Tensor mat2)``: mat1[-1] ~ mat2[-2]; self broadcasts onto the product."""
    bias, left, right = ctx.arg(0), ctx.arg(1), ctx.arg(2)
    out = _matmul_labels(ctx, ctx.label(left), ctx.label(right))
    return ctx.broadcast(out, ctx.label(bias), out_rank=len(out))


def _parse_equation(equation: str, count: int):
    lhs, _, rhs = equation.replace(" ", "").partition("->")
    inputs = lhs.split(",")
    if len(inputs) != count or "..." in equation:
        return None
    if not _:
        letters = sorted({c for term in inputs for c in term if sum(t.count(c) for t in inputs) == 1})
        rhs = "".join(letters)
    return inputs, rhs


@builtin(aten.einsum.default, family="interaction")
def aten_einsum(ctx: RuleContext):
    """``einsum(str equation, Tensor[] tensors)``: every dim named by the same letter is one channel set."""
    equation, operands = ctx.arg(0), ctx.arg(1)
    labels = [ctx.label(t) for t in operands]
    parsed = _parse_equation(equation, len(operands))
    if parsed is None:
        reason = f"{ctx.node.name}: einsum with '...' is not analysed"
        for lab in labels:
            ctx.freeze(lab, reason)
        return ctx.fresh_tensor(ctx.out, reason)
    terms, rhs = parsed
    by_letter: dict[str, list] = {}
    for term, lab in zip(terms, labels):
        for letter, dim in zip(term, lab):
            by_letter.setdefault(letter, []).append(dim)
    for letter, dims in by_letter.items():
        full = [d for d in dims if d is None or len(d) != 1]
        for other in full[1:]:
            ctx.couple(full[0], other)
    out = []
    for letter in rhs:
        dims = by_letter[letter]
        full = [d for d in dims if d is None or len(d) != 1]
        out.append(full[0] if full else dims[0])
    return tuple(out)


@builtin(aten.tensordot.default, family="interaction")
def aten_tensordot(ctx: RuleContext):
    """``tensordot(Tensor self, Tensor other, int[] dims_self, int[] dims_other)``: listed dims contract pairwise."""
    left, right = ctx.label(ctx.arg(0)), ctx.label(ctx.arg(1))
    dims_left = [d % len(left) for d in ctx.arg(2)]
    dims_right = [d % len(right) for d in ctx.arg(3)]
    for a, b in zip(dims_left, dims_right):
        ctx.couple(left[a], right[b])
    return tuple(lab for d, lab in enumerate(left) if d not in dims_left) + \
        tuple(lab for d, lab in enumerate(right) if d not in dims_right)

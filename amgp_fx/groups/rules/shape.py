"""Shape ops: views and reshapes (merge dims into products, split dims into factors), permutations,
concatenation (offsets), splits and slices (sub-ranges), and ops that create tensors from size
literals. These ops hold the size literals that surgery rewrites after a shrink."""
from __future__ import annotations

import sympy
import torch

from amgp_fx.groups.context import RuleContext, dims_arg, is_concrete, normalize_dim
from amgp_fx.groups.registry import builtin

aten = torch.ops.aten
_INT64_MAX = 9223372036854775807


def _expr(size):
    return size.node.expr if isinstance(size, torch.SymInt) else sympy.Integer(int(size))


def _hint(size) -> int:
    if isinstance(size, torch.SymInt):
        hint = size.node.hint
        return int(hint) if hint is not None else 2
    return int(size)


def _segments(in_sizes, out_sizes):
    """Pair runs of input dims with runs of output dims of equal product (``None`` if impossible)."""
    segments, i, j = [], 0, 0
    n, m = len(in_sizes), len(out_sizes)
    while i < n or j < m:
        if i < n and is_concrete(in_sizes[i]) and in_sizes[i] == 1:
            segments.append(([i], []))
            i += 1
            continue
        if j < m and is_concrete(out_sizes[j]) and out_sizes[j] == 1:
            segments.append(([], [j]))
            j += 1
            continue
        if i >= n or j >= m:
            return None
        ins, outs = [i], [j]
        pi, pj = _expr(in_sizes[i]), _expr(out_sizes[j])
        hi, hj = _hint(in_sizes[i]), _hint(out_sizes[j])
        i, j = i + 1, j + 1
        while sympy.expand(pi - pj) != 0:
            if hi < hj and i < n:
                pi, hi = pi * _expr(in_sizes[i]), hi * _hint(in_sizes[i])
                ins.append(i)
                i += 1
            elif hj < hi and j < m:
                pj, hj = pj * _expr(out_sizes[j]), hj * _hint(out_sizes[j])
                outs.append(j)
                j += 1
            else:
                return None
        segments.append((ins, outs))
    return segments


def _refinement(in_sizes: list[int], out_sizes: list[int]) -> list[int] | None:
    """The coarsest factor sizes that both runs are products of, or ``None``.

    (4, 8) -> (8, 4) refines to (4, 2, 4): 8 splits into (2, 4), then (4, 2) merges. Exists when the
    partial products of both runs, taken together, form a chain in which each divides the next.
    """
    bounds, product = set(), 1
    for size in in_sizes:
        product *= size
        bounds.add(product)
    product = 1
    for size in out_sizes:
        product *= size
        bounds.add(product)
    chain, factors, previous = sorted(bounds), [], 1
    for bound in chain:
        if bound % previous:
            return None
        factors.append(bound // previous)
        previous = bound
    return factors


def _take(factors: list[int], sizes: list[int]) -> list[list[int]]:
    """Indices into ``factors`` whose products make each of ``sizes``, in order."""
    out, k = [], 0
    for size in sizes:
        run, product = [], 1
        while product < size or not run:
            run.append(k)
            product *= factors[k]
            k += 1
        out.append(run)
    return out


def _factor_kinds(count: int) -> tuple[str, ...]:
    return ("heads", "head_dim") if count == 2 else ("reshape",) * count


def _merge_split(ctx: RuleContext, in_labels: list, in_sizes: list[int], out_sizes: list[int], outs: list[int]):
    """Labels of a concrete run of dims regrouped into other dims: split each input dim into the
    refined factors (fresh factor blocks, so they can form groups such as heads), then merge the
    factors of each output dim into products. ``None`` when the sizes have no common refinement."""
    factors = _refinement(in_sizes, out_sizes)
    if factors is None:
        return None
    labels: list = []
    for lab, run in zip(in_labels, _take(factors, in_sizes)):
        if len(run) == 1:
            labels.append(lab)
            continue
        parts = [ctx.fresh(factors[k], grouping=True, kind=kind, what=f"[{outs[0]}]:factor{k}")
                 for k, kind in zip(run, _factor_kinds(len(run)))]
        ctx.couple(lab, ctx.atoms.new_products(parts, f"{ctx.node.name}:split"))
        labels.extend(parts)
    result = []
    for run in _take(factors, out_sizes):
        parts = [labels[k] for k in run]
        result.append(parts[0] if len(parts) == 1 else ctx.atoms.new_products(parts, f"{ctx.node.name}:merge"))
    return result


def reshape_labels(ctx: RuleContext, xl, in_sizes, out_sizes):
    """Labels of a reshape: identity runs pass through, merges make products, splits make factors.

    A run that merges and splits at once ((B, E) -> (B * H, E / H)) is first split into the common
    refinement of both sides, so that every product has factors of the right sizes. A run that holds
    a symbolic dim (the batch) is frozen.
    """
    segments = _segments(list(in_sizes), list(out_sizes))
    if segments is None:
        reason = f"{ctx.node.name}: reshape that could not be aligned"
        ctx.freeze(xl, reason)
        return tuple(ctx.fresh(s, frozen=reason) for s in out_sizes)
    out = [None] * len(out_sizes)
    for ins, outs in segments:
        if not outs:
            continue
        if not ins:
            out[outs[0]] = ctx.unit_dim("a reshape")
            continue
        if len(ins) == 1 and len(outs) == 1:
            out[outs[0]] = xl[ins[0]]
            continue
        concrete = all(is_concrete(in_sizes[d]) and xl[d] is not None for d in ins) \
            and all(is_concrete(out_sizes[d]) for d in outs)
        labels = _merge_split(ctx, [xl[d] for d in ins], [in_sizes[d] for d in ins],
                              [out_sizes[d] for d in outs], outs) if concrete else None
        if labels is None:
            reason = (f"{ctx.node.name}: reshaped together with a symbolic (batch) dimension" if not concrete
                      else f"{ctx.node.name}: reshape whose sizes have no common factorisation")
            for d in ins:
                ctx.freeze(xl[d], reason)
            for d in outs:
                out[d] = ctx.fresh(out_sizes[d], frozen=reason)
            continue
        for d, lab in zip(outs, labels):
            out[d] = lab
    return tuple(out)


def _rewrite_size_list(arg_index: int, first_out_dim=lambda rw: 0):
    """Rewrite a size-list argument from the current sizes of the output dims it names."""

    def rewrite(rw):
        args = list(rw.args)
        offset = first_out_dim(rw)
        sizes = list(args[arg_index])
        for p, entry in enumerate(sizes):
            if isinstance(entry, int) and entry != -1:
                sizes[p] = rw.count(rw.out_label[offset + p], default=entry)
        args[arg_index] = sizes
        return rw.target, tuple(args)

    return rewrite


@builtin(aten.view.default, aten.reshape.default, aten._unsafe_view.default, family="shape",
         rewrite=_rewrite_size_list(1))
def aten_view(ctx: RuleContext):
    """``view(Tensor self, SymInt[] size)``: dims regroup; merged dims are products of their sources."""
    x = ctx.arg(0)
    return reshape_labels(ctx, ctx.label(x), ctx.shape(x), ctx.out_shape)


@builtin(aten.flatten.using_ints, family="shape")
def aten_flatten(ctx: RuleContext):
    """``flatten.using_ints(Tensor self, int start_dim=0, int end_dim=-1)``: a merge."""
    x = ctx.arg(0)
    return reshape_labels(ctx, ctx.label(x), ctx.shape(x), ctx.out_shape)


def _unflatten_first_dim(rw):
    return normalize_dim(rw.args[1], len(rw.out_label) - len(rw.args[2]) + 1)


@builtin(aten.unflatten.int, family="shape", rewrite=_rewrite_size_list(2, _unflatten_first_dim))
def aten_unflatten(ctx: RuleContext):
    """``unflatten.int(Tensor self, int dim, SymInt[] sizes)``: a split into factors."""
    x = ctx.arg(0)
    return reshape_labels(ctx, ctx.label(x), ctx.shape(x), ctx.out_shape)


@builtin(aten.transpose.int, aten.transpose_.default, family="shape")
def aten_transpose(ctx: RuleContext):
    """``transpose.int(Tensor self, int dim0, int dim1)``: two dims swap."""
    xl = list(ctx.label(ctx.arg(0)))
    a, b = normalize_dim(ctx.arg(1), len(xl)), normalize_dim(ctx.arg(2), len(xl))
    xl[a], xl[b] = xl[b], xl[a]
    return tuple(xl)


@builtin(aten.t.default, aten.t_.default, aten.numpy_T.default, family="shape")
def aten_t(ctx: RuleContext):
    """``t(Tensor self)`` and ``numpy_T`` (``weight.T``): reversed dims."""
    return tuple(reversed(ctx.label(ctx.arg(0))))


@builtin(aten.mT.default, aten.mH.default, family="shape")
def aten_mt(ctx: RuleContext):
    """``mT(Tensor self)``: the last two dims swap."""
    xl = ctx.label(ctx.arg(0))
    return xl[:-2] + (xl[-1], xl[-2])


@builtin(aten.permute.default, family="shape")
def aten_permute(ctx: RuleContext):
    """``permute(Tensor self, int[] dims)``: output dim i is input dim dims[i]."""
    xl = ctx.label(ctx.arg(0))
    return tuple(xl[normalize_dim(d, len(xl))] for d in ctx.arg(1))


@builtin(aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.squeeze_.dim, family="shape")
def aten_squeeze(ctx: RuleContext):
    """``squeeze.dim(Tensor self, int dim)``: size-1 dims vanish."""
    x = ctx.arg(0)
    xl, shape = ctx.label(x), ctx.shape(x)
    dims = dims_arg(ctx.arg(1, "dim"), len(xl))
    return tuple(lab for d, (lab, s) in enumerate(zip(xl, shape)) if not (d in dims and is_concrete(s) and s == 1))


@builtin(aten.unsqueeze.default, aten.unsqueeze_.default, family="shape")
def aten_unsqueeze(ctx: RuleContext):
    """``unsqueeze(Tensor self, int dim)``: a new size-1 dim."""
    xl = list(ctx.label(ctx.arg(0)))
    xl.insert(normalize_dim(ctx.arg(1), len(xl) + 1), ctx.unit_dim("unsqueeze"))
    return tuple(xl)


@builtin(aten.expand.default, family="shape", rewrite=_rewrite_size_list(1))
def aten_expand(ctx: RuleContext):
    """``expand(Tensor self, SymInt[] size)``: size-1 dims repeat (new carrier atoms), others pass."""
    x = ctx.arg(0)
    xl, shape, out_shape = ctx.label(x), ctx.shape(x), ctx.out_shape
    lead = len(out_shape) - len(xl)
    out = [ctx.fresh(s) for s in out_shape[:lead]]
    for lab, s, o in zip(xl, shape, out_shape[lead:]):
        out.append(ctx.fresh(o) if is_concrete(s) and s == 1 and not (is_concrete(o) and o == 1) else lab)
    return tuple(out)


@builtin(aten.expand_as.default, family="shape")
def aten_expand_as(ctx: RuleContext):
    """``expand_as(Tensor self, Tensor other)``: like expand to other's shape; equal dims couple with other."""
    x, other = ctx.arg(0), ctx.arg(1)
    xl, ol, shape = ctx.label(x), ctx.label(other), ctx.shape(x)
    lead = len(ol) - len(xl)
    out = list(ol[:lead])
    for lab, s, o in zip(xl, shape, ol[lead:]):
        if is_concrete(s) and s == 1 and not (o is not None and len(o) == 1):
            out.append(o)
        else:
            ctx.couple(lab, o)
            out.append(lab)
    return tuple(out)


@builtin(aten.cat.default, family="shape")
def aten_cat(ctx: RuleContext):
    """``cat(Tensor[] tensors, int dim=0)``: the cat dim is the inputs' dims one after another (offsets)."""
    tensors = [t for t in ctx.arg(0) if len(ctx.shape(t)) == len(ctx.out_shape)]
    labels = [ctx.label(t) for t in tensors]
    dim = normalize_dim(ctx.arg(1, "dim", 0), len(ctx.out_shape))
    out = list(labels[0])
    for lab in labels[1:]:
        for d in range(len(out)):
            if d != dim:
                ctx.couple(out[d], lab[d])
    parts = [lab[dim] for lab in labels]
    if any(p is None for p in parts):
        ctx.freeze(tuple(p for p in parts if p is not None), f"{ctx.node.name}: concatenated along a symbolic dim")
        out[dim] = None
    else:
        import numpy as np

        out[dim] = np.concatenate(parts)
    return tuple(out)


@builtin(aten.stack.default, family="shape")
def aten_stack(ctx: RuleContext):
    """``stack(Tensor[] tensors, int dim=0)``: inputs' dims couple; the new dim indexes list elements (frozen)."""
    labels = [ctx.label(t) for t in ctx.arg(0)]
    dim = normalize_dim(ctx.arg(1, "dim", 0), len(ctx.out_shape))
    out = list(labels[0])
    for lab in labels[1:]:
        for d in range(len(out)):
            ctx.couple(out[d], lab[d])
    out.insert(dim, ctx.fresh(len(labels), frozen=f"{ctx.node.name}: stacked list elements are not removed"))
    return tuple(out)


def _split_bounds(length: int, sizes):
    bounds, start = [], 0
    for s in sizes:
        bounds.append((start, min(start + s, length)))
        start += s
    return bounds


def _split_outputs(ctx: RuleContext, sizes):
    x = ctx.arg(0)
    xl = ctx.label(x)
    dim = normalize_dim(ctx.arg(2, "dim", 0), len(xl))
    if xl[dim] is None or not all(isinstance(s, int) for s in sizes):  # data-dependent sizes
        reason = f"{ctx.node.name}: split with symbolic sizes"
        ctx.freeze(xl[dim], reason)
        return [tuple(lab if d != dim else ctx.fresh(v.shape[d], frozen=reason) for d, lab in enumerate(xl))
                for v in ctx.out]
    outs = []
    for start, end in _split_bounds(ctx.shape(x)[dim], sizes):
        lab = list(xl)
        lab[dim] = None if xl[dim] is None else xl[dim][start:end]
        outs.append(tuple(lab))
    return outs


def _uniform_sizes(length, split_size):
    return [min(split_size, length - s) for s in range(0, length, split_size)] or [0]


def _rewrite_split(rw):
    x, dim = rw.args[0], rw.args[2] if len(rw.args) > 2 else 0
    xl = rw.label(x)
    dim = normalize_dim(dim, len(xl))
    length = len(xl[dim]) if xl[dim] is not None else None
    if length is None or not all(isinstance(a, int) for a in (rw.args[1] if isinstance(rw.args[1], (list, tuple)) else [rw.args[1]])):
        return rw.target, rw.args
    if rw.target is aten.split_with_sizes.default:
        sizes = list(rw.args[1])
    elif rw.target is aten.chunk.default:
        sizes = _uniform_sizes(length, -(-length // rw.args[1]))
    else:
        sizes = _uniform_sizes(length, rw.args[1])
    new = [rw.count(xl[dim][a:b]) for a, b in _split_bounds(length, sizes)]
    if new == sizes:
        return rw.target, rw.args
    return aten.split_with_sizes.default, (x, new, dim)


@builtin(aten.split_with_sizes.default, family="shape", rewrite=_rewrite_split)
def aten_split_with_sizes(ctx: RuleContext):
    """``split_with_sizes(Tensor self, SymInt[] split_sizes, int dim=0)``: each output is a sub-range."""
    return _split_outputs(ctx, ctx.arg(1))


@builtin(aten.split.Tensor, family="shape", rewrite=_rewrite_split)
def aten_split(ctx: RuleContext):
    """``split.Tensor(Tensor self, SymInt split_size, int dim=0)``: equal sub-ranges."""
    x = ctx.arg(0)
    dim = normalize_dim(ctx.arg(2, "dim", 0), len(ctx.shape(x)))
    length = ctx.shape(x)[dim]
    if not is_concrete(length):
        return [ctx.label(x) for _ in ctx.out]
    return _split_outputs(ctx, _uniform_sizes(length, ctx.arg(1)))


@builtin(aten.chunk.default, family="shape", rewrite=_rewrite_split)
def aten_chunk(ctx: RuleContext):
    """``chunk(Tensor self, int chunks, int dim=0)``: equal sub-ranges of ceil(n / chunks)."""
    x = ctx.arg(0)
    dim = normalize_dim(ctx.arg(2, "dim", 0), len(ctx.shape(x)))
    length = ctx.shape(x)[dim]
    if not is_concrete(length):
        return [ctx.label(x) for _ in ctx.out]
    return _split_outputs(ctx, _uniform_sizes(length, -(-length // ctx.arg(1))))


@builtin(aten.unbind.int, family="shape")
def aten_unbind(ctx: RuleContext):
    """``unbind.int(Tensor self, int dim=0)``: one output per position; the dim is frozen."""
    xl = ctx.label(ctx.arg(0))
    dim = normalize_dim(ctx.arg(1, "dim", 0), len(xl))
    ctx.freeze(xl[dim], f"{ctx.node.name}: unbind indexes positions")
    return [xl[:dim] + xl[dim + 1:] for _ in ctx.out]


def _norm_index(index, length, default):
    if index is None:
        return default
    if index < 0:
        index += length
    return max(0, min(index, length))


def aten_slice(ctx: RuleContext):
    """``slice.Tensor(Tensor self, int dim=0, SymInt? start=None, SymInt? end=None, SymInt step=1)``: a sub-range."""
    x = ctx.arg(0)
    xl = list(ctx.label(x))
    dim = normalize_dim(ctx.arg(1, "dim", 0), len(xl))
    start, end, step = ctx.arg(2, "start"), ctx.arg(3, "end"), ctx.arg(4, "step", 1)
    if xl[dim] is None or not all(v is None or isinstance(v, int) for v in (start, end, step)):
        if xl[dim] is not None:
            ctx.freeze(xl[dim], f"{ctx.node.name}: slice with symbolic bounds")
            xl[dim] = ctx.fresh(ctx.out_shape[dim], frozen=f"{ctx.node.name}: slice with symbolic bounds")
        return tuple(xl)
    length = len(xl[dim])
    if step != 1:
        ctx.freeze(xl[dim], f"{ctx.node.name}: strided slice")
    xl[dim] = xl[dim][_norm_index(start, length, 0):_norm_index(end, length, length):step]
    return tuple(xl)


def _rewrite_slice(rw):
    args = list(rw.args) + [None] * (5 - len(rw.args))
    xl = rw.label(args[0])
    dim = normalize_dim(args[1] if args[1] is not None else 0, len(xl))
    lab = xl[dim]
    if lab is None or not all(v is None or isinstance(v, int) for v in args[2:4]):
        return rw.target, rw.args
    length = len(lab)
    if args[2] is not None:
        args[2] = rw.count(lab[: _norm_index(args[2], length, 0)])
    if args[3] is not None:
        args[3] = rw.count(lab[: _norm_index(args[3], length, length)])
    return rw.target, tuple(args[: max(len(rw.args), 4 if args[3] is not None else 3)])


builtin(aten.slice.Tensor, family="shape", rewrite=_rewrite_slice)(aten_slice)


def _rewrite_select(rw):
    xl = rw.label(rw.args[0])
    dim = normalize_dim(rw.args[1], len(xl))
    lab = xl[dim]
    if lab is None or not isinstance(rw.args[2], int):
        return rw.target, rw.args
    index = rw.args[2] + len(lab) if rw.args[2] < 0 else rw.args[2]
    return rw.target, (rw.args[0], rw.args[1], rw.count(lab[:index]))


@builtin(aten.select.int, family="shape", rewrite=_rewrite_select)
def aten_select(ctx: RuleContext):
    """``select.int(Tensor self, int dim, SymInt index)``: the dim vanishes; the selected channel is frozen."""
    xl = ctx.label(ctx.arg(0))
    dim = normalize_dim(ctx.arg(1), len(xl))
    index = ctx.arg(2)
    if xl[dim] is not None:
        if isinstance(index, int):
            ctx.freeze(xl[dim][index:index + 1] if index >= 0 else xl[dim][index:][:1],
                       f"{ctx.node.name}: selected by position")
        else:
            ctx.freeze(xl[dim], f"{ctx.node.name}: selected by a symbolic position")
    return xl[:dim] + xl[dim + 1:]


@builtin(aten.narrow.default, family="shape")
def aten_narrow(ctx: RuleContext):
    """``narrow(Tensor self, int dim, SymInt start, SymInt length)``: a sub-range (frozen: length literal)."""
    xl = list(ctx.label(ctx.arg(0)))
    dim = normalize_dim(ctx.arg(1), len(xl))
    ctx.freeze(xl[dim], f"{ctx.node.name}: narrow by position")
    start, length = ctx.arg(2), ctx.arg(3)
    if xl[dim] is not None and isinstance(start, int) and isinstance(length, int):
        xl[dim] = xl[dim][start:start + length]
    else:
        xl[dim] = ctx.fresh(ctx.out_shape[dim], frozen=f"{ctx.node.name}: narrow by position")
    return tuple(xl)


@builtin(aten.index.Tensor, family="shape")
def aten_index(ctx: RuleContext):
    """``index.Tensor(Tensor self, Tensor?[] indices)``: indexed dims are positions (frozen)."""
    x, indices = ctx.arg(0), ctx.arg(1)
    xl = ctx.label(x)
    reason = f"{ctx.node.name}: indexed by a tensor of positions"
    used = [i for i, t in enumerate(indices) if t is not None]
    for i in used:
        ctx.freeze(xl[i], reason)
        ctx.freeze(ctx.label(indices[i]), reason)
    out_rank = len(ctx.out_shape)
    index_rank = out_rank - (len(xl) - len(used))
    contiguous = used == list(range(used[0], used[-1] + 1)) if used else True
    first = used[0] if (used and contiguous) else 0
    index_dims = tuple(ctx.fresh(s, frozen=reason) for s in ctx.out_shape[first:first + index_rank])
    rest_before = tuple(xl[d] for d in range(first) if d not in used)
    rest_after = tuple(xl[d] for d in range(first, len(xl)) if d not in used)
    return rest_before + index_dims + rest_after


@builtin(aten.index_select.default, family="shape")
def aten_index_select(ctx: RuleContext):
    """``index_select(Tensor self, int dim, Tensor index)``: the dim becomes positions (frozen)."""
    xl = list(ctx.label(ctx.arg(0)))
    dim = normalize_dim(ctx.arg(1), len(xl))
    reason = f"{ctx.node.name}: selected by a tensor of positions"
    ctx.freeze(xl[dim], reason)
    xl[dim] = ctx.fresh(ctx.out_shape[dim], frozen=reason)
    return tuple(xl)


_POSITIONAL = [
    aten.gather.default, aten.repeat.default, aten.roll.default, aten.flip.default, aten.constant_pad_nd.default,
    aten.pad.default, aten.tril.default, aten.triu.default, aten.sort.default, aten.topk.default,
    aten.repeat_interleave.self_int, aten.repeat_interleave.Tensor, aten.masked_select.default,
    aten.scatter.src, aten.scatter.value, aten.scatter_add.default, aten.index_put.default,
    aten.index_put_.default, aten.nonzero.default, aten.cumprod.default,
]


@builtin(*_POSITIONAL, family="shape")
def aten_positional(ctx: RuleContext):
    """Ops whose result depends on positions along every dim they touch (gather, roll, tril, ...): frozen."""
    reason = f"{ctx.node.name}: {ctx.node.target} depends on positions"
    for a in ctx.node.args:
        if isinstance(a, (list, tuple)):
            for item in a:
                ctx.freeze(ctx.label(item), reason)
        else:
            ctx.freeze(ctx.label(a), reason)
    if isinstance(ctx.out, (tuple, list)):
        return [ctx.fresh_tensor(v, reason) for v in ctx.out]
    return ctx.fresh_tensor(ctx.out, reason)


@builtin(aten.new_zeros.default, aten.new_ones.default, aten.new_empty.default, aten.new_full.default,
         family="shape", rewrite=_rewrite_size_list(1))
def aten_new_zeros(ctx: RuleContext):
    """``new_zeros(Tensor self, SymInt[] size)``: a constant tensor; its dims take any coupling."""
    return tuple(ctx.fresh(s) for s in ctx.out_shape)


@builtin(aten.zeros.default, aten.ones.default, aten.empty.memory_format, aten.full.default, aten.rand.default,
         aten.randn.default, family="shape", rewrite=_rewrite_size_list(0))
def aten_zeros(ctx: RuleContext):
    """``zeros(SymInt[] size)``: a constant tensor; its dims take any coupling."""
    return tuple(ctx.fresh(s) for s in ctx.out_shape)


@builtin(aten.arange.default, aten.arange.start, aten.arange.start_step, aten.tril_indices.default,
         aten.triu_indices.default, aten.scalar_tensor.default, aten.randperm.default, aten.eye.default,
         family="shape")
def aten_arange(ctx: RuleContext):
    """``arange(Scalar end)``: positions; frozen."""
    return ctx.fresh_tensor(ctx.out, f"{ctx.node.name}: {ctx.node.target} makes positions")

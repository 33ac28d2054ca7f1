"""Walk a traced graph in order and label every tensor dimension with atoms, applying the rules.

Placeholders (model inputs) and graph outputs are frozen: their sizes are the model's contract.
Parameters and buffers (``get_attr`` nodes) get fresh atoms per dimension, once per tensor: a
parameter shared under several module paths (one ``Linear`` in several blocks, tied weights) is
named by its first path wherever the graph reads it. Ops without a rule freeze every dimension
they touch and are reported with their source line.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn

from amgp_fx.groups.atoms import AtomTable
from amgp_fx.groups.context import RuleContext, sizes_of
from amgp_fx.groups.model import Role, UnknownOp
from amgp_fx.groups.registry import RuleRegistry

_NON_TENSOR_OPS = {operator.mul, operator.add, operator.sub, operator.floordiv, operator.truediv, operator.mod,
                   operator.neg, torch.sym_int, torch.sym_float, torch.sym_max, torch.sym_min}


@dataclass
class Propagation:
    atoms: AtomTable
    labels: dict  # fx.Node -> tensor label, list of tensor labels, or None
    tensors: dict  # get_attr fx.Node -> (fully qualified name, is_parameter)
    roles: dict  # (fqn, dim) -> Role
    unknown_ops: list = field(default_factory=list)


def _is_tensor(value) -> bool:
    return isinstance(value, torch.Tensor)


def _input_label(ctx_fresh, value, reason):
    if _is_tensor(value):
        return tuple(ctx_fresh(s, reason, d) for d, s in enumerate(value.shape))
    if isinstance(value, (list, tuple)):
        return [_input_label(ctx_fresh, v, reason) for v in value]
    return None


def _freeze_all(ctx: RuleContext, label, reason: str) -> None:
    if isinstance(label, list):
        for item in label:
            _freeze_all(ctx, item, reason)
    elif isinstance(label, tuple):
        ctx.freeze(label, reason)


def propagate(module: fx.GraphModule, registry: RuleRegistry) -> Propagation:
    atoms = AtomTable()
    labels: dict = {}
    roles: dict = {}
    canonical = _canonical_names(module)
    parameter_names = {name for name, _ in module.named_parameters()}
    tensors: dict = {}
    param_names: dict = {}
    label_of_tensor: dict = {}  # id(tensor) -> its label, shared by every alias
    result = Propagation(atoms, labels, tensors, roles)
    used = {id(_fetch_attr(module, node.target)) for node in module.graph.nodes if node.op == "get_attr" and node.users}

    for node in module.graph.nodes:
        ctx = RuleContext(node, atoms, labels, roles, param_names)
        value = node.meta.get("val")
        if node.op == "placeholder":
            labels[node] = _input_label(
                lambda s, why, d: ctx.fresh(s, frozen=why, what=f"[{d}]"), value,
                f"input '{node.name}' (its sizes are the model's contract)")
        elif node.op == "get_attr":
            tensor = _fetch_attr(module, node.target)
            if not _is_tensor(tensor):
                labels[node] = None
                continue
            name = canonical.get(id(tensor), node.target)
            param_names[node] = name
            if id(tensor) in label_of_tensor:
                labels[node] = label_of_tensor[id(tensor)]
                continue
            tensors[node] = (name, name in parameter_names)
            labels[node] = tuple(ctx.fresh(s, what=f"{name}[{d}]") for d, s in enumerate(tensor.shape))
            label_of_tensor[id(tensor)] = labels[node]
            if not tensor.dtype.is_floating_point:
                ctx.freeze(labels[node], f"integer tensor '{name}' holds ids or positions")
            if id(tensor) not in used:  # e.g. the table of an optional input this trace left out
                ctx.freeze(labels[node], f"'{name}' is not used by the traced forward: pruning it saves nothing "
                                         "the trace can see")
        elif node.op == "call_function":
            labels[node] = _apply(ctx, node, registry, result)
        elif node.op == "output":
            reason = "model output (its sizes are the model's contract)"
            for arg in node.all_input_nodes:
                _freeze_all(ctx, labels.get(arg), reason)
        else:  # call_module (_guards_fn), call_method: no tensors produced that we track
            labels[node] = None
    return result


def _canonical_names(module: nn.Module) -> dict:
    """id(tensor) -> the one name a parameter or buffer goes by (its first module path)."""
    names: dict = {}
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        names.setdefault(id(tensor), name)
    return names


def _fetch_attr(module: fx.GraphModule, target: str):
    obj = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _apply(ctx: RuleContext, node: fx.Node, registry: RuleRegistry, result: Propagation):
    if node.target is operator.getitem:
        source = result.labels.get(node.args[0])
        if isinstance(source, list) and isinstance(node.args[1], int) and node.args[1] < len(source):
            return source[node.args[1]]
        return None
    rule = registry.get(node.target)
    if rule is None:
        if node.target in _NON_TENSOR_OPS or not _produces_tensor(node.meta.get("val")):
            return None  # shape arithmetic on SymInts and asserts carry no channels
        return _unknown(ctx, node, result)
    try:
        labels = rule.propagate(ctx)
        problem = _check_labels(labels, node.meta.get("val"))
    except Exception as e:  # noqa: BLE001 - a rule that cannot handle this call must not guess
        problem = f"{type(e).__name__}: {e}"
    if problem is None:
        return labels
    return _unknown(ctx, node, result, why=f"rule for {node.target} could not handle {node.name} ({problem})")


def _check_labels(labels, value) -> str | None:
    """A rule's labels must match the traced output: rank, and length of every concrete dim."""
    if _is_tensor(value):
        if not isinstance(labels, tuple) or len(labels) != value.dim():
            return f"labels for {value.dim()} dims expected"
        for size, label in zip(sizes_of(value), labels):
            if isinstance(size, int) and label is not None and len(label) != size:
                return f"a label of length {len(label)} for a dim of size {size}"
        return None
    if isinstance(value, (list, tuple)):
        if not isinstance(labels, list) or len(labels) != len(value):
            return "one label per output expected"
        for item_labels, item in zip(labels, value):
            problem = _check_labels(item_labels, item) if _is_tensor(item) else None
            if problem:
                return problem
    return None


def _produces_tensor(value) -> bool:
    if _is_tensor(value):
        return True
    if isinstance(value, (list, tuple)):
        return any(_is_tensor(v) for v in value)
    return False


def _unknown(ctx: RuleContext, node: fx.Node, result: Propagation, why: str | None = None):
    """No rule (or a rule that failed): freeze every tensor dim the op touches; never guess."""
    reason = why or f"op {node.target} ({node.name}) has no coupling rule"
    for arg in node.all_input_nodes:
        _freeze_all(ctx, result.labels.get(arg), reason)
    stack = node.meta.get("nn_module_stack")
    module_stack = " > ".join(str(v[0]) for v in stack.values()) if stack else None
    result.unknown_ops.append(UnknownOp(node.name, str(node.target), node.meta.get("stack_trace"), module_stack))
    value = node.meta.get("val")
    if _is_tensor(value):
        return ctx.fresh_tensor(value, reason)
    if isinstance(value, (list, tuple)):
        return [ctx.fresh_tensor(v, reason) if _is_tensor(v) else None for v in value]
    return None


__all__ = ["propagate", "Propagation", "Role"]

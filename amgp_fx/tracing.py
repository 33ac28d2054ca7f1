"""Trace a model to a runnable ATen-level FX graph with ``torch.export`` (non-strict, dynamic batch).

``torch.export`` survives far more third-party recommendation code than ``symbolic_trace``. The
returned ``TracedModel.module`` is the unlifted ``fx.GraphModule`` of the exported program: it
shares the model's ``nn.Parameter`` and buffer objects, so an optimizer built on the model keeps
working when surgery later slices those tensors in place and rewrites the graph's size literals.
"""
from __future__ import annotations

import logging
import os
import re
import traceback
import types
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils import _pytree as pytree

log = logging.getLogger(__name__)
aten = torch.ops.aten

# ops whose literal argument differs between training and evaluation: position, name, eval value
_TRAINING_LITERALS = {
    aten.dropout.default: (2, "train", False),
    aten.dropout_.default: (2, "train", False),
    aten.feature_dropout.default: (2, "train", False),
    aten.alpha_dropout.default: (2, "train", False),
    aten.batch_norm.default: (5, "training", False),
    aten.scaled_dot_product_attention.default: (4, "dropout_p", 0.0),
    aten.gru.input: (6, "train", False),  # dropout between stacked layers
    aten.lstm.input: (6, "train", False),
}
_META_KEY = "amgp_fx_train_literal"


class TraceError(RuntimeError):
    """``torch.export`` could not trace the model; the message names the line and what to try."""


class ExampleInputError(ValueError):
    """The model's own forward fails on the example inputs."""


@dataclass
class TracedModel:
    """A model, its exported program and the runnable graph module that shares its parameters."""

    model: nn.Module
    program: torch.export.ExportedProgram
    module: fx.GraphModule
    args: tuple
    kwargs: dict = field(default_factory=dict)
    eval_matches: bool = True  # False when forward branches on self.training (see trace)


def _as_args(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def _batch_dynamic_shapes(model: nn.Module, args: tuple, kwargs: dict):
    """Mark dim 0 of every tensor input as a (possibly specialised) dynamic batch dim.

    ``ShapesCollection`` walks tuples, dicts and registered pytree nodes (a torchrec-style
    ``KeyedJaggedTensor``) alike; export specialises any dim that turns out not to be dynamic.
    """
    shapes = torch.export.ShapesCollection()
    for leaf in pytree.tree_leaves((args, kwargs)):
        if isinstance(leaf, torch.Tensor) and leaf.dim() >= 1:
            shapes[leaf] = {0: torch.export.Dim.AUTO}
    return shapes.dynamic_shapes(model, args, kwargs)


_TORCH_DIR = os.path.dirname(torch.__file__)
_GRAPH_FRAME = re.compile(r"# File: (?P<file>.+?):(?P<line>\d+) in \S+, code: (?P<code>.*)")
_DATA_DEPENDENT = ("GuardOnDataDependentSymNode", "data-dependent", "data dependent")


def _is_user_file(filename: str) -> bool:
    """Code the user can change: not torch itself (``torchrec/`` or ``torchfm/`` beside ``torch/``
    are user code), not amgp-fx's tracing, not generated code (``<string>``, ``<eval_with_key>``)."""
    if filename.startswith("<"):
        return False
    if filename.startswith(_TORCH_DIR + os.sep):
        return False
    return not filename.endswith(os.path.join("amgp_fx", "tracing.py"))


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and what caused it, outermost first (torch re-raises the original as a cause)."""
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        out.append(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return out


def _user_frame(exc: BaseException) -> str | None:
    """``file:line: code`` of the user's line that failed.

    The innermost user frame of the deepest exception in the chain; else the last user line of the
    partial graph that data-dependent errors print (``# File: ...:10 in forward, code: ...``).
    """
    found = None
    for item in _chain(exc):
        frames = [f for f in traceback.extract_tb(item.__traceback__) if _is_user_file(f.filename)]
        if frames:
            f = frames[-1]
            found = f"{f.filename}:{f.lineno}: {(f.line or '').strip()}"
    if found:
        return found
    for item in reversed(_chain(exc)):
        lines = [m for m in _GRAPH_FRAME.finditer(str(item)) if _is_user_file(m.group("file"))]
        if lines:
            m = lines[-1]
            return f"{m.group('file')}:{m.group('line')}: {m.group('code').strip()}"
    return None


def _holds_packed_sequence(exc: BaseException) -> bool:
    """A ``PackedSequence`` was live in a failing frame (its sizes depend on the lengths' values)."""
    from torch.nn.utils.rnn import PackedSequence

    for item in _chain(exc):
        tb = item.__traceback__
        while tb is not None:
            if any(isinstance(v, PackedSequence) for v in tb.tb_frame.f_locals.values()):
                return True
            tb = tb.tb_next
    return False


def _what_to_change(exc: BaseException, where: str | None) -> str:
    """Advice for the failure at hand, most specific first."""
    if _holds_packed_sequence(exc) or (where and "pack_padded_sequence" in where):
        return ("pack_padded_sequence makes a PackedSequence whose sizes are the lengths' values, which"
                " torch.export cannot trace. Run the recurrent layer on the padded batch instead (padding"
                " after the last valid step does not change the earlier outputs) and take each row's last"
                " valid output by indexing, outputs[torch.arange(B), lengths - 1] (a gather would freeze the"
                " hidden units for pruning), or mask the padded steps.")
    text = " ".join(f"{type(item).__name__}: {item}" for item in _chain(exc))
    if any(key in text for key in _DATA_DEPENDENT):
        return ("the line branches on a tensor's values (`if mask.any():`, `if x.sum() > 0:`), and the"
                " traced graph must be the same for every input. Compute both outcomes and select with"
                " torch.where or masked_fill (masking with an all-False mask changes nothing, so such an"
                " `if` can usually go), or move the check out of forward.")
    return ("make the failing line shape-independent (no Python branching on tensor values, no"
            " .item()/.tolist() in forward), move data-dependent code out of forward, or wrap it in a"
            " custom op (torch.library.custom_op) and register a rule for it.")


def check_example_inputs(model: nn.Module, args: tuple, kwargs: dict) -> Any:
    """Run the model eagerly once so that wrong inputs fail with a clear message before tracing."""
    try:
        with torch.no_grad():
            return model(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - any failure here is the inputs' or model's
        where = _user_frame(e)
        shapes = pytree.tree_map(lambda x: tuple(x.shape) + (str(x.dtype),) if isinstance(x, torch.Tensor) else x, args)
        raise ExampleInputError(
            f"{type(model).__name__}.forward failed on the example inputs {shapes}: {type(e).__name__}: {e}"
            + (f" (at {where})" if where else "")
            + ". Pass inputs of the shapes and dtypes the model expects (batch size >= 2)."
        ) from e


def trace(model: nn.Module, example_inputs: Any, *, kwargs: dict | None = None, dynamic_batch: bool = True,
          check_inputs: bool = True) -> TracedModel:
    """Export ``model`` with ``torch.export`` (non-strict) and unlift it into a runnable graph module.

    Args:
        model: any ``nn.Module``; its inputs may be tensors, dicts or tuples of tensors.
        example_inputs: positional arguments (a tuple; any other value is one positional argument).
            The batch (dim 0 of every tensor) is traced as dynamic; use a batch size >= 2.
        kwargs: keyword arguments of ``forward``.
    Returns:
        ``TracedModel`` whose ``module`` shares the model's Parameter objects and accepts any batch size.
    Raises:
        ExampleInputError: the model's own forward fails on the inputs.
        TraceError: ``torch.export`` fails; the message names the user line and what to try.
    """
    args, kwargs = _as_args(example_inputs), dict(kwargs or {})
    if check_inputs:
        check_example_inputs(model, args, kwargs)
    was_training = model.training
    if isinstance(model, fx.GraphModule) and "train" not in vars(model):
        enable_train_eval_(model)  # an exported program's module refuses .train() otherwise
    model.train()  # trace the training behaviour of dropout / batch norm; the flags are flipped later
    try:
        dynamic_shapes = _batch_dynamic_shapes(model, args, kwargs) if dynamic_batch else None
        program = torch.export.export(model, args, kwargs or None, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as e:  # noqa: BLE001
        where = _user_frame(e)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TraceError(
            f"torch.export could not trace {type(model).__name__}: {type(e).__name__}: {first}"
            + (f"\n  at {where}" if where else "")
            + "\n  What to try: " + _what_to_change(e, where)
        ) from e
    finally:
        model.train(was_training)
    module = unguarded_module(program)
    _strip_assertions(module)
    enable_train_eval_(module)
    traced = TracedModel(model, program, module, args, kwargs)
    traced.eval_matches = _eval_matches(model, module, args, kwargs)
    model.train(was_training)
    module.train(was_training)
    return traced


def _eval_matches(model: nn.Module, module: fx.GraphModule, args: tuple, kwargs: dict) -> bool:
    """The graph is traced in training mode; check that flipping dropout/batch-norm literals gives
    the model's own eval behaviour (it does not when forward branches on ``self.training``)."""
    model.eval()
    module.eval()
    try:
        with torch.no_grad():
            expected, actual = model(*args, **kwargs), module(*args, **kwargs)
        pairs = [(a, b) for a, b in zip(pytree.tree_leaves(expected), pytree.tree_leaves(actual))
                 if isinstance(a, torch.Tensor) and a.is_floating_point()]
        if any(a.is_meta for a, _ in pairs):
            return True  # nothing to compare on the meta device
        same = all(torch.allclose(a, b, rtol=1e-3, atol=1e-3) for a, b in pairs)  # TF32 on GPUs
    except Exception:  # noqa: BLE001 - a mismatch of structure is a mismatch
        same = False
    if not same:
        log.warning("%s behaves differently in eval mode than its traced graph with dropout and batch norm "
                    "switched off (forward probably branches on self.training); the graph keeps the "
                    "training-mode code path", type(model).__name__)
    return same


def unguarded_module(program: torch.export.ExportedProgram) -> fx.GraphModule:
    """``program.module()`` without the call of its shape guards (``_guards_fn``).

    Every later ``torch.export`` of the module (analysis, surgery, ONNX export) traces its own guards;
    re-tracing the old ones can fail where they hold: torch 2.11 cannot prove ``min(B, 2*B) == B``,
    a guard from a sequence-first attention's contiguity check, for a dynamic B. The inputs' shapes
    are checked where they enter (``model_inputs.check_inputs``).
    """
    return program.module(check_guards=False)


def _strip_assertions(module: fx.GraphModule) -> None:
    """Drop metadata assertions whose size literals would be stale after surgery."""
    changed = False
    for node in list(module.graph.nodes):
        if node.op == "call_function" and node.target in (aten._assert_tensor_metadata.default,) and not node.users:
            module.graph.erase_node(node)
            changed = True
    if changed:
        module.recompile()


def set_training_(module: fx.GraphModule, mode: bool) -> int:
    """Switch dropout, batch-norm and attention-dropout literals between their traced (training)
    values and their evaluation values; returns how many nodes changed.

    The traced value is kept in ``node.meta["amgp_fx_train_literal"]``.
    """
    changed = 0
    for node in module.graph.nodes:
        spec = _TRAINING_LITERALS.get(node.target) if node.op == "call_function" else None
        if spec is None:
            continue
        position, name, eval_value = spec
        in_args = len(node.args) > position
        current = node.args[position] if in_args else node.kwargs.get(name)
        if current is None:
            continue
        traced = node.meta.setdefault(_META_KEY, current)
        wanted = traced if mode else eval_value
        if current == wanted:
            continue
        if in_args:
            args = list(node.args)
            args[position] = wanted
            node.args = tuple(args)
        else:
            node.kwargs = {**node.kwargs, name: wanted}
        changed += 1
    if changed:
        module.recompile()
    return changed


def _train(self: fx.GraphModule, mode: bool = True):
    set_training_(self, mode)
    self.training = mode
    return self


def enable_train_eval_(module: fx.GraphModule) -> fx.GraphModule:
    """Let ``module.train()``/``.eval()`` work on an exported graph module by flipping its literals.

    Exported modules refuse ``.eval()``; torch.ao's ``allow_exported_model_train_eval`` binds
    replacements on the instance the same way.
    """
    module.train = types.MethodType(_train, module)
    module.eval = types.MethodType(lambda self: _train(self, False), module)
    return module

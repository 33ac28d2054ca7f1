"""Load and save models safely: ``torch.export`` programs, state dicts with a factory, and (only when
trusted) pickled modules.

Formats, safest first:

- ``.pt2``: a ``torch.export`` program (``torch.export.save``). Graph and weights are data; but an
  archive *may* hold pickled weights, pickled constants, compiled AOTInductor code or example
  inputs that need pickle, which ``torch.export.load`` would run. :func:`check_pt2_archive` opens
  the zip first (CRC of every member, each payload's ``use_pickle`` flag, every embedded ``.pt``
  loaded with ``weights_only=True``) and refuses such an archive without ``trust_pickle``.
- ``.safetensors`` or ``.pt``/``.pth``/``.bin`` state dict (``torch.load(weights_only=True)``) plus
  a factory ``package.module:callable`` or ``path/to/file.py:callable`` with keyword arguments. A
  pruned model's state dict carries its pruning plan (safetensors metadata); the plan re-creates
  the pruned shapes on the factory's model (:func:`amgp_fx.pruning_plan.apply_plan`).
- A whole pickled ``nn.Module``: only with ``trust_pickle=True``, with a logged warning.

Everything this module writes goes through :mod:`amgp_fx.fileio` (temporary file, then rename), so a
failure never leaves a half-written file.

Example:
    >>> import tempfile, os
    >>> from amgp_fx import models
    >>> model = models.build_model("dlrm")
    >>> folder = tempfile.mkdtemp()
    >>> save_pt2(model, model.example_inputs(4), os.path.join(folder, "m.pt2"))
    >>> loaded = load_model(os.path.join(folder, "m.pt2"))
    >>> loaded.module(*loaded.example_inputs).shape
    torch.Size([8])
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import io
import json
import logging
import os
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from amgp_fx.errors import FactoryError, InputSpecError, ModelFileError, TraceFailure, TrainingFailure, UsageError
from amgp_fx.fileio import atomic_write_bytes, atomic_write_with
from amgp_fx.model_inputs import (batch_size_of, check_inputs, load_example_batch, make_inputs, parse_input_spec,
                                  resize_batch)

log = logging.getLogger(__name__)

__all__ = ["LoadedModel", "build_from_factory", "check_finite_weights", "check_pt2_archive", "infer_inputs",
           "load_model", "save_pt2", "save_state_dict"]

META_FILE = "amgp_fx.json"  # extra file in a .pt2; the same JSON under this key in safetensors metadata
META_FORMAT, META_VERSION = "amgp-fx-model", 1
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_RESAVE = "Re-create it with 'amgp-compress prune' or torch.export.save, or save a state dict instead"


@dataclass
class LoadedModel:
    """A runnable model, the example inputs it was checked on, and what it was loaded from."""

    module: nn.Module  # eager model, or a GraphModule (a .pt2, or a factory model with a plan applied)
    example_inputs: tuple  # positional arguments: tensors, or any pytree of them (dicts, nested tuples)
    description: str
    metadata: dict = field(default_factory=dict)  # amgp-fx metadata found in the file (plan, factory)
    static_batch: int | None = None  # a .pt2 exported with a fixed batch size: it runs at this batch only
    notes: list[str] = field(default_factory=list)  # what the loader decided for the user (shown by the CLI)


def _meta(metadata: Mapping[str, Any] | None) -> str:
    return json.dumps({"format": META_FORMAT, "version": META_VERSION, **dict(metadata or {})}, sort_keys=True)


def _read_meta(text: str | None, source: Path) -> dict:
    if not text:
        return {}
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:  # RecursionError: nested too deeply
        raise ModelFileError(f"{source}: its amgp-fx metadata is not valid JSON ({error})", _RESAVE) from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        return {}
    if meta.get("version") != META_VERSION:
        raise ModelFileError(f"{source} was written by another amgp-fx version (metadata version "
                             f"{meta.get('version')!r}, this one reads {META_VERSION})", "Upgrade amgp-fx")
    return meta


# -- .pt2 ---------------------------------------------------------------------------------------------
def check_pt2_archive(path: Path, trust_pickle: bool = False) -> None:
    """Refuse a truncated or corrupt archive, and one that would unpickle or load code without trust.

    Raises:
        ModelFileError: not a zip, a member fails its CRC, or pickled/compiled content without trust.
    """
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path} is not a torch.export archive: it is truncated, corrupt or another format",
                             _RESAVE)
    unsafe = []
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
            if damaged is not None:
                raise ModelFileError(f"{path} is corrupt: archive member {damaged} fails its CRC check",
                                     "Copy or re-create the file; it was damaged on disk or in transfer")
            for name in archive.namelist():
                inner = name.split("/", 1)[-1]
                if inner.startswith(("data/aotinductor/", "data/executorch/")):
                    unsafe.append(f"{name} (compiled code)")
                elif inner.endswith("_config.json") and inner.startswith(("data/weights/", "data/constants/")):
                    config = json.loads(archive.read(name)).get("config", {})
                    unsafe += [f"{name}:{fqn}" for fqn, entry in config.items()
                               if entry.get("use_pickle") or not str(entry.get("path_name", "")).startswith(
                                   ("weight_", "tensor_"))]
                elif inner.endswith(".pt"):
                    try:
                        torch.load(io.BytesIO(archive.read(name)), weights_only=True, map_location="cpu")
                    except Exception:  # noqa: BLE001 - anything weights_only refuses needs pickle
                        unsafe.append(name)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RecursionError, AttributeError) as error:
        # ValueError: also bad JSON or text; RecursionError: JSON nested too deeply; AttributeError: JSON
        # of another shape (a list where an object belongs)
        raise ModelFileError(f"{path} is not a readable torch.export archive ({type(error).__name__}: "
                             f"{' '.join(str(error).split())[:150]})", _RESAVE) from None
    if unsafe and not trust_pickle:
        raise ModelFileError(f"{path} holds pickled Python objects or compiled code ({', '.join(unsafe[:3])}); "
                             "loading it can execute arbitrary code",
                             "Re-save it with plain tensors, or pass --trust-pickle if you trust its author")
    if unsafe:
        log.warning("loading %s with --trust-pickle: pickled content can execute arbitrary code", path)


def _load_pt2(path: Path, trust_pickle: bool) -> tuple[nn.Module, tuple | None, dict, torch.export.ExportedProgram]:
    from amgp_fx.tracing import enable_train_eval_, unguarded_module

    check_pt2_archive(path, trust_pickle)
    extra = {META_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No complete tensor found")  # buffers sharing storage
            program = torch.export.load(path, extra_files=extra)
    except Exception as error:  # deserialisation failures of any kind
        raise ModelFileError(f"torch.export.load could not read {path}: {type(error).__name__}: "
                             f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}",
                             "Save it again with this torch version (torch.export files are tied to torch "
                             "releases), or use a state dict with --factory") from error
    # torch's deserialised guard function fails on dict inputs ('NoneType' has no attribute 'size');
    # the guards it checks (batch size, shapes) are checked here: static_batch_of, check_inputs
    module = unguarded_module(program)
    module = enable_train_eval_(module)  # .train()/.eval() flip dropout/batch-norm literals
    args, kwargs = program.example_inputs if program.example_inputs else (None, {})
    saved = tuple(args) if args is not None and not kwargs else None
    return module, saved, _read_meta(extra.get(META_FILE), path), program


def _user_input_values(program: torch.export.ExportedProgram) -> list:
    """The fake tensors (or constants) of the program's user inputs, in order."""
    nodes = {n.name: n for n in program.graph_module.graph.find_nodes(op="placeholder")}
    return [nodes[name].meta.get("val") if name in nodes else None for name in program.graph_signature.user_inputs]


def static_batch_of(program: torch.export.ExportedProgram, saved_inputs: tuple | None) -> int | None:
    """The batch size a program was exported with when no input has a symbolic dim 0 (a static
    batch: the graph holds that size, so the model runs at that batch only); None when it is dynamic."""
    values = [v for v in _user_input_values(program) if isinstance(v, torch.Tensor)]
    if not values or any(v.dim() >= 1 and isinstance(v.shape[0], torch.SymInt) for v in values):
        return None
    batch = batch_size_of(saved_inputs) if saved_inputs is not None else None
    if batch is None:
        sizes = [int(v.shape[0]) for v in values if v.dim() >= 1]
        batch = sizes[0] if sizes else None
    return batch


def _inputs_from_program(program: torch.export.ExportedProgram, batch_size: int) -> tuple | None:
    """Inputs made from the program's own input signature (dtypes, shapes; a symbolic dim 0 is
    ``batch_size``, ids are 0), for an archive saved without example inputs; None if it has kwargs."""
    leaves = []
    for value in _user_input_values(program):
        if not isinstance(value, torch.Tensor):
            leaves.append(value)
            continue
        shape = []
        for index, dim in enumerate(value.shape):
            if isinstance(dim, torch.SymInt):
                hint = getattr(dim.node, "hint", None)
                dim = batch_size if index == 0 else (int(hint) if hint is not None else 1)
            shape.append(int(dim))
        if value.dtype.is_floating_point:
            leaves.append(torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(value.dtype))
        else:
            leaves.append(torch.zeros(shape, dtype=value.dtype))
    try:
        args, kwargs = torch.utils._pytree.tree_unflatten(leaves, program.call_spec.in_spec)
    except Exception:  # noqa: BLE001 - an input signature this cannot rebuild: no inputs from it
        return None
    return tuple(args) if not kwargs else None


def _export(module: nn.Module, inputs: tuple, dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """Export in training mode (dropout/batch-norm behaviour is kept; `export` turns it off)."""
    from amgp_fx.tracing import _batch_dynamic_shapes

    was_training = module.training
    try:
        module.train()
    except NotImplementedError:  # an unwrapped torch.export module
        pass
    try:
        shapes = _batch_dynamic_shapes(module, inputs, {}) if dynamic_batch else None
        return torch.export.export(module, inputs, dynamic_shapes=shapes, strict=False)
    except Exception as error:
        first = " ".join(str(error).split())[:300]
        raise TraceFailure(f"torch.export could not export {type(module).__name__} to save it as .pt2: "
                           f"{type(error).__name__}: {first}", "Save a state dict (.safetensors) instead") from error
    finally:
        try:
            module.train(was_training)
        except NotImplementedError:
            pass


def save_pt2(module: nn.Module, example_inputs: tuple, path: str | os.PathLike,
             metadata: Mapping[str, Any] | None = None, *, dynamic_batch: bool = True) -> None:
    """Export ``module`` (dynamic batch, unless ``dynamic_batch=False``: a model loaded from a
    static-batch archive) and save it atomically as ``.pt2`` with amgp-fx metadata.

    ``example_inputs`` are positional arguments (any pytree of tensors). ``metadata`` (JSON-able:
    the pruning plan, the factory) goes into the archive's ``extra/amgp_fx.json``.
    """
    program = _export(module, tuple(example_inputs), dynamic_batch)

    def write(buffer) -> None:  # in memory: a full disk then raises OSError, never aborts in torch's writer
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No complete tensor found")  # buffers sharing storage
            torch.export.save(program, buffer, extra_files={META_FILE: _meta(metadata)})

    atomic_write_with(path, write)


# -- state dicts ------------------------------------------------------------------------------------------
def save_state_dict(module: nn.Module, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> None:
    """Save ``module.state_dict()`` atomically: ``.safetensors`` (metadata inside) or ``.pt`` (tensors only)."""
    state = {}
    seen: set[int] = set()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.untyped_storage().data_ptr() in seen:  # safetensors refuses shared storage
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        state[name] = tensor
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save as save_safetensors

        atomic_write_bytes(path, save_safetensors(state, metadata={META_FILE: _meta(metadata)}))
    else:
        atomic_write_with(path, lambda buffer: torch.save(state, buffer))


def _load_tensor_file(path: Path, trust_pickle: bool) -> tuple[dict | nn.Module, dict]:
    """A state dict (or, with trust, a pickled module) and the amgp-fx metadata of the file."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = _read_meta((handle.metadata() or {}).get(META_FILE), path)
                return {key: handle.get_tensor(key) for key in handle.keys()}, meta
        except ModelFileError:
            raise
        except Exception as error:  # noqa: BLE001 - SafetensorError and friends: a damaged file
            raise ModelFileError(f"{path} is not a readable safetensors file ({error})",
                                 "The file is truncated or corrupt; save the state dict again") from error
    try:
        loaded = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # noqa: BLE001
        needs_pickle = "weights_only" in str(error) or "Weights only load failed" in str(error)
        if not needs_pickle:
            raise ModelFileError(f"{path} is not a readable torch file: it is truncated, corrupt or not made by "
                                 f"torch.save ({str(error).strip().splitlines()[0]})",
                                 "Save the state dict again") from error
        if not trust_pickle:
            raise ModelFileError(f"{path} holds pickled Python objects (a whole nn.Module?); loading it can "
                                 "execute arbitrary code", "Save model.state_dict() or a .pt2 instead, or pass "
                                 "--trust-pickle if you trust the file's author") from error
        log.warning("loading %s with pickle (--trust-pickle): this can execute arbitrary code", path)
        loaded = torch.load(path, weights_only=False, map_location="cpu")
    if isinstance(loaded, dict) and not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        nested = next((loaded[k] for k in ("state_dict", "model_state_dict", "model") if
                       isinstance(loaded.get(k), dict)), None)
        loaded = nested if nested is not None else loaded
    if isinstance(loaded, nn.Module) or (isinstance(loaded, dict) and all(
            isinstance(v, torch.Tensor) for v in loaded.values())):
        return loaded, {}
    raise ModelFileError(f"{path} holds a {type(loaded).__name__}, not a state dict or a module",
                         "Save model.state_dict() with torch.save or safetensors")


# -- factories ---------------------------------------------------------------------------------------------
def build_from_factory(spec: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Import ``package.module:callable`` or ``path/to/file.py:callable`` and call it with ``kwargs``.

    Raises:
        FactoryError: bad syntax, the module or attribute is missing, the call fails, or it does not
            return an ``nn.Module``.
    """
    fix = "Pass --factory as 'package.module:function' or 'path/to/file.py:function'"
    module_part, _, attribute = str(spec).rpartition(":")
    if not module_part or not attribute:
        raise FactoryError(f"factory {spec!r} has no ':callable' part", fix)
    try:
        if module_part.endswith(".py"):
            file = Path(module_part).resolve()
            if not file.is_file():
                raise FactoryError(f"factory file {module_part} does not exist", fix)
            sys.path.insert(0, str(file.parent))  # so the file can import its neighbours
            name = f"_amgp_fx_factory_{abs(hash(str(file)))}"
            module_spec = importlib.util.spec_from_file_location(name, file)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())  # a console script does not see the working directory
            module = importlib.import_module(module_part)
    except FactoryError:
        raise
    except SystemExit as error:  # a script's sys.exit() at import: not a success of amgp-compress
        raise FactoryError(f"importing {module_part!r} for --factory called sys.exit({error.code!r})",
                           "Put the module's script code under 'if __name__ == \"__main__\":'") from None
    except Exception as error:  # noqa: BLE001 - import-time failures of any kind are the factory's
        raise FactoryError(f"cannot import {module_part!r} for --factory: {type(error).__name__}: {error}",
                           fix + "; check the module is on PYTHONPATH and imports cleanly") from error
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise FactoryError(f"{module_part!r} has no attribute {attribute!r}", fix)
        target = getattr(target, part)
    if not callable(target):
        raise FactoryError(f"factory {spec!r} is a {type(target).__name__}, not a callable", fix)
    try:
        model = target(**dict(kwargs or {}))
    except SystemExit as error:
        raise FactoryError(f"factory {spec} called sys.exit({error.code!r})",
                           "Make it return the model instead of exiting") from None
    except Exception as error:  # noqa: BLE001
        raise FactoryError(f"factory {spec}(**{dict(kwargs or {})}) failed: {type(error).__name__}: {error}",
                           "Check --factory-kwargs against the factory's signature") from error
    if not isinstance(model, nn.Module):
        raise FactoryError(f"factory {spec!r} returned a {type(model).__name__}, not a torch.nn.Module", fix)
    return model


def _check_dtypes(module: nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> None:
    """Refuse a tensor whose dtype differs from the model's: ``load_state_dict`` would cast it
    silently (float64 weights rounded, integer weights made float, float ids truncated)."""
    expected = module.state_dict()
    for name, tensor in state.items():
        want = expected.get(name)
        if isinstance(want, torch.Tensor) and isinstance(tensor, torch.Tensor) and tensor.dtype != want.dtype:
            raise ModelFileError(f"tensor {name!r} in {source} is {str(tensor.dtype).removeprefix('torch.')} but the "
                                 f"factory's model expects {str(want.dtype).removeprefix('torch.')}",
                                 f"Save the state dict with the model's dtypes (e.g. tensor.to(torch."
                                 f"{str(want.dtype).removeprefix('torch.')})), or build the model in that dtype")


def check_finite_weights(module: nn.Module, description: str) -> None:
    """Refuse a model whose parameters hold NaN or infinity (a diverged training): its outputs
    are NaN, so its AUC, pruning importances and ONNX parity would be meaningless.

    Raises:
        TrainingFailure: naming the first such parameter and how many values are not finite.
    """
    for name, parameter in module.named_parameters():
        if parameter.dtype.is_floating_point or parameter.dtype.is_complex:
            bad = int((~torch.isfinite(parameter.detach())).sum())
            if bad:
                raise TrainingFailure(f"the weights of {description} are not finite: {name} holds {bad} NaN or "
                                      "infinite values (a diverged training?)",
                                      "Use the weights of an earlier checkpoint, or retrain with a lower --lr")


def _load_into(module: nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> None:
    _check_dtypes(module, state, source)
    try:
        module.load_state_dict(dict(state), strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:400]
        raise ModelFileError(f"the state dict in {source} does not fit the factory's model: {detail}",
                             "Pass the --factory/--factory-kwargs it was saved from, and --plan for a pruned "
                             "model") from error


# -- one entry point ----------------------------------------------------------------------------------------
def load_model(path: str | os.PathLike | None = None, *, factory: str | None = None,
               factory_kwargs: Mapping[str, Any] | None = None, plan: Mapping | None = None,
               trust_pickle: bool = False, input_shape: str | None = None,
               example_inputs: str | os.PathLike | None = None, batch_size: int = 8) -> LoadedModel:
    """Load a model from a file and/or a factory, find example inputs, and check they run.

    Args:
        path: ``.pt2``, ``.safetensors``, ``.pt``/``.pth``/``.bin``/``.ckpt``; None: the factory's fresh model.
        factory, factory_kwargs: builds the model a state dict is loaded into.
        plan: a pruning plan dict to apply to the factory's model before loading (default: the plan
            stored in the file's metadata, if any).
        trust_pickle: allow pickled modules and pickled archive content (can execute code).
        input_shape: a shape spec (:func:`amgp_fx.model_inputs.parse_input_spec`).
        example_inputs: a saved batch file (:func:`amgp_fx.model_inputs.load_example_batch`).
        batch_size: B of generated inputs (the model's ``example_inputs(B)``, a spec, or a resized batch).
    Returns:
        ``LoadedModel`` whose ``module(*example_inputs)`` has run once.
    Raises:
        UsageError, ModelFileError, FactoryError, InputSpecError; PlanError for a plan that does not fit.
    """
    source = Path(path) if path is not None else None
    if source is None and factory is None:
        raise UsageError("no model given", "Pass a .pt2 file, a state dict with --factory, or --model dlrm")
    if source is not None and not source.is_file():
        raise ModelFileError(f"model file {source} does not exist" if not source.exists()
                             else f"model path {source} is not a file", "Check the path")
    meta: dict = {}
    saved_inputs, state, static_batch = None, None, None
    notes: list[str] = []
    if source is not None and source.suffix == ".pt2":
        if factory is not None or plan is not None:
            raise UsageError(f"{source} is a complete torch.export program", "Drop --factory and --plan")
        module, saved_inputs, meta, program = _load_pt2(source, trust_pickle)
        static_batch = static_batch_of(program, saved_inputs)
        if saved_inputs is None:
            saved_inputs = _inputs_from_program(program, static_batch or batch_size)
        description = f"{source} (torch.export program)"
    elif source is not None and source.suffix not in (".safetensors", *STATE_DICT_SUFFIXES):
        raise ModelFileError(f"{source}: unsupported model file type {source.suffix or '(none)'!r}",
                             "Use .pt2 (torch.export), .safetensors or .pt (state dict) with --factory")
    else:
        loaded, meta = _load_tensor_file(source, trust_pickle) if source is not None else (None, {})
        if isinstance(loaded, nn.Module):
            module, description = loaded, f"{source} (pickled module)"
        elif loaded is not None and factory is None:
            hint = f" (saved from {meta['factory']} {json.dumps(meta.get('factory_kwargs', {}))})" \
                if meta.get("factory") else ""
            raise UsageError(f"{source} is a state dict{hint}: it needs the code that builds the model",
                             "Pass --factory package.module:function (and --factory-kwargs JSON), or --model NAME")
        else:
            state = loaded
            module = build_from_factory(factory, factory_kwargs)
            description = f"{factory}({json.dumps(dict(factory_kwargs or {}))})" + (f" + {source}" if source else "")
    inputs = _example_inputs(module, saved_inputs, input_shape, example_inputs, batch_size, static_batch, notes,
                             description)
    plan = plan if plan is not None else meta.get("plan")
    if plan is not None and not isinstance(module, torch.fx.GraphModule):
        from amgp_fx.groups.analyze import analyze
        from amgp_fx.pruning_plan import PruningPlan, apply_plan

        check_inputs(module, inputs, description)
        graph = analyze(module, inputs)
        apply_plan(graph, plan if isinstance(plan, PruningPlan) else PruningPlan.from_dict(plan))
        module, description = graph.module, description + " + pruning plan"
        meta = {**meta, "plan": plan if isinstance(plan, dict) else plan.to_dict()}
    if state is not None:
        _load_into(module, state, source)
    check_finite_weights(module, str(source) if source is not None else description)
    check_inputs(module, inputs, description)
    if factory is not None:
        meta = {**meta, "factory": factory, "factory_kwargs": dict(factory_kwargs or {})}
    return LoadedModel(module, inputs, description, meta, static_batch, notes)


def _example_inputs(module, saved_inputs, input_shape, example_file, batch_size, static_batch=None, notes=None,
                    description="the model") -> tuple:
    notes = notes if notes is not None else []
    if static_batch is not None:
        notes.append(f"{description.split(' ')[0]} was exported with a static batch of {static_batch}: it runs at "
                     f"batch {static_batch} only, so every step uses that batch (re-save it with a dynamic batch "
                     "to use others; docs/cli.md#your-own-model)")
    if example_file is not None:
        inputs = _dict_or_positional(module, load_example_batch(example_file))
    elif input_shape is not None:
        inputs = make_inputs(parse_input_spec(input_shape), static_batch or batch_size)
    elif callable(getattr(module, "example_inputs", None)):
        try:
            inputs = module.example_inputs(batch_size)
        except Exception as error:  # noqa: BLE001
            raise InputSpecError(f"{type(module).__name__}.example_inputs({batch_size}) failed: {error}",
                                 "Pass --input-shape or --example-inputs instead") from error
        inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    elif saved_inputs is not None:
        inputs = saved_inputs if static_batch is not None else resize_batch(saved_inputs, batch_size)
    else:
        inferred = infer_inputs(module, batch_size)
        if isinstance(inferred, str):
            raise InputSpecError(f"cannot tell which inputs {type(module).__name__} takes: {inferred}",
                                 _input_fix(module))
        inputs, spec = inferred
        notes.append(f"inputs inferred from the model: --input-shape '{spec}' (pass --input-shape or "
                     "--example-inputs to override)")
    if static_batch is not None and batch_size_of(inputs) not in (None, static_batch):
        inputs = resize_batch(inputs, static_batch)
    return inputs


def _dict_or_positional(module: nn.Module, inputs: tuple) -> tuple:
    """A saved dict of tensors is the model's one dict argument, or (older files, positional models)
    its positional tensors in order: whichever the model runs on."""
    if len(inputs) != 1 or not isinstance(inputs[0], dict) or \
            not all(isinstance(v, torch.Tensor) for v in inputs[0].values()):
        return inputs
    try:
        with torch.no_grad():
            module(*inputs)
        return inputs
    except Exception:  # noqa: BLE001 - not a dict model: try the values as positional inputs
        positional = tuple(inputs[0].values())
        try:
            with torch.no_grad():
                module(*positional)
        except Exception:  # noqa: BLE001 - neither: check_inputs reports the dict form
            return inputs
        return positional


def _positional_parameters(module: nn.Module) -> list[str] | None:
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return None
    return [p.name for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                       inspect.Parameter.POSITIONAL_OR_KEYWORD)
            and p.default is inspect.Parameter.empty]


def _model_widths(module: nn.Module) -> tuple[int | None, list[int]]:
    """(in_features of the first nn.Linear, rows of each embedding table) of an eager model."""
    first = next((m for m in module.modules() if isinstance(m, nn.Linear)), None)
    tables = [int(m.num_embeddings) for m in module.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
    return (int(first.in_features) if first is not None else None), tables


def infer_inputs(module: nn.Module, batch_size: int) -> tuple[tuple, str] | str:
    """Example inputs read off an eager ``forward(dense, sparse)`` model: dense float32 (B, D) with D
    the first ``nn.Linear``'s in_features, sparse int64 (B, F) with one column per embedding table
    and ids below the smallest table; checked by running the model. Returns ``(inputs, spec)``, or
    the reason it cannot (a string)."""
    if isinstance(module, torch.fx.GraphModule):
        return "it is a graph module without saved example inputs"
    names = _positional_parameters(module)
    dense, tables = _model_widths(module)
    signature = f"forward({', '.join(names)})" if names is not None else "its forward"
    if names is None or len(names) != 2:
        return (f"{signature} does not take two positional inputs (dense, sparse), so they cannot be read off "
                "its layers")
    if dense is None or not tables:
        return f"{signature} has no nn.Linear and nn.Embedding layers to read the input widths from"
    spec = f"float32[B,{dense}];int64[B,{len(tables)}]:0..{min(tables)}"
    inputs = make_inputs(parse_input_spec(spec), batch_size)
    try:
        with torch.no_grad():
            module(*inputs)
    except Exception as error:  # noqa: BLE001 - the guess does not fit
        return (f"the guess {spec} (first Linear's width, one id column per embedding table) fails: "
                f"{type(error).__name__}: {' '.join(str(error).split())[:150]}")
    return inputs, spec


def _input_fix(module: nn.Module) -> str:
    """The exact flag to add, with the widths that can be read off the model filled in."""
    names = _positional_parameters(module) or ["x"]
    dense, tables = _model_widths(module)
    dense_dims = f"B,{dense}" if dense else "B,13"
    ids = f"int64[B]:0..{min(tables)}" if tables else "int64[B]:0..1000"
    if len(names) == 1:
        example = f"dense=float32[{dense_dims}];user={ids};item={ids}"
        return (f"Pass --input-shape naming each key {names[0]!r} holds, e.g. '{example}' (PATH=dtype[dims]; "
                f"docs/cli.md#your-own-model), or --example-inputs batch.pt holding one example {names[0]!r}")
    return ("Pass --input-shape 'float32[B,13];int64[B,26]:0..1000' (one entry per input of "
            f"forward({', '.join(names)})) or --example-inputs batch.pt")

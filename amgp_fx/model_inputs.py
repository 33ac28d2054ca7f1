"""Example inputs for a saved model: a shape spec, a small saved batch, or a resized known batch.

A shape spec lists the positional inputs, separated by ``;``: a dtype, the shape in brackets with
``B`` for the batch dim, and optionally ``:LOW..HIGH``, the value range (integers: ids drawn from
``[LOW, HIGH)``, so ``HIGH`` is at most the smallest table size; floats: uniform in ``[LOW, HIGH]``;
floats without a range are standard normal, integers without one are 0, a valid id for any table).

A model that takes a dict or nested inputs names each input by its path, ``PATH=dtype[dims]``
(paths as in :mod:`amgp_fx.batch_inputs`: dict keys and indices joined by ``.``, a leading
argument index for several positional arguments): ``dense=float32[B,13];user=int64[B]:0..100``
is one dict argument ``{"dense": ..., "user": ...}``.

Dim letters: B batch, F sparse fields.

Example:
    >>> specs = parse_input_spec("float32[B,13]; int64[B,26]:0..100")
    >>> format_input_spec(specs)
    'float32[B,13];int64[B,26]:0..100'
    >>> dense, sparse = make_inputs(specs, batch_size=4)
    >>> tuple(dense.shape), sparse.dtype, int(sparse.max()) < 100
    ((4, 13), torch.int64, True)
    >>> (features,) = make_inputs(parse_input_spec("dense=float32[B,3]; ids.user=int64[B]:0..9"), 2)
    >>> sorted(features), tuple(features["ids"]["user"].shape)
    (['dense', 'ids'], (2,))
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch.utils import _pytree as pytree

from amgp_fx.errors import InputSpecError

__all__ = ["DTYPES", "TensorSpec", "arrange_by_paths", "batch_size_of", "check_inputs", "format_input_spec",
           "load_example_batch", "make_inputs", "parse_input_spec", "resize_batch", "spec_of", "tensor_leaves"]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float": torch.float32, "float64": torch.float64, "double": torch.float64,
    "float16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "long": torch.int64, "int32": torch.int32, "int": torch.int32, "int16": torch.int16,
    "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}
_CANONICAL = {dtype: name for name, dtype in reversed(list(DTYPES.items()))}
_SPEC = re.compile(r"^(?:(?P<path>[^=\[\]]+)=)?(?P<dtype>[a-z0-9]+)\[(?P<dims>[^\]]*)\](?::(?P<low>.*?)\.\.(?P<high>.*))?$")
_EXAMPLE = "float32[B,13];int64[B,26]:0..1000"
MAX_ELEMENTS = 2**31


@dataclass(frozen=True)
class TensorSpec:
    """One input: canonical dtype name, dims (ints, or ``"B"`` for the batch), value range, and its
    path in the model's inputs (None: the next positional input)."""

    dtype: str
    shape: tuple[int | str, ...]
    low: float | None = None
    high: float | None = None
    path: str | None = None

    def format(self) -> str:
        dims = ",".join(str(d) for d in self.shape)
        text = f"{self.path}={self.dtype}[{dims}]" if self.path else f"{self.dtype}[{dims}]"
        if self.low is not None:
            text += f":{_number(self.low)}..{_number(self.high)}"
        return text

    @property
    def is_integer(self) -> bool:
        dtype = DTYPES[self.dtype]
        return not dtype.is_floating_point and dtype is not torch.bool


def _number(value: float | None) -> str:
    return str(int(value)) if value is not None and float(value).is_integer() else repr(value)


def _fail(text: str, problem: str) -> InputSpecError:
    return InputSpecError(f"bad --input-shape {text!r}: {problem}",
                          f"Write one 'dtype[dims]' or 'dtype[dims]:low..high' per input, separated by ';', "
                          f"with B for the batch, e.g. '{_EXAMPLE}'")


def _parse_number(text: str, value: str, integer: bool) -> float:
    try:
        number = float(value)
    except ValueError:
        raise _fail(text, f"range bound {value!r} is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise _fail(text, f"range bound {value!r} is not finite")
    if integer and not number.is_integer():
        raise _fail(text, f"integer inputs need whole-number bounds, got {value!r}")
    return number


def parse_input_spec(text: str) -> tuple[TensorSpec, ...]:
    """Parse ``"float32[B,13];int64[B,26]:0..100"`` into one :class:`TensorSpec` per input.

    Raises:
        InputSpecError: empty spec, unknown dtype, a dim that is neither a positive int nor ``B``,
            no batch dim first, a range with low >= high, or a range on a bool input.
    """
    if not isinstance(text, str) or not text.strip():
        raise _fail(str(text), "it is empty")
    specs = []
    for part in text.split(";"):
        part = re.sub(r"\s+", "", part)
        match = _SPEC.match(part)
        if match is None:
            raise _fail(text, f"cannot read {part!r}")
        dtype_name = match["dtype"]
        if dtype_name not in DTYPES:
            raise _fail(text, f"unknown dtype {dtype_name!r} (known: {', '.join(sorted(set(_CANONICAL.values())))})")
        dtype = _CANONICAL[DTYPES[dtype_name]]
        dims: list[int | str] = []
        for dim in match["dims"].split(","):
            if dim in ("B", "b"):
                dims.append("B")
            elif dim.isascii() and dim.isdigit() and int(dim) > 0:
                dims.append(int(dim))
            else:
                raise _fail(text, f"dim {dim!r} of {part!r} is not a positive integer or B")
        if not dims or dims[0] != "B" or "B" in dims[1:]:
            raise _fail(text, f"{part!r} must have the batch B as its first dim, and only there")
        path = match["path"]
        spec = TensorSpec(dtype, tuple(dims), path=path)
        if match["low"] is not None:
            if dtype == "bool":
                raise _fail(text, "bool inputs take no range")
            low = _parse_number(text, match["low"], spec.is_integer)
            high = _parse_number(text, match["high"], spec.is_integer)
            if not low < high:
                raise _fail(text, f"range {match['low']}..{match['high']} is empty (low must be < high)")
            spec = TensorSpec(dtype, tuple(dims), low, high, path)
        specs.append(spec)
    named = [spec.path is not None for spec in specs]
    if any(named) and not all(named):
        raise _fail(text, "name every input (PATH=dtype[dims]) or none")
    if any(named) and len({spec.path for spec in specs}) != len(specs):
        raise _fail(text, "an input path appears twice")
    return tuple(specs)


def format_input_spec(specs: Sequence[TensorSpec]) -> str:
    """The canonical text of ``specs``; ``parse_input_spec(format_input_spec(s)) == s``."""
    return ";".join(spec.format() for spec in specs)


def make_inputs(specs: Sequence[TensorSpec], batch_size: int, seed: int = 0) -> tuple:
    """Deterministic tensors matching ``specs`` with B = ``batch_size``; shapes ``spec.shape`` with B
    filled in: positional tensors, or, for specs with paths, the arguments they name
    (:func:`arrange_by_paths`).

    Raises:
        InputSpecError: a tensor would exceed 2**31 elements.
    """
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in specs:
        shape = tuple(batch_size if d == "B" else int(d) for d in spec.shape)
        if torch.Size(shape).numel() > MAX_ELEMENTS:
            raise InputSpecError(f"input {spec.format()} at batch {batch_size} has over 2**31 elements",
                                 "Use a smaller --batch-size or smaller dims")
        dtype = DTYPES[spec.dtype]
        if dtype is torch.bool:
            tensors.append(torch.zeros(shape, dtype=torch.bool))
        elif spec.is_integer:
            low, high = (int(spec.low), int(spec.high)) if spec.low is not None else (0, 1)
            tensors.append(torch.randint(low, high, shape, generator=generator, dtype=torch.int64).to(dtype))
        elif spec.low is not None:
            values = torch.rand(shape, generator=generator, dtype=torch.float64) * (spec.high - spec.low) + spec.low
            tensors.append(values.to(dtype))
        else:
            tensors.append(torch.randn(shape, generator=generator, dtype=torch.float32).to(dtype))
    if specs and specs[0].path is not None:
        return arrange_by_paths([(spec.path, tensor) for spec, tensor in zip(specs, tensors)])
    return tuple(tensors)


def arrange_by_paths(pairs: Sequence[tuple[str, torch.Tensor]]) -> tuple:
    """Positional arguments from ``(path, tensor)`` pairs: paths whose first parts are all argument
    indices (0, 1, ...) are positional; otherwise they are keys of one dict argument. Deeper parts
    nest dicts, or tuples where the keys are 0..n-1.

    Example:
        >>> args = arrange_by_paths([("dense", torch.zeros(1)), ("ids.0", torch.ones(1)), ("ids.1", torch.ones(1))])
        >>> list(args[0]), len(args[0]["ids"])
        (['dense', 'ids'], 2)
    """
    tree: dict = {}
    for path, tensor in pairs:
        node = tree
        parts = str(path).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputSpecError(f"input path {path!r} goes inside another input", "Give each input its own path")
        if parts[-1] in node:
            raise InputSpecError(f"input path {path!r} appears twice", "Give each input its own path")
        node[parts[-1]] = tensor

    def build(node):
        if not isinstance(node, dict):
            return node
        values = {key: build(value) for key, value in node.items()}
        if sorted(values) == [str(i) for i in range(len(values))]:
            return tuple(values[str(i)] for i in range(len(values)))
        return values

    top = build(tree)
    return top if isinstance(top, tuple) else (top,)


def tensor_leaves(inputs) -> list[torch.Tensor]:
    """The tensors of a pytree of inputs, in pytree order."""
    return [leaf for leaf in pytree.tree_leaves(inputs) if isinstance(leaf, torch.Tensor)]


def batch_size_of(inputs) -> int | None:
    """Dim 0 shared by every tensor of ``inputs`` (the batch), or None when they disagree."""
    sizes = {int(t.shape[0]) if t.dim() else None for t in tensor_leaves(inputs)}
    return sizes.pop() if len(sizes) == 1 else None


def _id_range(tensor: torch.Tensor) -> tuple[float, float]:
    """``low..high`` for an integer input: from the smallest id seen to the smallest column's largest
    id + 1 (a column: a position after the batch dim), so that ids drawn from it fit every column's
    table, and a concatenated table's offsets too."""
    columns = tensor.reshape(tensor.shape[0], -1) if tensor.dim() >= 2 and tensor.shape[0] else tensor.reshape(-1, 1)
    return float(tensor.min()), float(columns.amax(dim=0).min()) + 1


def spec_of(inputs) -> tuple[TensorSpec, ...]:
    """Specs describing ``inputs`` (dim 0 as B; integer ranges of the values seen, valid in every
    column, ``_id_range``); with paths unless ``inputs`` are plain positional tensors. ``make_inputs``
    of the result gives inputs the model takes: the text ``analyze`` prints can be pasted into
    ``--input-shape``."""
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    plain = all(isinstance(x, torch.Tensor) for x in inputs)
    if plain:
        pairs = [(None, tensor) for tensor in inputs]
    else:
        from amgp_fx.batch_inputs import input_paths

        pairs = [(path, leaf) for path, leaf in zip(input_paths(inputs), pytree.tree_leaves(inputs))
                 if isinstance(leaf, torch.Tensor)]
    specs = []
    for path, tensor in pairs:
        dtype = _CANONICAL.get(tensor.dtype, str(tensor.dtype).replace("torch.", ""))
        dims = ("B", *tensor.shape[1:]) if tensor.dim() else ()
        spec = TensorSpec(dtype, tuple(dims), path=path)
        if spec.dtype in DTYPES and spec.is_integer and tensor.numel():
            spec = TensorSpec(dtype, tuple(dims), *_id_range(tensor), path)
        specs.append(spec)
    return tuple(specs)


def resize_batch(inputs, batch_size: int) -> tuple:
    """Rows ``i % B`` of every input (any pytree), so valid ids stay valid: (B, ...) -> (batch_size, ...).
    Inputs whose tensors do not share dim 0 (jagged ids) are returned as they are."""
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    rows = batch_size_of(inputs)
    if not rows:
        return inputs
    index = torch.arange(batch_size) % rows
    return tuple(pytree.tree_map(lambda t: t[index.to(t.device)] if isinstance(t, torch.Tensor) else t, inputs))


def _natural(name: str) -> list:
    return [int(part) if part.isascii() and part.isdigit() else part for part in re.split(r"(\d+)", name)]


def load_example_batch(path: str | Path) -> tuple:
    """A small saved batch as the model's positional arguments: a ``.pt`` file (loaded with
    ``weights_only=True``) holding a tensor or a dict (the one argument; a dict of tensors is read
    as positional tensors in order when the model takes those instead, see
    :func:`amgp_fx.model_io.load_model`), or a tuple/list of arguments (each any nest of
    tensors, dicts, tuples and lists); or a ``.safetensors`` file whose tensor names are the
    inputs' paths (``dense``, ``ids.user``; ``input_0``, ``input_1``, ... or ``0``, ``1``, ...:
    positional tensors, in the natural order of the names).

    Raises:
        InputSpecError: the file is missing, not loadable without pickle, or holds no tensors.
    """
    path = Path(path)
    fix = "Save the batch with torch.save((dense, sparse), 'batch.pt'), torch.save({'dense': ..., ...}, 'batch.pt') " \
          "or safetensors.torch.save_file"
    if not path.is_file():
        raise InputSpecError(f"example-inputs file {path} does not exist", fix)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load as load_safetensors

            loaded = load_safetensors(path.read_bytes())  # safetensors does not keep the order: sort names
            loaded = {key: loaded[key] for key in sorted(loaded, key=_natural)}
        else:
            loaded = torch.load(io.BytesIO(path.read_bytes()), weights_only=True, map_location="cpu")
    except Exception as error:  # noqa: BLE001 - any loader failure means an unusable file
        raise InputSpecError(f"cannot read example inputs from {path}: {type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''}", fix) from error
    if path.suffix == ".safetensors" and loaded:
        if all(re.fullmatch(r"(input_)?\d+", key) for key in loaded):
            return tuple(loaded.values())
        return arrange_by_paths(list(loaded.items()))
    if isinstance(loaded, (torch.Tensor, dict)):
        loaded = (loaded,)
    leaves = pytree.tree_leaves(loaded) if isinstance(loaded, (tuple, list)) else []
    if not leaves or not all(isinstance(t, torch.Tensor) for t in leaves):
        kinds = sorted({type(leaf).__name__ for leaf in leaves if not isinstance(leaf, torch.Tensor)})
        raise InputSpecError(f"{path} holds {', '.join(kinds) or type(loaded).__name__}, not tensors", fix)
    return tuple(loaded)


def check_inputs(module: torch.nn.Module, inputs: tuple, description: str = "the model") -> None:
    """Run ``module`` once on ``inputs``; raise InputSpecError naming the shapes when it fails."""
    try:
        with torch.no_grad():
            module(*inputs)
    except Exception as error:  # noqa: BLE001 - any failure here is the inputs'
        first = " ".join(str(error).split())[:300]
        raise InputSpecError(f"{description} fails on example inputs {format_input_spec(spec_of(inputs))}: "
                             f"{type(error).__name__}: {first}",
                             "Pass inputs of the shapes and dtypes it expects with --input-shape or "
                             "--example-inputs") from error

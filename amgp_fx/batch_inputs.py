"""How a batch of rows becomes a model's inputs: the input map.

A model may take any pytree of tensors that ``torch.export`` takes: positional tensors, a dict,
nested tuples and lists, registered pytree nodes (a ``KeyedJaggedTensor``-like class). A batch
(:class:`amgp_fx.data.batch.Batch`) has three fields: ``dense`` (B, D) float32, ``sparse`` (B, F)
int64 ids and ``label``. An *input map* says which columns of which field each leaf of the
model's inputs gets; it is written ``PATH=SOURCE`` per leaf, separated by ``;``::

    features.dense=dense; features.ids.user=sparse[0]; features.ids.item=sparse[1]; features.tags=sparse[2:5]

PATH names a leaf of the model's positional arguments: the argument's index (0, 1, ...), then dict
keys, sequence indices or attribute names (of a registered pytree node), joined by ``.``; a model
with one positional argument may leave out the leading ``0.``. ``amgp-compress`` prints the paths
of a model's inputs when a map does not fit.

SOURCE is ``dense``, ``sparse`` or ``label`` with optional columns: ``[i]`` (one column, no column
dim: (B,)), ``[i:j]`` (columns i to j-1), ``[i,j,k]`` (a list); without columns, the leaf takes as
many columns from 0 as it has values per row. A jagged leaf (the ids of all rows, table by table, as
a KeyedJaggedTensor keeps them) takes ``values(sparse[i:j])``, ``lengths(sparse[i:j])`` (all ones)
or ``offsets(sparse[i:j])`` (0, 1, ..., k*B). Columns are reshaped to the leaf's shape (B, ...) and
cast to its dtype.

Without a map (the default), the leaves in order (``torch.utils._pytree`` order: dicts in
insertion order) take the columns in order: each floating-point leaf the next dense columns, each
integer leaf the next sparse columns, as many as it has values per row. So ``(dense (B, 13), sparse
(B, 26))`` gets ``(batch.dense, batch.sparse)``, and ``{"dense": (B, 13), "ids": (B, 5)}`` gets
``{"dense": batch.dense, "ids": batch.sparse}``.

Dim letters: B batch, D dense columns, F sparse columns, K columns of one leaf.

Example:
    >>> import torch
    >>> from amgp_fx.data.batch import Batch
    >>> example = ({"dense": torch.zeros(4, 3), "user": torch.zeros(4, dtype=torch.long)},)
    >>> inputs = bind_inputs(example, "dense=dense; user=sparse[1]")
    >>> inputs.describe()
    'dense=dense[0:3]; user=sparse[1]'
    >>> args = inputs(Batch(torch.ones(2, 3), torch.tensor([[5, 6], [7, 8]]), torch.zeros(2)))
    >>> args[0]["user"].tolist(), inputs.num_dense, inputs.num_sparse
    ([6, 8], 3, 2)
    >>> bind_inputs((torch.zeros(4, 13), torch.zeros(4, 26, dtype=torch.long))).describe()
    '0=dense[0:13]; 1=sparse[0:26]'
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch.utils import _pytree as pytree

__all__ = ["BatchInputs", "FlatInputs", "InputMapError", "Source", "batch_inputs_for", "bind_inputs", "input_paths",
           "parse_input_map", "parse_source"]

FIELDS = ("dense", "sparse", "label")
JAGGED = ("values", "lengths", "offsets")
EXAMPLE_MAP = "features.dense=dense; features.user=sparse[0]; features.item=sparse[1]"
_SELECT = re.compile(r"^(?P<field>[A-Za-z_]+)(?:\[(?P<cols>[^\]]*)\])?$")
_JAGGED = re.compile(r"^(?P<kind>[a-z]+)\((?P<inner>.*)\)$")


class InputMapError(ValueError):
    """An input map that cannot be read, or does not fit the model's inputs or the data."""


@dataclass(frozen=True)
class Source:
    """Where one input leaf comes from: ``field`` columns (None: from 0, as many as the leaf needs),
    ``single`` for ``[i]`` (no column dim), ``jagged`` for values/lengths/offsets of a jagged leaf."""

    field: str
    columns: tuple[int, ...] | None = None
    single: bool = False
    jagged: str | None = None

    def format(self) -> str:
        text = self.field
        if self.columns is not None:
            cols = self.columns
            if self.single:
                text += f"[{cols[0]}]"
            elif len(cols) > 1 and cols == tuple(range(cols[0], cols[-1] + 1)):
                text += f"[{cols[0]}:{cols[-1] + 1}]"
            else:
                text += "[" + ",".join(map(str, cols)) + "]"
        return f"{self.jagged}({text})" if self.jagged else text


def _map_error(text: str, problem: str) -> InputMapError:
    return InputMapError(f"bad input map {text!r}: {problem}. Write PATH=SOURCE per model input, separated by "
                         f"';', e.g. '{EXAMPLE_MAP}' (docs/cli.md#your-own-model)")


def _index(text: str, whole: str) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        raise _map_error(whole, f"column {text!r} is not a non-negative integer")
    return int(text)


def parse_source(text: str, whole: str | None = None) -> Source:
    """``"sparse[2:5]"`` -> ``Source("sparse", (2, 3, 4))``; see the module docstring for the forms.

    Raises:
        InputMapError: an unknown field or function, or columns that are not integers or a range.
    """
    whole = text if whole is None else whole
    body = re.sub(r"\s+", "", str(text))
    jagged = None
    match = _JAGGED.match(body)
    if match:
        jagged, body = match["kind"], match["inner"]
        if jagged not in JAGGED:
            raise _map_error(whole, f"unknown function {jagged!r} (known: {', '.join(JAGGED)})")
    match = _SELECT.match(body)
    if not match or match["field"] not in FIELDS:
        raise _map_error(whole, f"source {text!r} is not one of {', '.join(FIELDS)}, with optional [columns]")
    cols, single = match["cols"], False
    columns: tuple[int, ...] | None = None
    if cols is not None:
        if ":" in cols:
            low, _, high = cols.partition(":")
            low_i, high_i = _index(low or "0", whole), _index(high, whole)
            if high_i <= low_i:
                raise _map_error(whole, f"column range [{cols}] is empty")
            columns = tuple(range(low_i, high_i))
        elif "," in cols:
            columns = tuple(_index(part, whole) for part in cols.split(","))
        else:
            columns, single = (_index(cols, whole),), True
    if jagged and match["field"] != "sparse":
        raise _map_error(whole, f"{jagged}() takes sparse columns, not {match['field']}")
    return Source(match["field"], columns, single, jagged)


def parse_input_map(spec: str | Mapping[str, str | Source] | None) -> dict[str, Source] | None:
    """An input map from its text (``PATH=SOURCE; ...``), a JSON object of the same pairs, or a
    mapping; None stays None (the default mapping).

    Raises:
        InputMapError: a pair without ``=``, an empty or repeated path, or a bad source.
    """
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        pairs = list(spec.items())
        whole = json.dumps({k: v.format() if isinstance(v, Source) else v for k, v in spec.items()})
    else:
        whole = str(spec)
        text = whole.strip()
        if text.startswith("{"):
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError as error:
                raise _map_error(whole, f"it is not valid JSON ({error.msg})") from None
            if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
                raise _map_error(whole, "a JSON input map is an object of \"path\": \"source\" strings")
            pairs = list(loaded.items())
        else:
            pairs = []
            for part in re.split(r"[;\n]", text):
                if not part.strip():
                    continue
                path, sep, source = part.partition("=")
                if not sep:
                    raise _map_error(whole, f"{part.strip()!r} has no '='")
                pairs.append((path, source))
    result: dict[str, Source] = {}
    for path, source in pairs:
        path = re.sub(r"\s+", "", str(path))
        if not path:
            raise _map_error(whole, "a path is empty")
        if path in result:
            raise _map_error(whole, f"path {path!r} is mapped twice")
        result[path] = source if isinstance(source, Source) else parse_source(source, whole)
    if not result:
        raise _map_error(whole, "it maps nothing")
    return result


# -- paths of a model's inputs ------------------------------------------------------------------------------
def _key_text(key: Any) -> str:
    for attribute in ("idx", "key", "name"):  # SequenceKey, MappingKey, GetAttrKey
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def input_paths(args: tuple) -> list[str]:
    """The path of every leaf of ``args`` (positional arguments), in pytree order; with one
    argument, without the leading ``0.``."""
    leaves, _ = pytree.tree_flatten_with_path(tuple(args))
    paths = [".".join(_key_text(k) for k in path) for path, _ in leaves]
    if len(args) == 1:
        paths = [p.partition(".")[2] if "." in p else p for p in paths]
    return paths


def _describe_leaf(leaf: Any) -> str:
    if isinstance(leaf, torch.Tensor):
        return f"{str(leaf.dtype).replace('torch.', '')}{list(leaf.shape)}"
    return type(leaf).__name__


def _per_row(leaf: torch.Tensor) -> int:
    return int(torch.Size(leaf.shape[1:]).numel()) if leaf.dim() >= 1 else 1


@dataclass
class BatchInputs:
    """An input map bound to a model's example inputs: ``inputs(batch)`` is the model's positional
    arguments for ``batch`` (``model(*inputs(batch))``), same structure, dtypes and per-row shapes.

    Attributes:
        paths: path of every leaf (see :func:`input_paths`); sources: the source of each.
        num_dense, num_sparse: dense and sparse columns the data needs (highest column used + 1).
    """

    paths: list[str]
    sources: list[Source | None]  # None: a non-tensor leaf, passed through as in the example
    spec: Any  # the pytree TreeSpec of the positional arguments
    leaves: list[Any]  # the example leaves (dtype, per-row shape)

    @property
    def num_dense(self) -> int:
        return 1 + max((c for s in self.sources if s is not None and s.field == "dense" for c in s.columns), default=-1)

    @property
    def num_sparse(self) -> int:
        return 1 + max((c for s in self.sources if s is not None and s.field == "sparse" for c in s.columns),
                       default=-1)

    @property
    def sparse_sources(self) -> list[tuple[int, Source]]:
        return [(i, s) for i, s in enumerate(self.sources) if s is not None and s.field == "sparse"]

    def is_default_positional(self) -> bool:
        """True for the classic ``model(dense, sparse)`` taking ``(batch.dense, batch.sparse)``."""
        return self.describe() == f"0=dense[0:{self.num_dense}]; 1=sparse[0:{self.num_sparse}]" \
            and len(self.leaves) == 2 and self.leaves[0].dim() == 2 and self.leaves[1].dim() == 2

    def describe(self) -> str:
        """The map as text (``PATH=SOURCE; ...``), every source with explicit columns."""
        return "; ".join(f"{p}={s.format()}" for p, s in zip(self.paths, self.sources) if s is not None)

    def __call__(self, batch: Any) -> tuple:
        leaves = [leaf if source is None else self._leaf(batch, source, leaf)
                  for source, leaf in zip(self.sources, self.leaves)]
        return tuple(pytree.tree_unflatten(leaves, self.spec))

    def _leaf(self, batch: Any, source: Source, example: torch.Tensor) -> torch.Tensor:
        field = getattr(batch, source.field)
        rows = field.shape[0]
        if source.field == "label" and field.dim() == 1:
            field = field.unsqueeze(1)
        values = field[:, list(source.columns)]
        if source.jagged == "values":
            out = values.t().reshape(-1)
        elif source.jagged == "lengths":
            out = torch.ones(values.numel(), dtype=example.dtype, device=field.device)
        elif source.jagged == "offsets":
            out = torch.arange(values.numel() + 1, device=field.device)
        elif source.single:
            out = values[:, 0]
        else:
            out = values.reshape(rows, *example.shape[1:]) if example.dim() >= 1 else values.reshape(rows)
        return out.to(example.dtype)

    def rows_of(self, args: tuple) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The (dense (B, D), sparse (B, F)) batch that maps onto ``args`` (the inverse of the map;
        columns no leaf takes are 0) and B."""
        leaves = pytree.tree_leaves(tuple(args))
        rows = None
        for leaf, source in zip(leaves, self.sources):
            if source is not None and source.jagged is None and leaf.dim() >= 1:
                rows = int(leaf.shape[0])
                break
        if rows is None:
            jagged = next((leaf, s) for leaf, s in zip(leaves, self.sources) if s is not None and s.jagged == "values")
            rows = jagged[0].numel() // len(jagged[1].columns)
        dense = torch.zeros(rows, self.num_dense)
        sparse = torch.zeros(rows, self.num_sparse, dtype=torch.int64)
        for leaf, source in zip(leaves, self.sources):
            if source is None or source.field == "label" or source.jagged in ("lengths", "offsets"):
                continue
            target = dense if source.field == "dense" else sparse
            cols = list(source.columns)
            if source.jagged == "values":
                target[:, cols] = leaf.reshape(len(cols), rows).t().to(target.dtype)
            else:
                target[:, cols] = leaf.reshape(rows, len(cols)).to(target.dtype)
        return dense, sparse, rows


def _default_sources(leaves: list[Any], paths: list[str]) -> list[Source | None]:
    sources: list[Source | None] = []
    next_col = {"dense": 0, "sparse": 0}
    for leaf, path in zip(leaves, paths):
        if not isinstance(leaf, torch.Tensor):
            sources.append(None)
            continue
        if leaf.dtype is torch.bool or leaf.is_complex():
            raise InputMapError(f"the model's input {path!r} ({_describe_leaf(leaf)}) is neither dense features "
                                "nor ids, so the default mapping cannot feed it. Pass --input-map naming a source "
                                "for every input (docs/cli.md#your-own-model)")
        if leaf.dim() == 0:
            raise InputMapError(f"the model's input {path!r} is a scalar, not a batch of rows. Pass --input-map "
                                "naming a source for every input (docs/cli.md#your-own-model)")
        field = "dense" if leaf.is_floating_point() else "sparse"
        width = _per_row(leaf)
        start = next_col[field]
        next_col[field] += width
        sources.append(Source(field, tuple(range(start, start + width)), single=leaf.dim() == 1))
    return sources


def bind_inputs(example_args: Any, input_map: str | Mapping | dict[str, Source] | None = None) -> BatchInputs:
    """Bind ``input_map`` (text, mapping or None for the default) to the model's example inputs.

    Raises:
        InputMapError: a path that names no input, an input the map leaves out, or columns that do
            not fit the input's shape (the message lists the model's input paths and shapes).
    """
    args = tuple(example_args) if isinstance(example_args, (tuple, list)) else (example_args,)
    flat, spec = pytree.tree_flatten(args)
    paths = input_paths(args)
    listing = ", ".join(f"{p} {_describe_leaf(leaf)}" for p, leaf in zip(paths, flat))
    parsed = parse_input_map(input_map) if not (isinstance(input_map, dict) and all(
        isinstance(v, Source) for v in input_map.values())) else input_map
    if parsed is None:
        sources = _default_sources(flat, paths)
    else:
        wanted = dict(parsed)
        if len(args) == 1:  # the full form 0.key names the same input as key
            wanted = {k[2:] if k.startswith("0.") else k: v for k, v in wanted.items()}
        unknown = [p for p in wanted if p not in paths]
        if unknown:
            raise InputMapError(f"the input map names {', '.join(map(repr, unknown))}, which the model's inputs do "
                                f"not have; its inputs are: {listing}. Map each of these paths to a source")
        tensor_paths = [p for p, leaf in zip(paths, flat) if isinstance(leaf, torch.Tensor)]
        missing = [p for p in tensor_paths if p not in wanted]
        if missing:
            raise InputMapError(f"the input map leaves out the model's input(s) {', '.join(map(repr, missing))}; its "
                                f"inputs are: {listing}. Give every input a source")
        sources = []
        for path, leaf in zip(paths, flat):
            source = wanted.get(path)
            sources.append(None if source is None else _resolve(path, leaf, source))
    return BatchInputs(paths, sources, spec, flat)


def _resolve(path: str, leaf: torch.Tensor, source: Source) -> Source:
    """Give a whole-field source explicit columns, and check the columns fit the leaf's shape."""
    if source.jagged is not None:
        if leaf.dim() != 1:
            raise InputMapError(f"{source.jagged}() makes a 1-d jagged input but {path!r} is "
                                f"{_describe_leaf(leaf)}. Map it with a column source such as sparse[0:3]")
        if source.columns is None:
            raise InputMapError(f"{source.jagged}() of input {path!r} needs the columns, e.g. "
                                f"{source.jagged}(sparse[0:3])")
        return source
    per_row = _per_row(leaf)
    if source.columns is None:
        return Source(source.field, tuple(range(per_row)), single=leaf.dim() == 1)
    if source.single:
        if leaf.dim() != 1 and per_row != 1:
            raise InputMapError(f"input {path!r} is {_describe_leaf(leaf)}, {per_row} values per row, but "
                                f"{source.format()} gives one. Map it to {per_row} columns, e.g. "
                                f"{source.field}[{source.columns[0]}:{source.columns[0] + per_row}]")
        return source
    if len(source.columns) != per_row:
        raise InputMapError(f"input {path!r} is {_describe_leaf(leaf)}, {per_row} values per row, but "
                            f"{source.format()} gives {len(source.columns)}. Map it to {per_row} columns")
    return source


def batch_inputs_for(owner: Any, example_args: Any) -> BatchInputs:
    """``owner``'s bound map (cached as ``owner._batch_inputs``): its ``input_map`` attribute, or the
    default mapping, bound to ``example_args``."""
    bound = getattr(owner, "_batch_inputs", None)
    if bound is None:
        bound = bind_inputs(example_args, getattr(owner, "input_map", None))
        try:
            owner._batch_inputs = bound
        except AttributeError:  # an object without a __dict__: bind again next time
            pass
    return bound


def batch_forward(input_map: str | Mapping | None, example_args: Any | None):
    """A ``forward(model, batch)`` for :func:`amgp_fx.train.train`: ``model(*inputs(batch))``; with
    neither a map nor example inputs, ``model(batch.dense, batch.sparse)``."""
    if example_args is None:
        if input_map is not None:
            raise InputMapError("an input map needs the model's example inputs to bind to. Pass example_inputs")
        return lambda model, batch: model(batch.dense, batch.sparse)
    bound = bind_inputs(example_args, input_map)
    return lambda model, batch: model(*bound(batch))



class FlatInputs(torch.nn.Module):
    """``module`` called with the tensors of its inputs as flat positional arguments (pytree order),
    for runtimes that feed tensors only (ONNX Runtime, timing and FLOP counting loops):
    ``FlatInputs(m, args)(*FlatInputs.leaves(args)) == m(*args)``."""

    def __init__(self, module: torch.nn.Module, example_args: Any) -> None:
        super().__init__()
        self.module = module
        args = tuple(example_args) if isinstance(example_args, (tuple, list)) else (example_args,)
        self._spec = pytree.tree_structure(args)

    @staticmethod
    def leaves(args: Any) -> tuple:
        args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
        return tuple(pytree.tree_leaves(args))

    def forward(self, *leaves):
        return self.module(*pytree.tree_unflatten(list(leaves), self._spec))

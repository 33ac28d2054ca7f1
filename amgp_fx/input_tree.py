"""Model inputs as a pytree (dicts of tensors, a KeyedJaggedTensor, nested tuples) and as flat ONNX inputs.

ONNX graphs take a flat list of named tensors. :func:`flatten_args` turns a model's positional
arguments into that list, each leaf named after the ``forward`` parameter and its path inside it
(``inputs.user_id``, ``sparse_features.values``), and keeps ``torch.utils._pytree``'s path string of
every leaf (``[0]['user_id']``, ``[1]._values``). The export writes the paths into the ONNX file's
metadata (:data:`METADATA_KEY`); the benchmark flattens its own inputs the same way and feeds each
ONNX input the leaf with its path, so a dict built in another key order still lands right.

Example:
    >>> import torch
    >>> flat = flatten_args(({"a": torch.zeros(2), "b": torch.ones(2, 3)},), ["inputs"])
    >>> flat.names, flat.paths
    (('inputs.a', 'inputs.b'), ("[0]['a']", "[0]['b']"))
    >>> unflatten(flat.spec, flat.leaves)[0]["b"].shape
    torch.Size([2, 3])
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.utils._pytree as pytree

__all__ = ["METADATA_KEY", "FlatArgs", "as_args", "feed_order", "flatten_args", "tree_text", "unflatten"]

METADATA_KEY = "amgp_fx.inputs"  # ONNX metadata_props entry: JSON {"names": [...], "paths": [...], "tree": str}


@dataclass(frozen=True)
class FlatArgs:
    """A model's arguments as flat tensors: ``leaves[i]`` is ONNX input ``names[i]`` at pytree ``paths[i]``."""

    leaves: tuple[torch.Tensor, ...]
    names: tuple[str, ...]
    paths: tuple[str, ...]
    spec: Any  # pytree.TreeSpec of the argument tuple

    @property
    def is_flat(self) -> bool:
        """True when the arguments already are a plain tuple of tensors (no wrapping needed)."""
        return all(re.fullmatch(r"\[\d+\]", path) for path in self.paths)


def as_args(value: Any) -> tuple:
    """Positional arguments from what a caller passed: a tuple/list is the arguments, anything else
    (one tensor, one dict, one KeyedJaggedTensor) is the single argument."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _part(key) -> str:
    if isinstance(key, pytree.MappingKey):
        return str(key.key)
    if isinstance(key, pytree.GetAttrKey):
        return key.name.lstrip("_")
    if isinstance(key, pytree.SequenceKey):
        return str(key.idx)
    return re.sub(r"\W+", "", str(key)) or "x"


def flatten_args(args: Sequence[Any], arg_names: Sequence[str] = ()) -> FlatArgs:
    """Flatten positional ``args``; leaf names start with ``arg_names[i]`` (``input_i`` past them).

    Raises:
        TypeError: a leaf is not a tensor (the message names its path).
    """
    args = tuple(args)
    with_paths, spec = pytree.tree_flatten_with_path(args)
    names, paths, leaves = [], [], []
    for keypath, leaf in with_paths:
        path = pytree.keystr(keypath)
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"example input {path} is a {type(leaf).__name__}, not a tensor: every input (inside "
                            "tuples, dicts or registered pytree nodes) must be a tensor")
        index = keypath[0].idx
        head = arg_names[index] if index < len(arg_names) else f"input_{index}"
        names.append(".".join([head, *(_part(k) for k in keypath[1:])]))
        paths.append(path)
        leaves.append(leaf)
    if len(set(names)) != len(names):  # two paths that sanitise alike: fall back to numbered names
        names = [f"{name}_{i}" for i, name in enumerate(names)]
    return FlatArgs(tuple(leaves), tuple(names), tuple(paths), spec)


def unflatten(spec, leaves: Sequence[torch.Tensor]) -> tuple:
    return pytree.tree_unflatten(list(leaves), spec)


def tree_text(spec) -> str:
    """The tree structure as text: pytree's serialised form where every node type allows it."""
    try:
        return pytree.treespec_dumps(spec)
    except Exception:  # noqa: BLE001 - a pytree node registered without a serialised name
        return str(spec)


def metadata_value(flat: FlatArgs) -> str:
    return json.dumps({"names": list(flat.names), "paths": list(flat.paths), "tree": tree_text(flat.spec)})


def feed_order(input_names: Sequence[str], inputs: Any, metadata: Mapping[str, str] | None = None) -> list:
    """The leaves of ``inputs`` (positional arguments, any pytree) in the order of ``input_names``.

    With the export's metadata, each name gets the leaf at its recorded path; without it (files from
    other exporters), leaves go in flattening order.

    Raises:
        ValueError: the inputs lack a recorded path, or their leaf count differs from the names'.
    """
    with_paths, _ = pytree.tree_flatten_with_path(as_args(inputs))
    by_path = {pytree.keystr(keypath): leaf for keypath, leaf in with_paths}
    recorded = json.loads(metadata[METADATA_KEY]) if metadata and METADATA_KEY in metadata else None
    if recorded is not None:
        path_of = dict(zip(recorded["names"], recorded["paths"]))
        missing = [path_of.get(n, n) for n in input_names if path_of.get(n) not in by_path]
        if missing:
            raise ValueError(f"the inputs have no {', '.join(missing)} (the ONNX file was exported with inputs "
                             f"{', '.join(recorded['paths'])}); build inputs with the same structure")
        return [by_path[path_of[n]] for n in input_names]
    leaves = [leaf for _, leaf in with_paths]
    if len(leaves) != len(input_names):
        raise ValueError(f"the ONNX model takes {len(input_names)} inputs ({', '.join(input_names)}), the inputs "
                         f"have {len(leaves)} tensors")
    return leaves

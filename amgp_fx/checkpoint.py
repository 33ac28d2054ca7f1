"""Atomic training checkpoints that load with `torch.load(weights_only=True)`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no custom classes),
so loading one never runs code. It holds what an exact resume needs: model and optimizer state,
the step, the data position, every RNG state (torch CPU/CUDA, numpy, python) and hook states.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .fileio import atomic_write_with

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_path",
    "list_checkpoints",
    "latest_checkpoint",
    "prune_checkpoints",
    "capture_rng_state",
    "restore_rng_state",
    "check_weights_only_safe",
]

CHECKPOINT_FORMAT = 1
_NAME = re.compile(r"checkpoint_(\d+)\.pt")
_SAFE_SCALARS = (bool, int, float, str, type(None), torch.dtype, torch.device)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: truncated, corrupt, of another format, or holding
    pickled objects (which are never unpickled)."""


def check_weights_only_safe(value: Any, where: str = "checkpoint") -> None:
    """Check that `value` holds only what `torch.load(weights_only=True)` accepts.

    Raises:
        TypeError: naming the path of the first offending value, e.g. "checkpoint['hooks'][0]['x']".

    Example:
        >>> check_weights_only_safe({"step": 3, "weights": [torch.zeros(2)]})
        >>> check_weights_only_safe({"bad": {1, 2}})
        Traceback (most recent call last):
        ...
        TypeError: checkpoint['bad'] is a set, which torch.load(weights_only=True) refuses; store tensors, numbers, strings, lists or dicts
    """
    if isinstance(value, torch.Tensor) or isinstance(value, _SAFE_SCALARS):
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_weights_only_safe(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where} has a key of type {type(key).__name__}; use str or int keys")
            check_weights_only_safe(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}, which torch.load(weights_only=True) refuses; "
        "store tensors, numbers, strings, lists or dicts"
    )


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Check `state` and write it atomically with `torch.save`.

    Raises:
        TypeError: when `state` holds something `weights_only` loading would refuse.
    """
    check_weights_only_safe(state)
    path = Path(path)
    atomic_write_with(path, lambda buffer: torch.save(state, buffer))  # a full disk raises, never aborts
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`: a checkpoint never runs code, so one holding pickled
    objects is refused rather than unpickled.

    Raises:
        CheckpointError: truncated or corrupt, pickled objects, not a checkpoint, or another format version.
    """
    try:
        state = torch.load(Path(path), map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - UnpicklingError, RuntimeError (zip), EOFError, ...
        text = " ".join(str(error).split())
        if "weights_only" in text or "Weights only load failed" in text:
            raise CheckpointError(f"checkpoint {path} holds pickled Python objects, which are not loaded (loading "
                                  "them could execute arbitrary code); it was not written by amgp-fx") from None
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(error).__name__}: "
                              f"{text.split('. ')[0][:150]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not an amgp-fx training checkpoint (it holds a {type(state).__name__})")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {state.get('format')!r}, this code reads {CHECKPOINT_FORMAT}")
    return state


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    """`directory/checkpoint_{step:09d}.pt`."""
    return Path(directory) / f"checkpoint_{step:09d}.pt"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Checkpoints in `directory`, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(match.group(1)), directory / name) for name in os.listdir(directory) if (match := _NAME.fullmatch(name))]
    return [path for _, path in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step, or None."""
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def prune_checkpoints(directory: str | os.PathLike, keep: int) -> None:
    """Delete all but the `keep` most recent checkpoints."""
    for path in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)


def capture_rng_state() -> dict[str, Any]:
    """Every global RNG state as weights_only-safe values."""
    numpy_name, numpy_keys, numpy_position, numpy_has_gauss, numpy_gauss = np.random.get_state()
    python_version, python_internal, python_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch_cpu": torch.get_rng_state(),
        "numpy": {"name": numpy_name, "keys": torch.from_numpy(numpy_keys.astype(np.int64)),
                  "position": int(numpy_position), "has_gauss": int(numpy_has_gauss),
                  "cached_gaussian": float(numpy_gauss)},
        "python": {"version": python_version, "internal": list(python_internal), "gauss_next": python_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state` (CUDA states only when CUDA is available)."""
    torch.set_rng_state(state["torch_cpu"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state((
        numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
        numpy_state["has_gauss"], numpy_state["cached_gaussian"],
    ))  # fmt: skip
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensor.cpu() for tensor in state["torch_cuda"]])

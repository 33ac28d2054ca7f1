"""Reference recommendation models in plain PyTorch (they never import amgp_fx).

Every model follows the contract in docs/design.md: `Model(num_dense, table_sizes, ...)`,
`forward(dense (B, num_dense) float32, sparse (B, F) int64)` -> logits (B,) or (B, T), and
`example_inputs(batch_size) -> (dense, sparse)`. Each module has `PRESETS` and `build(preset)`.

Example:
    >>> model = build_model("dlrm")
    >>> model(*model.example_inputs(2)).shape
    torch.Size([2])
"""

from __future__ import annotations

import importlib

from torch import nn

MODEL_NAMES: tuple[str, ...] = ("dlrm", "dcn_v2", "deepfm", "wide_deep", "autoint", "mmoe")


def presets(name: str) -> tuple[str, ...]:
    """Preset names of one model, e.g. `presets("dlrm")` includes "mlperf".

    Raises:
        ValueError: for an unknown model name.
    """
    return tuple(_module(name).PRESETS)


def build_model(name: str, preset: str = "small", **overrides) -> nn.Module:
    """Build reference model `name` from its preset, with constructor keyword overrides.

    Args:
        name: one of `MODEL_NAMES`.
        preset: a key of that module's `PRESETS` ("small", "default", ...).
        **overrides: constructor arguments that replace the preset's values.

    Returns:
        The model in train mode, on the default device.

    Raises:
        ValueError: for an unknown model or preset name.
    """
    return _module(name).build(preset, **overrides)


def _module(name: str):
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose from {list(MODEL_NAMES)}")
    return importlib.import_module(f"{__name__}.{name}")


__all__ = ["MODEL_NAMES", "build_model", "presets"]

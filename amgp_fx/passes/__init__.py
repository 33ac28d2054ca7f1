"""Graph rewrites applied to an ``fx.GraphModule`` before ONNX export, and the table that holds them.

A pass is one function ``rewrite(graph_module) -> int`` that edits the graph in place and returns how
many sites it rewrote (0: the pass did not apply). :func:`apply_passes` runs each pass on the module,
lints and recompiles the graph, and checks that the outputs on the example inputs did not change
beyond a stated tolerance, so a wrong rewrite fails at export time rather than in production.

Passes live in a :class:`PassRegistry` instance. :func:`default_passes` returns a fresh one that callers
may copy and extend; nothing global is mutated.

Example:
    >>> import torch
    >>> from amgp_fx.passes import ExportPass, default_passes
    >>> registry = default_passes().with_pass(ExportPass("noop", lambda gm: 0, "does nothing"))
    >>> "noop" in registry.names() and "embedding_bag_to_gather" in registry.names()
    True
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import fx

logger = logging.getLogger(__name__)

__all__ = [
    "ExportPass",
    "PassError",
    "PassRegistry",
    "PassResult",
    "apply_passes",
    "attribute_tensor",
    "default_passes",
    "flatten_outputs",
]

#: Outputs may move this much when a pass reorders float sums (gather + reduce vs. a fused bag kernel).
PASS_ATOL = 1e-5
PASS_RTOL = 1e-4


class PassError(RuntimeError):
    """A pass broke the graph (lint failure, crash) or changed its outputs beyond tolerance."""


@dataclasses.dataclass(frozen=True)
class ExportPass:
    """One rewrite: ``function(graph_module) -> number of sites rewritten`` (edits in place)."""

    name: str
    function: Callable[[fx.GraphModule], int]
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"ExportPass needs a non-empty string name, got {self.name!r}")
        if not callable(self.function):
            raise TypeError(f"ExportPass {self.name!r}: function must be callable, got {self.function!r}")


@dataclasses.dataclass(frozen=True)
class PassResult:
    """What one pass did: ``rewrites`` sites changed, outputs moved by at most ``max_abs_diff``."""

    name: str
    rewrites: int
    max_abs_diff: float


class PassRegistry:
    """An ordered table of :class:`ExportPass`; duplicate names raise. Copy before extending."""

    def __init__(self, passes: Iterable[ExportPass] = ()) -> None:
        self._passes: dict[str, ExportPass] = {}
        for export_pass in passes:
            self.register(export_pass)

    def register(self, export_pass: ExportPass) -> ExportPass:
        """Append ``export_pass``; raises ValueError when its name is already registered."""
        if not isinstance(export_pass, ExportPass):
            raise TypeError(f"register() takes an ExportPass, got {type(export_pass).__name__}")
        if export_pass.name in self._passes:
            raise ValueError(
                f"a pass named {export_pass.name!r} is already registered; "
                "use registry.copy() and remove() it first, or pick another name"
            )
        self._passes[export_pass.name] = export_pass
        return export_pass

    def remove(self, name: str) -> None:
        """Drop the pass called ``name``; raises KeyError naming the known passes."""
        if name not in self._passes:
            raise KeyError(f"no pass named {name!r}; known passes: {self.names()}")
        del self._passes[name]

    def copy(self) -> PassRegistry:
        return PassRegistry(self._passes.values())

    def with_pass(self, export_pass: ExportPass) -> PassRegistry:
        """A copy of this registry with ``export_pass`` appended (this one is unchanged)."""
        new = self.copy()
        new.register(export_pass)
        return new

    def names(self) -> tuple[str, ...]:
        return tuple(self._passes)

    def __iter__(self) -> Iterator[ExportPass]:
        return iter(tuple(self._passes.values()))

    def __len__(self) -> int:
        return len(self._passes)

    def __repr__(self) -> str:
        return f"PassRegistry({list(self._passes)})"


def default_passes() -> PassRegistry:
    """A new registry holding the built-in passes, in the order they run."""
    from amgp_fx.passes.embedding_bag import EMBEDDING_BAG_PASS
    from amgp_fx.passes.noop_squeeze import NOOP_SQUEEZE_PASS

    return PassRegistry([EMBEDDING_BAG_PASS, NOOP_SQUEEZE_PASS])


def attribute_tensor(graph_module: fx.GraphModule, node) -> torch.Tensor | None:
    """The tensor a ``get_attr`` node reads (a parameter, buffer or constant), or None for anything else."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    value = graph_module
    for part in str(node.target).split("."):
        value = getattr(value, part, None)
    return value if isinstance(value, torch.Tensor) else None


def flatten_outputs(outputs) -> list[torch.Tensor]:
    """A model's outputs (tensor, tuple/list or dict, nested) as a flat list of tensors, in order."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    flat: list[torch.Tensor] = []
    for item in outputs:
        flat.extend(flatten_outputs(item))
    return flat


def _max_abs_diff(expected: Sequence[torch.Tensor], actual: Sequence[torch.Tensor]) -> float:
    diffs = [(a.detach().double() - e.detach().double()).abs().max().item()
             for e, a in zip(expected, actual) if e.numel()]
    return max(diffs, default=0.0)


def apply_passes(
    graph_module: fx.GraphModule,
    example_inputs: tuple[torch.Tensor, ...],
    passes: PassRegistry | Sequence[ExportPass] | None = None,
    *,
    atol: float = PASS_ATOL,
    rtol: float = PASS_RTOL,
) -> list[PassResult]:
    """Run ``passes`` on ``graph_module`` in place, checking each keeps the outputs.

    Args:
        graph_module: the module to rewrite (callers pass a copy: parameters may be shared, the graph is edited).
        example_inputs: inputs the module accepts, e.g. ``(dense (B, 13), sparse (B, 26))``.
        passes: a registry or sequence of passes; ``None`` means :func:`default_passes`.
        atol, rtol: per-pass output tolerance (``torch.testing.assert_close`` semantics).

    Returns:
        One :class:`PassResult` per pass, in order (``rewrites == 0`` when a pass did not apply).

    Raises:
        PassError: a pass crashed, left a graph that does not lint or run, or changed the outputs.
    """
    passes = default_passes() if passes is None else passes
    with torch.no_grad():
        reference = flatten_outputs(graph_module(*example_inputs))
    results = []
    for export_pass in passes:
        try:
            rewrites = int(export_pass.function(graph_module))
            if rewrites:
                graph_module.graph.eliminate_dead_code()
                graph_module.graph.lint()
                graph_module.recompile()
                with torch.no_grad():
                    actual = flatten_outputs(graph_module(*example_inputs))
        except Exception as error:  # noqa: BLE001 - any failure inside a pass is the pass's fault
            raise PassError(
                f"export pass {export_pass.name!r} failed: {type(error).__name__}: {error}. "
                f"Fix the pass, or drop it: passes=default_passes() with .remove({export_pass.name!r})"
            ) from error
        difference = 0.0
        if rewrites:
            try:
                torch.testing.assert_close(actual, reference, atol=atol, rtol=rtol)
            except AssertionError as error:
                raise PassError(
                    f"export pass {export_pass.name!r} changed the model's outputs "
                    f"(atol={atol}, rtol={rtol}):\n{error}"
                ) from error
            difference = _max_abs_diff(reference, actual)
            logger.info("pass %s rewrote %d site(s), max abs diff %.3g", export_pass.name, rewrites, difference)
        results.append(PassResult(export_pass.name, rewrites, difference))
    return results

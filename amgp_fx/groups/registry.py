"""Rule registry: maps ATen ``OpOverload`` objects to coupling rules.

A rule reads the labels (atoms per index) of a node's tensor inputs, couples them, and returns the
labels of its outputs. Ops without a rule are never guessed: every dimension they touch is frozen.
Rules are keyed by the overload object (``aten.linear.default``), never by a string; a packet
(``aten.add``) is refused so that every overload is named on purpose.

Callers take a copy of the default registry and extend it, then pass it as ``rules=`` to
:func:`amgp_fx.analyze`; nothing global changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Rule:
    """One op's coupling rule and, if its arguments hold sizes, how to rewrite them.

    ``rewrite(node, original_args, sizes)`` returns new positional args after a shrink or grow;
    ``sizes`` answers questions about the current (alive) sizes of labelled dimensions.
    """

    op: torch._ops.OpOverload
    propagate: Callable
    family: str
    rewrite: Callable | None = None


class RuleRegistry:
    """A table of rules; copy it to add your own."""

    def __init__(self, rules: dict | None = None) -> None:
        self._rules: dict[torch._ops.OpOverload, Rule] = dict(rules or {})

    def register(self, *ops, family: str, rewrite: Callable | None = None, replace: bool = False):
        """Decorator: register ``fn`` as the rule of each op overload in ``ops``."""
        for op in ops:
            if not isinstance(op, torch._ops.OpOverload):
                raise TypeError(
                    f"rules are keyed by an OpOverload such as torch.ops.aten.add.Tensor, got {op!r}; "
                    "name the overload explicitly"
                )

        def decorator(fn: Callable) -> Callable:
            for op in ops:
                if op in self._rules and not replace:
                    raise ValueError(f"a rule for {op} is already registered (pass replace=True to override)")
                self._rules[op] = Rule(op, fn, family, rewrite)
            return fn

        return decorator

    def get(self, op) -> Rule | None:
        return self._rules.get(op)

    def __contains__(self, op) -> bool:
        return op in self._rules

    def __len__(self) -> int:
        return len(self._rules)

    def ops(self) -> list:
        return list(self._rules)

    def copy(self) -> "RuleRegistry":
        return RuleRegistry(self._rules)


_DEFAULT = RuleRegistry()


def default_registry() -> RuleRegistry:
    """A fresh copy of the built-in rule table (all ``rules/`` families loaded)."""
    from amgp_fx.groups import rules  # noqa: F401  (registers the built-in rules)

    return _DEFAULT.copy()


def builtin(*ops, family: str, rewrite: Callable | None = None):
    """Register a built-in rule (used by the ``rules`` package only)."""
    return _DEFAULT.register(*ops, family=family, rewrite=rewrite)

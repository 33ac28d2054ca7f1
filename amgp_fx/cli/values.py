"""Value parsers of ``amgp-compress`` options (pure: no torch), and the CLI's constants.

Example:
    >>> parse_ratio("0.25"), parse_batch_sizes("1, 64,512"), parse_group_ratio("g1=0.5")
    (0.25, (1, 64, 512), ('g1', 0.5))
"""
from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any

from amgp_fx.errors import PruneRequestError, UsageError

__all__ = ["DEFAULT_OUTPUT", "MAX_BATCH", "MODEL_NAMES", "PROG", "check_batch", "check_path_name", "parse_batch_sizes",
           "parse_factory_kwargs", "parse_group_ratio", "parse_ratio"]


PROG = "amgp-compress"


MODEL_NAMES = ("dlrm", "dcn_v2", "deepfm", "wide_deep", "autoint", "mmoe")  # models.MODEL_NAMES, without torch


DEFAULT_OUTPUT = "amgp-out"


# the largest batch any option may ask for: 2**20 rows of a 1,000-wide float input are 4 GiB, and a
# model's activations many times that; more is a typo (an extra digit), not a measurement
MAX_BATCH = 1 << 20

NAME_MAX, PATH_MAX = 255, 4096  # bytes per file or folder name, and per path (Linux, macOS: 255 and 1024)


def check_batch(size: int, option: str) -> int:
    """``size`` if it is at most :data:`MAX_BATCH`; a UsageError (exit 2) otherwise."""
    if size > MAX_BATCH:
        raise UsageError(f"{option} {size:,} is larger than {MAX_BATCH:,} rows, which would need more memory "
                         "than a machine has", f"Pass a batch of at most {MAX_BATCH:,}")
    return size


def check_path_name(path: str | os.PathLike, option: str) -> None:
    """Refuse a path the filesystem would refuse as too long (ENAMETOOLONG), naming the option."""
    text = os.fsencode(path)
    longest = max((len(part) for part in text.split(b"/")), default=0)
    if longest > NAME_MAX or len(text) > PATH_MAX:
        what = f"a name of {longest} bytes" if longest > NAME_MAX else f"{len(text)} bytes"
        raise UsageError(f"{option} {os.fsdecode(text[:40])}... is too long ({what}; file systems take at most "
                         f"{NAME_MAX} bytes per name and {PATH_MAX} per path)", "Use a shorter file or folder name")


def parse_ratio(text: str, what: str = "ratio") -> float:
    """A fraction strictly between 0 and 1; raises PruneRequestError otherwise."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise PruneRequestError(f"{what} {text!r} is not a number", "Pass a fraction such as 0.5") from None
    if not math.isfinite(value) or not 0.0 < value < 1.0:
        raise PruneRequestError(f"{what} {text!r} is outside (0, 1)", "Pass a fraction such as 0.5")
    return value


def parse_group_ratio(text: str) -> tuple[str, float]:
    """``GROUP=RATIO`` (group id or name as listed by ``analyze``) -> ``(group, ratio)``."""
    group, sep, value = str(text).rpartition("=")
    if not sep or not group.strip():
        raise UsageError(f"--group-ratio {text!r} is not GROUP=RATIO", "Write e.g. --group-ratio g1=0.75")
    return group.strip(), parse_ratio(value, f"ratio of group {group.strip()}")


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """Comma-separated positive batch sizes, e.g. ``"1,64,512"`` (duplicates dropped, order kept)."""
    sizes = []
    for part in str(text).split(","):
        part = part.strip()
        if not (part.isascii() and part.isdigit()) or int(part) < 1:  # "²".isdigit() is True, int("²") fails
            raise UsageError(f"batch size {part!r} in {text!r} is not a positive integer",
                             "Pass comma-separated sizes such as --batch-sizes 1,64,512")
        sizes.append(check_batch(int(part), "--batch-sizes entry"))
    return tuple(dict.fromkeys(sizes))


MAX_KWARGS_DEPTH = 32  # a factory's keyword arguments are flat; the same limit on every Python version
_TOO_DEEP = object()


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_factory_kwargs(text: str | None) -> dict[str, Any]:
    """``--factory-kwargs`` JSON object -> dict."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"--factory-kwargs is not valid JSON ({error.msg} at column {error.colno})",
                         "Pass a JSON object such as '{\"preset\": \"small\"}'") from None
    except RecursionError:
        value = _TOO_DEEP  # deeper than this interpreter parses (Python 3.12 parses deeper than 3.11)
    if value is _TOO_DEEP or _depth(value) > MAX_KWARGS_DEPTH:
        raise UsageError("--factory-kwargs is nested too deeply", "Pass a flat JSON object of keyword arguments") \
            from None
    if not isinstance(value, dict):
        raise UsageError(f"--factory-kwargs must be a JSON object, got {type(value).__name__}",
                         "Pass a JSON object such as '{\"preset\": \"small\"}'")
    return value


def _finite_float(text: str, positive: bool) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise argparse.ArgumentTypeError(f"expected a finite {'positive' if positive else 'non-negative'} number, "
                                         f"got {text!r}")
    return value


def _positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (``--lr``: nan, inf, 0 and negatives are refused)."""
    return _finite_float(text, positive=True)


def _non_negative_float(text: str) -> float:
    """An argparse type: a finite number >= 0 (tolerances)."""
    return _finite_float(text, positive=False)


def _seed(text: str) -> int:
    """An argparse type: a seed numpy, torch and Python all take (0 to 2**32 - 1)."""
    value = str(text).strip()
    if not (value.isascii() and value.isdigit()) or int(value) >= 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {2**32 - 1}, got {text!r}")
    return int(value)


def _positive_int(text: str) -> int:
    if not (str(text).strip().isascii() and str(text).strip().isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)

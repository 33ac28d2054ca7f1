"""The column spec of a user's own table file: which columns are labels, dense and categorical,
and how categorical values become ids.

A spec comes from Python (`ColumnSpec(...)`), from a small JSON or TOML file (`load_column_spec`),
or from command-line lists (`column_spec_from_options`, which also merges a file with them).
Every problem with a spec raises `ColumnSpecError` (a ValueError) naming the key that is wrong.

Example:
    >>> spec = ColumnSpec.from_dict({"label": "click", "dense": ["price"], "categorical": ["user", "item"]})
    >>> spec.labels, spec.dense, [c.name for c in spec.categorical], spec.categorical[0].encoding
    (('click',), ('price',), ['user', 'item'], 'hash')
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CategoricalColumn", "ColumnSpec", "ColumnSpecError", "ENCODINGS", "DEFAULT_HASH_KEY",
           "DEFAULT_MISSING_VALUES", "load_column_spec", "column_spec_from_options", "split_names"]

ENCODINGS = ("hash", "vocab")
DENSE_TRANSFORMS = ("none", "log1p")
DEFAULT_HASH_KEY = "amgp-fx"
# text read as "no value": dense -> `dense_default`, categorical -> the reserved id 0, label -> malformed
DEFAULT_MISSING_VALUES = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "None")
_MAX_SPEC_BYTES = 1 << 20
_KEYS = ("label", "labels", "dense", "categorical", "encoding", "hash_key", "dense_default", "dense_transform",
         "missing_values", "delimiter", "column_names")
_COLUMN_KEYS = ("name", "encoding", "size")


class ColumnSpecError(ValueError):
    """A column spec that cannot be used: a missing or unknown key, a wrong type, a duplicate column."""


@dataclasses.dataclass(frozen=True)
class CategoricalColumn:
    """One categorical column: its name, its encoding ("hash" or "vocab") and, optionally, its
    table size (else the caller's `table_sizes`, or for "vocab" the vocabulary size + 1)."""

    name: str
    encoding: str = "hash"
    size: int | None = None

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ColumnSpecError(f"categorical column {self.name!r}: encoding must be one of {', '.join(ENCODINGS)}, "
                                  f"got {self.encoding!r}")
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 2):
            raise ColumnSpecError(f"categorical column {self.name!r}: size must be an integer >= 2 (id 0 is reserved), "
                                  f"got {self.size!r}")


@dataclasses.dataclass(frozen=True)
class ColumnSpec:
    """Which columns of a table file feed the model, and how.

    Args:
        labels: label column(s); one gives (N,) labels, several give (N, T) for T tasks. Values 0 or 1.
        dense: numeric columns, in the model's dense-input order.
        categorical: columns (names or `CategoricalColumn`s) in the model's sparse-input order.
        encoding: default encoding of the categorical columns: "hash" (keyed BLAKE2b of the text,
            stable across processes and machines) or "vocab" (ids by frequency in the file read).
        hash_key: the key of the hash; change it to get a different (equally stable) mapping.
        dense_default: the value of a missing dense field (empty, or one of `missing_values`).
        dense_transform: "none" or "log1p" (of values clamped at 0, as DLRM does for counts).
        missing_values: texts that mean "no value".
        delimiter: field separator of CSV/TSV files; None: tab for .tsv/.tab, else comma.
        column_names: names of the columns of a file without a header line; None: the first line
            is the header.

    Raises:
        ColumnSpecError: for no label, no categorical column, a duplicate or empty name, a bad value.
    """

    labels: tuple[str, ...]
    dense: tuple[str, ...] = ()
    categorical: tuple[CategoricalColumn, ...] = ()
    encoding: str = "hash"
    hash_key: str = DEFAULT_HASH_KEY
    dense_default: float = 0.0
    dense_transform: str = "none"
    missing_values: tuple[str, ...] = DEFAULT_MISSING_VALUES
    delimiter: str | None = None
    column_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ColumnSpecError(f"encoding must be one of {', '.join(ENCODINGS)}, got {self.encoding!r}")
        set_ = object.__setattr__
        set_(self, "labels", _names(self.labels, "label"))
        set_(self, "dense", _names(self.dense, "dense"))
        set_(self, "categorical", tuple(_categorical(entry, self.encoding) for entry in _as_list(self.categorical,
                                                                                                  "categorical")))
        set_(self, "missing_values", tuple(_text(value, "missing_values") for value in _as_list(
            self.missing_values, "missing_values")))
        if self.column_names is not None:
            set_(self, "column_names", _names(self.column_names, "column_names"))
        if not self.labels:
            raise ColumnSpecError("the spec names no label column")
        if not self.categorical:
            raise ColumnSpecError("the spec names no categorical column (the model's embedding tables need one each)")
        seen: set[str] = set()
        for name in self.names:
            if name in seen:
                raise ColumnSpecError(f"column {name!r} is declared twice")
            seen.add(name)
        if self.column_names is not None:
            absent = [name for name in self.names if name not in self.column_names]
            if absent:
                raise ColumnSpecError(f"column {absent[0]!r} is not among column_names {list(self.column_names)}")
        if not isinstance(self.hash_key, str) or not self.hash_key:
            raise ColumnSpecError(f"hash_key must be a non-empty string, got {self.hash_key!r}")
        if isinstance(self.dense_default, bool) or not isinstance(self.dense_default, (int, float)) \
                or not math.isfinite(self.dense_default):
            raise ColumnSpecError(f"dense_default must be a finite number, got {self.dense_default!r}")
        set_(self, "dense_default", float(self.dense_default))
        if self.dense_transform not in DENSE_TRANSFORMS:
            raise ColumnSpecError(f"dense_transform must be one of {', '.join(DENSE_TRANSFORMS)}, "
                                  f"got {self.dense_transform!r}")
        if self.delimiter is not None and (not isinstance(self.delimiter, str) or len(self.delimiter) != 1
                                           or self.delimiter in "\r\n\""):
            raise ColumnSpecError(f"delimiter must be one character (not a quote or newline), got {self.delimiter!r}")

    @property
    def names(self) -> tuple[str, ...]:
        """Every declared column: labels, dense, categorical."""
        return self.labels + self.dense + tuple(column.name for column in self.categorical)

    @property
    def num_tasks(self) -> int:
        """T, the label columns."""
        return len(self.labels)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ColumnSpec:
        """A spec from a JSON/TOML-style mapping; see docs/data.md for the keys.

        Raises:
            ColumnSpecError: for unknown keys (typos) and everything `ColumnSpec` refuses.
        """
        if not isinstance(data, Mapping):
            raise ColumnSpecError(f"a column spec must be a table/object, got {type(data).__name__}")
        unknown = [key for key in data if key not in _KEYS]
        if unknown:
            raise ColumnSpecError(f"unknown key {unknown[0]!r} in the column spec; the keys are {', '.join(_KEYS)}")
        if "label" in data and "labels" in data:
            raise ColumnSpecError("give either 'label' or 'labels', not both")
        kwargs = {key: data[key] for key in _KEYS[2:] if key in data}
        kwargs["labels"] = data.get("label", data.get("labels", ()))
        for key in ("missing_values", "column_names"):
            if key in kwargs and kwargs[key] is not None:
                kwargs[key] = tuple(_as_list(kwargs[key], key))
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; `from_dict(to_dict())` is this spec."""
        data = dataclasses.asdict(self)
        data["labels"] = list(self.labels)
        data["dense"] = list(self.dense)
        data["categorical"] = [{key: value for key, value in dataclasses.asdict(column).items() if value is not None}
                               for column in self.categorical]
        data["missing_values"] = list(self.missing_values)
        data["column_names"] = list(self.column_names) if self.column_names is not None else None
        return {key: value for key, value in data.items() if value is not None}


def load_column_spec(path: str | Path) -> ColumnSpec:
    """Read a spec from a .json or .toml file.

    Raises:
        ColumnSpecError: for a missing, oversized or unparsable file, or a bad spec.
    """
    path = Path(path)
    if not path.is_file():
        raise ColumnSpecError(f"column spec {path} does not exist")
    if path.stat().st_size > _MAX_SPEC_BYTES:
        raise ColumnSpecError(f"column spec {path} is larger than {_MAX_SPEC_BYTES >> 20} MiB")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise ColumnSpecError(f"column spec {path} must be a .json or .toml file")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if suffix == ".json" else tomllib.loads(text)
    except UnicodeDecodeError:
        raise ColumnSpecError(f"column spec {path} is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise ColumnSpecError(f"column spec {path} is not valid JSON ({error.msg} at line {error.lineno}, "
                              f"column {error.colno})") from None
    except tomllib.TOMLDecodeError as error:
        raise ColumnSpecError(f"column spec {path} is not valid TOML ({error})") from None
    except RecursionError:
        raise ColumnSpecError(f"column spec {path} is nested too deeply") from None
    try:
        return ColumnSpec.from_dict(data)
    except ColumnSpecError as error:
        raise ColumnSpecError(f"column spec {path}: {error}") from None


def split_names(text: str | None) -> list[str] | None:
    """Comma-separated column names -> list (None stays None; blanks are dropped)."""
    if text is None:
        return None
    return [part.strip() for part in str(text).split(",") if part.strip()]


def column_spec_from_options(
    columns_file: str | Path | None = None,
    *,
    label: str | None = None,
    dense: str | None = None,
    categorical: str | None = None,
    encoding: str | None = None,
) -> ColumnSpec | None:
    """The spec of `--columns FILE` and/or `--label/--dense/--categorical/--encoding`: the lists
    (comma-separated names) replace the file's entries; None when nothing is given.

    Raises:
        ColumnSpecError: for a bad file, or lists that do not make a spec.
    """
    if columns_file is None and label is None and dense is None and categorical is None and encoding is None:
        return None
    data: dict[str, Any] = load_column_spec(columns_file).to_dict() if columns_file is not None else {}
    if label is not None:
        data["labels"] = split_names(label)
    if dense is not None:
        data["dense"] = split_names(dense)
    if categorical is not None:
        data["categorical"] = split_names(categorical)
    if encoding is not None:
        data["encoding"] = encoding
        # a command-line encoding applies to every categorical column the command line or file names
        data["categorical"] = [entry if isinstance(entry, str) else {**entry, "encoding": encoding}
                               for entry in data.get("categorical", [])]
    return ColumnSpec.from_dict(data)


def _as_list(value: Any, what: str) -> list:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence):
        return list(value)
    raise ColumnSpecError(f"{what} must be a name or a list of names, got {type(value).__name__}")


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ColumnSpecError(f"{what} entries must be strings, got {value!r}")
    return value


def _names(value: Any, what: str) -> tuple[str, ...]:
    names = tuple(_text(name, what) for name in _as_list(value, what))
    if any(not name.strip() for name in names):
        raise ColumnSpecError(f"{what} has an empty column name")
    return names


def _categorical(entry: Any, encoding: str) -> CategoricalColumn:
    if isinstance(entry, CategoricalColumn):
        return entry
    if isinstance(entry, str):
        return CategoricalColumn(_names(entry, "categorical")[0], encoding)
    if isinstance(entry, Mapping):
        unknown = [key for key in entry if key not in _COLUMN_KEYS]
        if unknown or "name" not in entry:
            raise ColumnSpecError(f"a categorical entry needs 'name' and may have 'encoding' and 'size'; got "
                                  f"{sorted(entry)}")
        return CategoricalColumn(_names(entry["name"], "categorical")[0], entry.get("encoding", encoding),
                                 entry.get("size"))
    raise ColumnSpecError(f"a categorical entry must be a name or a table with 'name', got {entry!r}")

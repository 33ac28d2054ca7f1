"""Reader for Criteo Kaggle / Terabyte TSV files with DLRM's preprocessing, strict about bad rows.

Format, one row per line, tab-separated: label (0 or 1), 13 integer columns (may be negative or
empty), 26 categorical columns of hexadecimal ids (may be empty). Preprocessing follows DLRM:
dense values below 0 become 0, then log(1 + x); a categorical id is `1 + value % (size - 1)`
(modulo, DLRM's `--max-ind-range`) or `1 + splitmix64(value) % (size - 1)` (hash), and an empty
categorical field is the reserved id 0.

A malformed row raises `DataFormatError` naming the file, the line and the problem, unless
`skip_malformed=True`, which skips it and counts it. No row is ever read as a silent wrong value.
Each chunk is checked with one compiled pattern per line and converted with vectorised numpy.
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import logging
import os
import re
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .batch import Batch, DatasetSpec, concat_batches
from .synthetic import splitmix64

__all__ = ["DataFormatError", "ReadStats", "CriteoTsvReader", "read_criteo_tsv", "format_criteo_row"]

logger = logging.getLogger(__name__)

NUM_DENSE = 13
NUM_SPARSE = 26
NUM_COLUMNS = 1 + NUM_DENSE + NUM_SPARSE
_MAX_DENSE_DIGITS = 18  # fits int64
_MAX_HEX_DIGITS = 16  # fits uint64
_ROW_PATTERN = re.compile(
    rb"[01]" + rb"\t(?:-?[0-9]{1,18})?" * NUM_DENSE + rb"(?:\t[0-9a-fA-F]{0,16})" * NUM_SPARSE
)
_DENSE_PATTERN = re.compile(rb"-?[0-9]{1,18}")
_HEX_PATTERN = re.compile(rb"[0-9a-fA-F]{1,16}")
_NIBBLE = np.full(256, 0, dtype=np.uint64)
for _character in b"0123456789":
    _NIBBLE[_character] = _character - ord("0")
for _character in b"abcdef":
    _NIBBLE[_character] = _NIBBLE[_character - 32] = _character - ord("a") + 10


class DataFormatError(ValueError):
    """A malformed input row.

    Attributes:
        path: the file.
        line: 1-based line number.
        reason: what is wrong, e.g. "column 3 (dense 2): 'x1' is not an integer".
    """

    def __init__(self, path: str | os.PathLike, line: int, reason: str) -> None:
        self.path, self.line, self.reason = str(path), line, reason
        super().__init__(f"{self.path}:{line}: {reason}")

    def __reduce__(self):
        return type(self), (self.path, self.line, self.reason)


@dataclasses.dataclass
class ReadStats:
    """Counts of one read: rows kept, rows skipped, and the first few skip reasons."""

    rows: int = 0
    skipped: int = 0
    first_errors: list[str] = dataclasses.field(default_factory=list)


def format_criteo_row(label: int, dense: Sequence[int | None], categorical: Sequence[int | None]) -> str:
    """One TSV line (without newline); None is an empty field. The inverse of parsing, for tests/tools.

    Example:
        >>> format_criteo_row(1, [5] + [None] * 12, [255] + [None] * 25).split("\\t")[:3]
        ['1', '5', '']
    """
    fields = [str(label)] + ["" if value is None else str(value) for value in dense]
    fields += ["" if value is None else f"{value:08x}" for value in categorical]
    return "\t".join(fields)


class CriteoTsvReader:
    """Streams a Criteo TSV file as preprocessed batches.

    Args:
        path: a .tsv/.txt file, or .gz compressed.
        table_sizes: rows of each of the 26 tables (every one >= 2: id 0 is reserved for empty).
        index_mode: "modulo" (DLRM) or "hash" (spreads ids whose low bits are not uniform).
        skip_malformed: skip and count bad rows instead of raising.
        chunk_rows: lines parsed per chunk.

    Raises:
        ValueError: for wrong table sizes or index mode.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        table_sizes: Sequence[int],
        *,
        index_mode: str = "modulo",
        skip_malformed: bool = False,
        chunk_rows: int = 65536,
    ) -> None:
        if len(table_sizes) != NUM_SPARSE or min(table_sizes) < 2:
            raise ValueError(f"need {NUM_SPARSE} table sizes, each >= 2 (id 0 is reserved), got {tuple(table_sizes)}")
        if index_mode not in ("modulo", "hash"):
            raise ValueError(f"index_mode must be 'modulo' or 'hash', got {index_mode!r}")
        self.path = Path(path)
        self.spec = DatasetSpec(self.path.name, NUM_DENSE, tuple(table_sizes))
        self.index_mode = index_mode
        self.skip_malformed = skip_malformed
        self.chunk_rows = chunk_rows
        self.stats = ReadStats()
        self._buckets = np.asarray(table_sizes, dtype=np.uint64) - np.uint64(1)

    def __iter__(self) -> Iterator[Batch]:
        """Batches of up to `chunk_rows` good rows, in file order; `stats` counts as it goes."""
        self.stats = ReadStats()
        opener = gzip.open if self.path.suffix == ".gz" else open
        with opener(self.path, "rb") as handle:
            first_line = 1
            while True:
                lines = self._read_lines(handle, first_line)
                if not lines:
                    break
                batch = self._parse_chunk(lines, first_line)
                first_line += len(lines)
                if batch.num_rows:
                    self.stats.rows += batch.num_rows
                    yield batch
        if self.stats.skipped:
            logger.warning("%s: skipped %d malformed rows; first: %s", self.path, self.stats.skipped, self.stats.first_errors[:3])

    def _read_lines(self, handle, first_line: int) -> list[bytes]:
        """The next chunk of lines; a truncated or damaged .gz file (EOFError, BadGzipFile, zlib.error)
        is a DataFormatError at the line where it breaks, not a crash."""
        try:
            return list(itertools.islice(handle, self.chunk_rows))
        except (EOFError, OSError, zlib.error) as error:
            what = "is truncated" if isinstance(error, EOFError) else "cannot be decompressed"
            raise DataFormatError(self.path, first_line, f"the compressed file {what} near this line "
                                  f"({' '.join(str(error).split())}). Use a complete copy of the "
                                  "file") from None

    def _parse_chunk(self, lines: list[bytes], first_line: int) -> Batch:
        rows = [line.rstrip(b"\r\n") for line in lines]
        good = [index for index, row in enumerate(rows) if _ROW_PATTERN.fullmatch(row)]
        if len(good) != len(rows):
            good_set = set(good)
            for index, row in enumerate(rows):
                if index in good_set:
                    continue
                error = DataFormatError(self.path, first_line + index, _diagnose(row))
                if not self.skip_malformed:
                    raise error
                self.stats.skipped += 1
                if len(self.stats.first_errors) < 10:
                    self.stats.first_errors.append(str(error))
            rows = [rows[index] for index in good]
        if not rows:
            return Batch(torch.zeros(0, NUM_DENSE), torch.zeros(0, NUM_SPARSE, dtype=torch.long), torch.zeros(0))
        fields = np.array(b"\t".join(rows).split(b"\t")).reshape(len(rows), NUM_COLUMNS)  # bytes, dtype S
        label = (fields[:, 0] == b"1").astype(np.float32)
        dense_text = fields[:, 1 : 1 + NUM_DENSE]
        dense = np.where(dense_text == b"", b"0", dense_text).astype(np.int64)
        dense = np.log1p(np.maximum(dense, 0).astype(np.float64)).astype(np.float32)
        sparse = self._category_ids(fields[:, 1 + NUM_DENSE :])
        return Batch(torch.from_numpy(dense), torch.from_numpy(sparse), torch.from_numpy(label))

    def _category_ids(self, hex_text: np.ndarray) -> np.ndarray:
        """(N, 26) hex strings -> ids in [0, size): 0 for empty, else 1 + mapped value % (size - 1)."""
        rows = hex_text.shape[0]
        characters = hex_text.astype(f"S{_MAX_HEX_DIGITS}").view(np.uint8).reshape(rows, NUM_SPARSE, _MAX_HEX_DIGITS)
        lengths = (characters != 0).sum(-1)
        values = np.zeros((rows, NUM_SPARSE), dtype=np.uint64)
        for position in range(int(lengths.max(initial=0))):  # Horner's rule over the hex digits
            digit = characters[:, :, position]
            shifted = (values << np.uint64(4)) | _NIBBLE[digit]
            values = np.where(digit != 0, shifted, values)
        if self.index_mode == "hash":
            with np.errstate(over="ignore"):
                values = splitmix64(values)
        ids = np.uint64(1) + values % self._buckets
        return np.where(lengths == 0, np.uint64(0), ids).astype(np.int64)


def read_criteo_tsv(
    path: str | os.PathLike,
    table_sizes: Sequence[int],
    *,
    index_mode: str = "modulo",
    skip_malformed: bool = False,
    max_rows: int | None = None,
) -> tuple[Batch, ReadStats]:
    """Read a whole Criteo TSV file into memory.

    Args:
        path: the file (.gz allowed).
        table_sizes: the 26 table sizes, each >= 2.
        index_mode: "modulo" or "hash"; see `CriteoTsvReader`.
        skip_malformed: skip and count malformed rows instead of raising.
        max_rows: stop after this many good rows.

    Returns:
        The rows (dense (N, 13) float32, sparse (N, 26) int64, label (N,) float32) and the stats.

    Raises:
        DataFormatError: on the first malformed row, unless `skip_malformed`.
    """
    reader = CriteoTsvReader(path, table_sizes, index_mode=index_mode, skip_malformed=skip_malformed)
    batches, kept = [], 0
    for batch in reader:
        batches.append(batch)
        kept += batch.num_rows
        if max_rows is not None and kept >= max_rows:
            break
    if not batches:
        return Batch(torch.zeros(0, NUM_DENSE), torch.zeros(0, NUM_SPARSE, dtype=torch.long), torch.zeros(0)), reader.stats
    rows = concat_batches(batches)
    return (rows if max_rows is None else rows[:max_rows]), reader.stats


def _diagnose(row: bytes) -> str:
    """Say precisely why a row failed the fast pattern."""
    if not row:
        return f"empty line (expected {NUM_COLUMNS} tab-separated columns)"
    fields = row.split(b"\t")
    if len(fields) != NUM_COLUMNS:
        return f"expected {NUM_COLUMNS} tab-separated columns, found {len(fields)}"
    if fields[0] not in (b"0", b"1"):
        return f"column 1 (label): {_show(fields[0])} is not 0 or 1"
    for index in range(NUM_DENSE):
        text = fields[1 + index]
        if text and not _DENSE_PATTERN.fullmatch(text):
            too_long = re.fullmatch(rb"-?[0-9]+", text) is not None
            problem = f"has more than {_MAX_DENSE_DIGITS} digits" if too_long else "is not an integer"
            return f"column {index + 2} (dense {index + 1}): {_show(text)} {problem}"
    for index in range(NUM_SPARSE):
        text = fields[1 + NUM_DENSE + index]
        if text and not _HEX_PATTERN.fullmatch(text):
            too_long = re.fullmatch(rb"[0-9a-fA-F]+", text) is not None
            problem = f"has more than {_MAX_HEX_DIGITS} hex digits" if too_long else "is not hexadecimal"
            return f"column {index + 2 + NUM_DENSE} (categorical {index + 1}): {_show(text)} {problem}"
    return "row does not match the Criteo format"  # unreachable when the patterns agree


def _show(text: bytes) -> str:
    shown = text[:40].decode("utf-8", errors="replace")
    return repr(shown + ("..." if len(text) > 40 else ""))

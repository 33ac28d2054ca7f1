"""Reader for a user's own CSV / TSV / Parquet file (also .gz CSV) described by a `ColumnSpec`.

pyarrow does the parsing (streamed, so memory holds only the declared columns of the rows kept);
this module checks every row and converts the columns:

- labels: numbers equal to 0 or 1 (several label columns give (N, T) labels);
- dense: numbers; a missing field (empty, or one of the spec's `missing_values`) is the spec's
  `dense_default` (0.0 unless set); `dense_transform="log1p"` applies log(1 + max(x, 0));
- categorical: any text (numbers in Parquet are read as their text). Id 0 is reserved for a
  missing value (and, with a vocabulary, for a value not in it); "hash" gives
  `1 + blake2b(key, column, text) % (size - 1)`, "vocab" gives ids 1.. to the file's values by
  falling frequency (ties by text), keeping the `size - 1` most frequent.

A malformed row (wrong column count, a dense value that is not a finite number, a missing or
non-0/1 label) raises `TableFormatError` naming the file, the line (CSV; "row" for Parquet) and the
column, unless `skip_malformed=True`, which skips and counts it in `ReadStats`. A declared column
the file lacks always raises. Each CSV row must be one line (no newlines inside quoted values).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .batch import Batch, DatasetSpec
from .columns import ColumnSpec
from .criteo_tsv import DataFormatError, ReadStats

__all__ = ["TableFormatError", "TableFileReader", "read_table_file", "table_file_format", "hash_ids",
           "build_vocabulary", "TABLE_SUFFIXES"]

logger = logging.getLogger(__name__)

_CSV_SUFFIXES = (".csv", ".tsv", ".tab", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq")
TABLE_SUFFIXES = _CSV_SUFFIXES + tuple(s + ".gz" for s in _CSV_SUFFIXES) + _PARQUET_SUFFIXES
_NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"  # RE2, on whitespace-trimmed text
_MAX_ERRORS_KEPT = 10


class TableFormatError(DataFormatError):
    """A malformed row or a missing column of a table file.

    Attributes:
        path: the file. line: 1-based line (CSV, the header is line 1) or data row (Parquet), or
        None for the whole file. column: the column's name, or None. reason: what is wrong.
    """

    def __init__(self, path: str | os.PathLike, line: int | None, column: str | None, reason: str,
                 unit: str = "line") -> None:
        self.path, self.line, self.column, self.reason, self.unit = str(path), line, column, reason, unit
        where = [self.path] + ([f"{unit} {line}"] if line is not None else []) + \
            ([f"column {column!r}"] if column is not None else [])
        ValueError.__init__(self, f"{', '.join(where)}: {reason}")

    def __reduce__(self):
        return type(self), (self.path, self.line, self.column, self.reason, self.unit)


def table_file_format(path: str | os.PathLike) -> str | None:
    """"csv" (CSV/TSV, optionally .gz), "parquet", or None for another suffix."""
    name = Path(path).name.lower()
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(tuple(s + ".gz" for s in _CSV_SUFFIXES) + _CSV_SUFFIXES):
        return "csv"
    return None


def hash_ids(values: Sequence[str], column: str, size: int, key: str) -> np.ndarray:
    """Ids in [1, size) of category texts: keyed BLAKE2b (8 bytes) of column and text, modulo size - 1.

    The same (key, column, text, size) gives the same id in every process, run and machine
    (Python's `hash()` of a str is salted per process, so it is not used).

    Example:
        >>> a, b = hash_ids(["x", "y"], "city", 100, "k"), hash_ids(["x", "y"], "city", 100, "k")
        >>> bool((a == b).all()) and bool(((a >= 1) & (a < 100)).all())
        True
    """
    secret = hashlib.blake2b(key.encode("utf-8"), digest_size=32).digest()
    prefix = column.encode("utf-8") + b"\x00"
    digests = np.fromiter(
        (int.from_bytes(hashlib.blake2b(prefix + value.encode("utf-8"), digest_size=8, key=secret).digest(), "little")
         for value in values), dtype=np.uint64, count=len(values))
    return (np.uint64(1) + digests % np.uint64(size - 1)).astype(np.int64)


def build_vocabulary(values, missing: Sequence[str], limit: int | None = None) -> tuple[str, ...]:
    """The distinct present texts of `values` (a pyarrow array), most frequent first (ties by text),
    at most `limit` of them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    present = pc.drop_null(pc.filter(values, pc.invert(pc.is_in(values, value_set=pa.array(missing, values.type)))))
    if len(present) == 0:
        return ()
    counts = pc.value_counts(present)
    table = pa.table({"value": counts.field("values"), "count": counts.field("counts")})
    table = table.sort_by([("count", "descending"), ("value", "ascending")])
    kept = table.column("value").to_pylist()
    return tuple(kept if limit is None else kept[:limit])


class TableFileReader:
    """Reads a CSV/TSV/Parquet file described by a `ColumnSpec` into one `Batch`.

    Args:
        path: .csv/.tsv/.tab/.txt (optionally .gz) or .parquet/.pq.
        spec: the column spec.
        table_sizes: rows of each categorical column's table (the model's), in spec order; None:
            each column's spec `size`, or for "vocab" columns the vocabulary size + 1.
        vocabularies: column name -> vocabulary (ids 1.. in order) to use instead of building one
            from this file, e.g. the training file's `reader.vocabularies` for an evaluation file.
        skip_malformed: skip and count malformed rows instead of raising.
        chunk_rows: rows per Parquet batch (CSV is read in blocks of about 1 MiB).

    Attributes (after `read`):
        stats: `ReadStats` of the read. vocabularies: the vocabulary of every "vocab" column.
        dataset_spec: the `DatasetSpec` of the rows (table sizes as used).

    Raises:
        ValueError: for table sizes that do not match the spec, or an unknown file type.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        spec: ColumnSpec,
        table_sizes: Sequence[int] | None = None,
        *,
        vocabularies: Mapping[str, Sequence[str]] | None = None,
        skip_malformed: bool = False,
        chunk_rows: int = 65536,
    ) -> None:
        self.path = Path(path)
        self.format = table_file_format(self.path)
        if self.format is None:
            raise ValueError(f"{self.path}: unknown table file type; use one of {', '.join(TABLE_SUFFIXES)}")
        if table_sizes is not None:
            table_sizes = tuple(int(size) for size in table_sizes)
            if len(table_sizes) != len(spec.categorical) or min(table_sizes) < 2:
                raise ValueError(f"need {len(spec.categorical)} table sizes, each >= 2 (id 0 is reserved), "
                                 f"got {table_sizes}")
        self.spec = spec
        self.table_sizes = table_sizes
        self.given_vocabularies = {name: tuple(values) for name, values in (vocabularies or {}).items()}
        self.skip_malformed = skip_malformed
        self.chunk_rows = chunk_rows
        self.stats = ReadStats()
        self.vocabularies: dict[str, tuple[str, ...]] = {}
        self.dataset_spec: DatasetSpec | None = None

    # -- reading --------------------------------------------------------------------------------------
    def read(self, max_rows: int | None = None) -> Batch:
        """All good rows (or the first `max_rows`) as dense (N, D) float32, sparse (N, F) int64 and
        label (N,) float32, or (N, T) for T label columns."""
        import pyarrow as pa

        self.stats = ReadStats()
        labels, dense, categorical, kept = [], [], [], 0
        for label_part, dense_part, text_part in self._chunks():
            labels.append(label_part)
            dense.append(dense_part)
            categorical.append(text_part)
            kept += len(label_part)
            if max_rows is not None and kept >= max_rows:
                break
        limit = kept if max_rows is None else min(kept, max_rows)
        label = np.concatenate(labels)[:limit] if labels else np.zeros((0, self.spec.num_tasks), np.float32)
        dense_matrix = np.concatenate(dense)[:limit] if dense else np.zeros((0, len(self.spec.dense)), np.float32)
        sparse_columns, sizes = [], []
        for index, column in enumerate(self.spec.categorical):
            chunks = [part[index] for part in categorical]
            values = pa.chunked_array(chunks, pa.string()).slice(0, limit)
            ids, size = self._encode(values, index)
            sparse_columns.append(ids)
            sizes.append(size)
        sparse = np.stack(sparse_columns, axis=1) if limit else np.zeros((0, len(sizes)), np.int64)
        if self.spec.dense_transform == "log1p":
            dense_matrix = np.log1p(np.maximum(dense_matrix, 0.0))
        self.stats.rows = limit
        self.dataset_spec = DatasetSpec(self.path.name, len(self.spec.dense), tuple(sizes), self.spec.num_tasks)
        if self.stats.skipped:
            logger.warning("%s: skipped %d malformed rows; first: %s", self.path, self.stats.skipped,
                           self.stats.first_errors[:3])
        label_tensor = torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))
        return Batch(torch.from_numpy(np.ascontiguousarray(dense_matrix, dtype=np.float32)),
                     torch.from_numpy(np.ascontiguousarray(sparse, dtype=np.int64)),
                     label_tensor[:, 0] if self.spec.num_tasks == 1 else label_tensor)

    def _chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray, list]]:
        """(labels (n, T), dense (n, D), categorical texts per column) of the good rows of each chunk."""
        source = self._csv_batches() if self.format == "csv" else self._parquet_batches()
        for batch, lines, column_errors in source:
            yield self._convert(batch, lines, column_errors)

    def _convert(self, batch, lines: np.ndarray, earlier: list[tuple[int, str | None, str]]):
        """Check and convert one record batch; `earlier` are errors found while parsing (wrong
        column counts), as (line, column, reason)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        spec = self.spec
        rows = batch.num_rows
        bad = np.zeros(rows, dtype=bool)
        errors: list[tuple[int, str | None, str]] = list(earlier)
        labels = np.zeros((rows, spec.num_tasks), np.float32)
        for index, name in enumerate(spec.labels):
            values, missing, invalid = self._numbers(batch.column(name), name)
            wrong = ~missing & ~invalid & (values != 0.0) & (values != 1.0)
            for mask, problem in ((missing, "the label is missing"), (invalid, "is not a number"),
                                  (wrong, "is not 0 or 1")):
                errors += self._describe(batch.column(name), mask & ~bad, lines, name, problem)
                bad |= mask
            labels[:, index] = np.where(bad, 0.0, values)
        dense = np.zeros((rows, len(spec.dense)), np.float32)
        for index, name in enumerate(spec.dense):
            values, missing, invalid = self._numbers(batch.column(name), name)
            errors += self._describe(batch.column(name), invalid & ~bad, lines, name, "is not a finite number")
            bad |= invalid
            dense[:, index] = np.where(missing | bad, spec.dense_default, values)
        if errors:
            errors.sort(key=lambda error: error[0])
            if not self.skip_malformed:
                line, column, reason = errors[0]
                raise self._error(line, column, reason)
            self.stats.skipped += len(errors)
            room = _MAX_ERRORS_KEPT - len(self.stats.first_errors)
            self.stats.first_errors += [str(self._error(*error)) for error in errors[:max(0, room)]]
        good = np.flatnonzero(~bad)
        texts = []
        for column in spec.categorical:
            array = batch.column(column.name)
            if not pa.types.is_string(array.type):
                try:
                    array = pc.cast(array, pa.string())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    raise self._error(None, column.name, f"has type {array.type}, which cannot be read as "
                                                         "category text") from None
            texts.append(array.take(pa.array(good)) if len(good) != rows else array)
        return labels[good], dense[good], texts

    def _numbers(self, array, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(float64 values, missing mask, invalid mask) of a column of text or numbers."""
        import pyarrow as pa
        import pyarrow.compute as pc

        kind = array.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            text = pc.utf8_trim_whitespace(array)
            missing = pc.or_(pc.is_in(text, value_set=pa.array(self.spec.missing_values, kind)), pc.is_null(text))
            numeric = pc.fill_null(pc.match_substring_regex(text, _NUMBER), False)
            values = pc.cast(pc.if_else(numeric, text, pa.scalar(None, kind)), pa.float64())
            missing, numeric = missing.to_numpy(zero_copy_only=False), numeric.to_numpy(zero_copy_only=False)
            invalid = ~missing & ~numeric
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind) \
                or pa.types.is_decimal(kind):
            values = pc.cast(array, pa.float64())
            missing = pc.is_null(values, nan_is_null=True).to_numpy(zero_copy_only=False)
            invalid = np.zeros(len(array), dtype=bool)
        else:
            raise self._error(None, name, f"has type {kind}, which is not a number")
        values = values.to_numpy(zero_copy_only=False).astype(np.float64)
        with np.errstate(invalid="ignore"):
            invalid = invalid | (~missing & ~np.isfinite(values))  # e.g. 1e999
        return values, missing, invalid

    def _describe(self, array, mask: np.ndarray, lines: np.ndarray, name: str, problem: str):
        """(line, column, reason) for the rows in `mask` (the value is shown for the first few)."""
        rows = np.flatnonzero(mask)
        shown = min(len(rows), _MAX_ERRORS_KEPT if self.skip_malformed else 1)
        errors = []
        for position, row in enumerate(rows):
            if position < shown:
                value = array[int(row)].as_py()
                text = "" if value is None else str(value)
                reason = problem if problem.startswith("the ") else f"{_show(text)} {problem}"
            else:
                reason = problem
            errors.append((int(lines[row]), name, reason))
        return errors

    def _error(self, line: int | None, column: str | None, reason: str) -> TableFormatError:
        return TableFormatError(self.path, line, column, reason, "line" if self.format == "csv" else "row")

    # -- file formats ---------------------------------------------------------------------------------
    def _csv_batches(self):
        """(record batch, line of each row, parse errors) of a CSV/TSV file, streamed by pyarrow."""
        import pyarrow as pa
        import pyarrow.csv as csv

        spec = self.spec
        delimiter = spec.delimiter or ("\t" if self.path.name.lower().endswith((".tsv", ".tsv.gz", ".tab",
                                                                                ".tab.gz")) else ",")
        names = self._csv_names(delimiter)
        absent = [name for name in spec.names if name not in names]
        if absent:
            where = 1 if spec.column_names is None else None
            raise self._error(where, absent[0], f"no such column; the file has the columns {', '.join(names)}. "
                                                "Check the column spec")
        parse_errors: list[tuple[int, str | None, str]] = []
        expected = len(names)

        def invalid_row(row) -> str:
            found = row.actual_columns
            reason = f"expected {expected} {_delimiter_name(delimiter)}-separated columns, found {found}"
            parse_errors.append((row.number if row.number is not None else -1, None, reason))
            return "skip"

        read_options = csv.ReadOptions(use_threads=False, column_names=list(spec.column_names)
                                       if spec.column_names is not None else None)
        parse_options = csv.ParseOptions(delimiter=delimiter, invalid_row_handler=invalid_row,
                                         ignore_empty_lines=False)
        convert_options = csv.ConvertOptions(include_columns=list(spec.names), strings_can_be_null=False,
                                             column_types={name: pa.string() for name in spec.names})
        first_line = 1 if spec.column_names is not None else 2
        skipped_lines: list[int] = []  # lines the parser dropped, to number the rows it kept
        delivered = 0
        try:
            reader = csv.open_csv(self.path, read_options=read_options, parse_options=parse_options,
                                  convert_options=convert_options)
            for batch in reader:
                new_errors, parse_errors[:] = list(parse_errors), []
                skipped_lines += [line for line, _, _ in new_errors]
                skipped_lines.sort()
                lines = _row_lines(delivered, batch.num_rows, first_line, skipped_lines)
                delivered += batch.num_rows
                yield batch, lines, new_errors
            if parse_errors:  # rows dropped after the last batch
                yield pa.record_batch([pa.array([], pa.string())] * len(spec.names), names=list(spec.names)), \
                    np.zeros(0, np.int64), list(parse_errors)
        except (pa.ArrowInvalid, OSError, EOFError) as error:
            raise self._error(None, None, f"cannot be read as {_delimiter_name(delimiter)}-separated text: "
                                          f"{_arrow_message(error)}") from None

    def _csv_names(self, delimiter: str) -> list[str]:
        """The column names: the spec's `column_names`, or the header line's."""
        import pyarrow as pa
        import pyarrow.csv as csv

        if self.spec.column_names is not None:
            return list(self.spec.column_names)
        try:
            reader = csv.open_csv(self.path, read_options=csv.ReadOptions(use_threads=False, block_size=1 << 16),
                                  parse_options=csv.ParseOptions(delimiter=delimiter,
                                                                 invalid_row_handler=lambda row: "skip"),
                                  convert_options=csv.ConvertOptions(column_types={}))
            names = list(reader.schema.names)
            reader.close()
        except (pa.ArrowInvalid, OSError, EOFError) as error:
            raise self._error(None, None, f"has no readable header line: {_arrow_message(error)}") from None
        return names

    def _parquet_batches(self):
        """(record batch, data row number of each row, no parse errors) of a Parquet file."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            handle = pq.ParquetFile(self.path)
        except (pa.ArrowInvalid, OSError) as error:
            raise self._error(None, None, f"is not a readable Parquet file: {_arrow_message(error)}") from None
        with handle:
            names = handle.schema_arrow.names
            absent = [name for name in self.spec.names if name not in names]
            if absent:
                raise self._error(None, absent[0], f"no such column; the file has the columns {', '.join(names)}. "
                                                   "Check the column spec")
            first = 1
            try:
                for batch in handle.iter_batches(batch_size=self.chunk_rows, columns=list(self.spec.names)):
                    yield batch, np.arange(first, first + batch.num_rows), []
                    first += batch.num_rows
            except (pa.ArrowInvalid, OSError) as error:
                raise self._error(None, None, f"cannot be read: {_arrow_message(error)}") from None

    # -- categorical ids ------------------------------------------------------------------------------
    def _encode(self, values, index: int) -> tuple[np.ndarray, int]:
        """(ids (N,) int64 in [0, size), size) of one categorical column."""
        import pyarrow as pa
        import pyarrow.compute as pc

        column = self.spec.categorical[index]
        size = self.table_sizes[index] if self.table_sizes is not None else column.size
        missing_set = pa.array(self.spec.missing_values, pa.string())
        missing = pc.or_(pc.is_in(values, value_set=missing_set), pc.is_null(values)).to_numpy(zero_copy_only=False)
        if column.encoding == "vocab":
            vocabulary = self.given_vocabularies.get(column.name)
            if vocabulary is None:
                vocabulary = build_vocabulary(values, self.spec.missing_values, None if size is None else size - 1)
            elif size is not None:
                vocabulary = vocabulary[: size - 1]
            self.vocabularies[column.name] = vocabulary
            size = size if size is not None else len(vocabulary) + 1
            size = max(size, 2)
            position = pc.index_in(values, value_set=pa.array(vocabulary, pa.string()))
            ids = pc.fill_null(pc.add(position, 1), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        else:
            if size is None:
                raise ValueError(f"hashed column {column.name!r} needs a table size: pass table_sizes or set its "
                                 "'size' in the spec")
            distinct = pc.unique(values)
            table = hash_ids([text if text is not None else "" for text in distinct.to_pylist()], column.name, size,
                             self.spec.hash_key)
            position = pc.index_in(values, value_set=distinct).to_numpy(zero_copy_only=False)
            ids = table[position.astype(np.int64)] if len(table) else np.zeros(len(values), np.int64)
        return np.where(missing, 0, ids).astype(np.int64), int(size)


def read_table_file(
    path: str | os.PathLike,
    spec: ColumnSpec,
    table_sizes: Sequence[int] | None = None,
    *,
    vocabularies: Mapping[str, Sequence[str]] | None = None,
    skip_malformed: bool = False,
    max_rows: int | None = None,
) -> tuple[Batch, ReadStats]:
    """Read a whole CSV/TSV/Parquet file described by `spec` into memory, as `read_criteo_tsv` does.

    Args:
        path: the file (.csv, .tsv, .tab, .txt, each optionally .gz; .parquet, .pq).
        spec: which columns are labels, dense and categorical.
        table_sizes: the model's table sizes, one per categorical column; see `TableFileReader`.
        vocabularies: vocabularies to reuse (e.g. the training file's) for "vocab" columns.
        skip_malformed: skip and count malformed rows instead of raising.
        max_rows: stop after this many good rows.

    Returns:
        The rows (dense (N, D) float32, sparse (N, F) int64, label (N,) or (N, T) float32) and the stats.

    Raises:
        TableFormatError: (a `DataFormatError`) on the first malformed row, unless `skip_malformed`,
            and for a missing declared column or an unreadable file.

    Example:
        >>> import tempfile, pathlib
        >>> from amgp_fx.data.columns import ColumnSpec
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "clicks.csv"
        >>> _ = path.write_text("click,price,city\\n1,2.5,paris\\n0,,rome\\n")
        >>> rows, stats = read_table_file(path, ColumnSpec(["click"], ["price"], ["city"]), [100])
        >>> rows.dense.tolist(), rows.label.tolist(), stats.rows
        ([[2.5], [0.0]], [1.0, 0.0], 2)
    """
    reader = TableFileReader(path, spec, table_sizes, vocabularies=vocabularies, skip_malformed=skip_malformed)
    rows = reader.read(max_rows)
    return rows, reader.stats


def _row_lines(start: int, count: int, first_line: int, skipped: list[int]) -> np.ndarray:
    """Lines of kept rows start .. start + count - 1, when the parser dropped the `skipped` lines."""
    rows = np.arange(start, start + count, dtype=np.int64)
    if not skipped:
        return rows + first_line
    dropped = np.asarray(skipped, dtype=np.int64)
    kept_before = dropped - first_line - np.arange(len(dropped))  # kept rows before each dropped line
    return rows + first_line + np.searchsorted(kept_before, rows, side="right")


def _delimiter_name(delimiter: str) -> str:
    return {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe", " ": "space"}.get(delimiter, repr(delimiter))


def _arrow_message(error: BaseException) -> str:
    """pyarrow's complaint about a whole file, with what to do: there is no row to fix or skip."""
    text = " ".join(str(error).split())[:200].rstrip(".") or type(error).__name__
    if "compressed" in text.lower() or isinstance(error, EOFError):  # a cut-off .gz
        return text + ". The file is truncated or damaged: use a complete copy of it"
    return text + ". Check that the file is intact and is the format its name says (CSV/TSV text or Parquet)"


def _show(text: str) -> str:
    return repr(text[:40] + ("..." if len(text) > 40 else ""))

"""Data for CTR models: the `Batch` record, synthetic Criteo-like data, Criteo TSV, a user's own
CSV/TSV/Parquet file with a column spec, MovieLens/Adult.

Dim letters: N rows, B batch, F sparse fields, T tasks.
"""

from .batch import Batch, DatasetSpec, concat_batches
from .columns import CategoricalColumn, ColumnSpec, ColumnSpecError, column_spec_from_options, load_column_spec
from .criteo_tsv import CriteoTsvReader, DataFormatError, ReadStats, format_criteo_row, read_criteo_tsv
from .loader import (
    BatchLoader,
    BatchSource,
    NpyDatasetWriter,
    NpyRowSource,
    RowSource,
    StreamingLoader,
    load_npy_dataset,
    save_npy_dataset,
    train_eval_split,
)
from .synthetic import BLOCK_ROWS, SyntheticCriteo
from .table_file import TableFileReader, TableFormatError, read_table_file, table_file_format
from .tabular import TabularCtr, adult_ctr, movielens_ctr, table_to_ctr

__all__ = [
    "Batch",
    "DatasetSpec",
    "concat_batches",
    "SyntheticCriteo",
    "BLOCK_ROWS",
    "CriteoTsvReader",
    "DataFormatError",
    "ReadStats",
    "format_criteo_row",
    "read_criteo_tsv",
    "ColumnSpec",
    "CategoricalColumn",
    "ColumnSpecError",
    "load_column_spec",
    "column_spec_from_options",
    "TableFileReader",
    "TableFormatError",
    "read_table_file",
    "table_file_format",
    "TabularCtr",
    "table_to_ctr",
    "movielens_ctr",
    "adult_ctr",
    "BatchSource",
    "RowSource",
    "BatchLoader",
    "StreamingLoader",
    "NpyRowSource",
    "NpyDatasetWriter",
    "save_npy_dataset",
    "load_npy_dataset",
    "train_eval_split",
]

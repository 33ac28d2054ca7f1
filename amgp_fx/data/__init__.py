"""Data for CTR models: the `Batch` record, synthetic Criteo-like data, Criteo TSV, MovieLens/Adult.

Dim letters: N rows, B batch, F sparse fields, T tasks.
"""

from .batch import Batch, DatasetSpec, concat_batches
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

"""The data ``train`` and ``run`` train on: its shape, read from the model, and the rows of ``--data``.

Dim letters: B batch, F sparse fields.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import torch

from amgp_fx.errors import DataError, UsageError

__all__ = ["check_synthetic_memory", "data_shape", "load_data", "physical_memory"]


log = logging.getLogger(__name__)


def data_shape(loaded) -> dict[str, Any]:
    """``{"num_dense", "table_sizes", "num_tasks"}`` of the data the model takes. Table sizes come
    from the model's ``table_sizes`` attribute, the saved metadata, the model's embedding tables
    (:func:`amgp_fx.data.model_tables.model_table_sizes`), and only failing those from the example
    inputs (ids seen + 1 per field, which an 8-row batch underestimates)."""
    from amgp_fx.data.model_tables import model_table_sizes

    module, inputs = loaded.module, loaded.example_inputs
    if len(inputs) != 2 or inputs[0].is_floating_point() is False or inputs[1].dtype != torch.int64 \
            or inputs[0].dim() != 2 or inputs[1].dim() != 2:
        raise UsageError("training needs a model taking (dense (B, D) float32, sparse (B, F) int64), got "
                         f"{len(inputs)} inputs", "Train it from Python with amgp_fx.train.train")
    from amgp_fx.train import logits_of

    with torch.no_grad():
        try:
            output = logits_of(module(*inputs))
        except ValueError as error:
            raise UsageError(f"cannot train this model: {error}", "Train it from Python with amgp_fx.train.train "
                             "and a forward that returns its logits") from None
    tasks = 1 if output.dim() == 1 else int(output.shape[1])
    known = loaded.metadata.get("data") or {}
    table_sizes = getattr(module, "table_sizes", None) or known.get("table_sizes") or \
        model_table_sizes(module, inputs) or [max(2, int(c) + 1) for c in inputs[1].max(dim=0).values.tolist()]
    return {"num_dense": int(inputs[0].shape[1]), "table_sizes": [int(s) for s in table_sizes], "num_tasks": tasks}


def physical_memory() -> int:
    """Bytes of RAM of this machine (16 GiB where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 16 << 30


def check_synthetic_memory(rows: int, shape: dict[str, Any]) -> None:
    """Refuse (exit 2) a ``--rows`` whose synthetic data would not fit in memory, before generating
    it: each row holds the dense floats, the int64 ids, the labels and the teacher's float64 logits,
    about three times over while the blocks are joined and split."""
    per_row = 4 * shape["num_dense"] + 8 * len(shape["table_sizes"]) + 12 * shape["num_tasks"]
    need, have = 3 * rows * per_row, physical_memory()
    if need > have // 2:
        most = max(1, have // 2 // (3 * per_row))
        raise UsageError(f"--rows {rows:,} of synthetic data would need about {need / 2**30:,.1f} GiB of memory; this "
                         f"machine has {have / 2**30:,.1f} GiB", f"Pass --rows {min(most, 1_000_000)} or fewer")


def load_data(args: argparse.Namespace, shape: dict[str, Any]):
    """(train rows, eval rows), 10% held out: synthetic data shaped like the model, a CSV/TSV/Parquet
    file read with the column spec of ``--columns``/``--label``/``--dense``/``--categorical`` (the
    spec is then recorded in ``shape["columns"]``, which is saved with the model), or a Criteo TSV."""
    from amgp_fx.data import (ColumnSpecError, SyntheticCriteo, column_spec_from_options, read_criteo_tsv,
                              read_table_file, table_file_format, train_eval_split)

    try:
        spec = column_spec_from_options(getattr(args, "columns", None), label=getattr(args, "label", None),
                                        dense=getattr(args, "dense", None),
                                        categorical=getattr(args, "categorical", None),
                                        encoding=getattr(args, "encoding", None))
    except ColumnSpecError as error:
        raise UsageError(str(error), "Fix the column spec; docs/data.md#your-own-data shows the format") from None
    if args.data == "synthetic":
        if spec is not None:
            raise UsageError("--columns, --label, --dense, --categorical and --encoding describe a data file, but "
                             "--data is synthetic", "Pass --data FILE, or leave the column options out")
        from amgp_fx.config import SyntheticConfig

        check_synthetic_memory(args.rows, shape)
        config = SyntheticConfig(num_dense=shape["num_dense"], table_sizes=tuple(shape["table_sizes"]),
                                 num_tasks=shape["num_tasks"], seed=args.seed)
        rows = SyntheticCriteo(config).rows(0, args.rows)
    else:
        path = Path(args.data)
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise DataError(f"data file {path} {what}", "Pass --data synthetic, a Criteo TSV file, or a "
                            "CSV/TSV/Parquet file with --columns")
        if spec is not None:
            if table_file_format(path) is None:
                raise DataError(f"{path} is not a CSV, TSV or Parquet file (by its name)",
                                "Name it .csv, .tsv, .txt (optionally .gz), .parquet or .pq")
            wanted = (shape["num_dense"], len(shape["table_sizes"]), shape["num_tasks"])
            if (len(spec.dense), len(spec.categorical), spec.num_tasks) != wanted:
                raise DataError(f"the column spec has {len(spec.dense)} dense, {len(spec.categorical)} categorical "
                                f"and {spec.num_tasks} label columns but the model takes {wanted[0]} dense and "
                                f"{wanted[1]} sparse inputs and has {wanted[2]} outputs",
                                "Declare one dense column per dense input, one categorical column per embedding "
                                "table and one label column per output, in the model's order")
            rows, stats = read_table_file(path, spec, shape["table_sizes"], max_rows=args.rows,
                                          skip_malformed=args.skip_malformed)
            shape["columns"] = spec.to_dict()
        elif table_file_format(path) == "parquet" or path.name.lower().endswith((".csv", ".csv.gz")):
            raise UsageError(f"{path} needs a column spec", "Pass --columns spec.toml, or --label, --dense and "
                             "--categorical (docs/data.md#your-own-data)")
        else:
            if shape["num_dense"] != 13 or len(shape["table_sizes"]) != 26:
                raise DataError(f"{path} is read as Criteo TSV data (13 dense, 26 categorical columns) but the model "
                                f"takes {shape['num_dense']} dense and {len(shape['table_sizes'])} sparse inputs",
                                "Use a model built for Criteo (e.g. --model dlrm --preset default), or describe "
                                "your own columns with --columns or --label/--dense/--categorical")
            rows, stats = read_criteo_tsv(path, shape["table_sizes"], max_rows=args.rows,
                                          skip_malformed=args.skip_malformed)
        if stats.skipped:
            log.warning("%s: skipped %d malformed rows (first: %s)", path, stats.skipped,
                        "; ".join(stats.first_errors))
    if rows.num_rows < 20:
        raise DataError(f"the data has {rows.num_rows} usable rows, too few to train and evaluate",
                        "Pass a file with at least 20 rows")
    bad = ~torch.isfinite(rows.dense).all(dim=1) | ~torch.isfinite(rows.label.reshape(rows.num_rows, -1)).all(dim=1)
    if bool(bad.any()):
        raise DataError(f"the data has NaN or infinite values in {int(bad.sum())} rows (first: row "
                        f"{int(bad.nonzero()[0])})", "Clean or drop those rows")
    return train_eval_split(rows, 0.1, seed=args.seed)

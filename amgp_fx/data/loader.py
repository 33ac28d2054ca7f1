"""Batch loaders that keep an accelerator fed, and the on-disk .npy dataset format.

Dim letters: N rows, B batch, F sparse fields, T tasks.

Loaders slice whole tensors (no per-row Python). Their row order depends only on (seed, epoch),
so a resumed run can jump straight to batch k of an epoch: `epoch(epoch, start_batch=k)`.
On CUDA, batches are gathered on the CPU into pinned memory and copied with `non_blocking=True`,
or the whole dataset is put on the device once (`data_on_device=True`).
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..fileio import atomic_write_json
from .batch import Batch, DatasetSpec

__all__ = [
    "BatchSource",
    "RowSource",
    "BatchLoader",
    "StreamingLoader",
    "NpyRowSource",
    "NpyDatasetWriter",
    "save_npy_dataset",
    "load_npy_dataset",
    "train_eval_split",
    "order_generator",
]


@runtime_checkable
class BatchSource(Protocol):
    """What `train` iterates: batches per epoch, and one epoch from a given batch on."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]: ...


@runtime_checkable
class RowSource(Protocol):
    """Rows by index range, e.g. `SyntheticCriteo` or `NpyRowSource`."""

    def rows(self, start: int, stop: int) -> Batch: ...


def order_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded from (seed, *keys), e.g. (seed, epoch): independent streams per key."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _deliver(batch: Batch, device: torch.device) -> Batch:
    if device.type == "cuda" and batch.dense.device.type == "cpu":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)  # returns the same tensors when they are already there


class BatchLoader:
    """Mini-batches of an in-memory Batch.

    Args:
        data: all rows (N rows).
        batch_size: B.
        shuffle: permute rows each epoch with a generator seeded by (seed, epoch).
        seed: the data-order seed.
        drop_last: drop a final batch smaller than B.
        device: where batches are delivered.
        data_on_device: copy `data` to `device` once (fastest when it fits).

    Example:
        >>> rows = Batch(torch.arange(10.0)[:, None], torch.zeros(10, 1, dtype=torch.long), torch.zeros(10))
        >>> loader = BatchLoader(rows, 4, shuffle=True, seed=1)
        >>> len(loader), [batch.num_rows for batch in loader.epoch(0)]
        (3, [4, 4, 2])
    """

    def __init__(
        self,
        data: Batch,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
        data_on_device: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.data = data.to(self.device) if data_on_device else data
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last

    def __len__(self) -> int:
        rows = self.data.num_rows
        return rows // self.batch_size if self.drop_last else math.ceil(rows / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """Batches of epoch `epoch`, starting at batch index `start_batch`."""
        order = None
        if self.shuffle:
            order = torch.randperm(self.data.num_rows, generator=order_generator(self.seed, epoch))
            order = order.to(self.data.dense.device)
        for index in range(start_batch, len(self)):
            rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
            batch = self.data[rows] if order is None else self.data[order[rows]]
            yield _deliver(batch, self.device)


class StreamingLoader:
    """Mini-batches streamed from a RowSource in chunks, for data that does not fit in memory.

    Chunks are read in a (seed, epoch)-shuffled order and rows are shuffled within a chunk; the
    next chunk is read in a background thread while the current one is consumed.

    Args:
        source: anything with `rows(start, stop) -> Batch`.
        num_rows: N, rows to use from the source.
        batch_size: B.
        chunk_rows: rows read at a time (rounded up to a multiple of B).
        shuffle, seed, drop_last, device: as for `BatchLoader`.
    """

    def __init__(
        self,
        source: RowSource,
        num_rows: int,
        batch_size: int,
        *,
        chunk_rows: int = 1 << 20,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        if batch_size < 1 or num_rows < 0:
            raise ValueError(f"need batch_size >= 1 and num_rows >= 0, got {batch_size} and {num_rows}")
        self.source, self.num_rows, self.batch_size = source, num_rows, batch_size
        self.chunk_rows = max(1, math.ceil(chunk_rows / batch_size)) * batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.device = torch.device(device)
        self._chunk_starts = list(range(0, num_rows, self.chunk_rows))

    def _batches_in_chunk(self, chunk_start: int) -> int:
        rows = min(self.chunk_rows, self.num_rows - chunk_start)
        return rows // self.batch_size if self.drop_last else math.ceil(rows / self.batch_size)

    def __len__(self) -> int:
        return sum(self._batches_in_chunk(start) for start in self._chunk_starts)

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)

    def _load(self, epoch: int, chunk_start: int) -> Batch:
        chunk = self.source.rows(chunk_start, min(chunk_start + self.chunk_rows, self.num_rows))
        if self.shuffle:
            chunk = chunk[torch.randperm(chunk.num_rows, generator=order_generator(self.seed, epoch, chunk_start))]
        return chunk

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """Batches of epoch `epoch`, starting at batch index `start_batch`."""
        chunk_order = list(self._chunk_starts)
        if self.shuffle:
            permutation = torch.randperm(len(chunk_order), generator=order_generator(self.seed, epoch, 2**40))
            chunk_order = [chunk_order[index] for index in permutation.tolist()]
        plan = []  # (chunk start, first batch inside the chunk)
        for chunk_start in chunk_order:
            count = self._batches_in_chunk(chunk_start)
            if start_batch < count:
                plan.append((chunk_start, start_batch))
                start_batch = 0
            else:
                start_batch -= count
        if not plan:
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._load, epoch, plan[0][0])
            for position, (chunk_start, first_batch) in enumerate(plan):
                chunk = pending.result()
                if position + 1 < len(plan):
                    pending = pool.submit(self._load, epoch, plan[position + 1][0])
                for index in range(first_batch, self._batches_in_chunk(chunk_start)):
                    yield _deliver(chunk[index * self.batch_size : (index + 1) * self.batch_size], self.device)


class NpyRowSource:
    """Rows of a saved .npy dataset, memory-mapped: `rows(start, stop)` reads only that range."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.spec, self.metadata = _read_spec(self.directory)
        self._arrays = [np.load(self.directory / f"{name}.npy", mmap_mode="r") for name in ("dense", "sparse", "label")]
        self.num_rows = int(self._arrays[2].shape[0])

    def rows(self, start: int, stop: int) -> Batch:
        return Batch(*(torch.from_numpy(np.array(array[start:stop])) for array in self._arrays))


class NpyDatasetWriter:
    """Writes N rows to dense.npy / sparse.npy / label.npy chunk by chunk, then spec.json.

    The arrays are written under temporary names and renamed at `close()`, and spec.json is written
    last, so an interrupted write never looks like a complete dataset.
    """

    def __init__(self, directory: str | os.PathLike, spec: DatasetSpec, num_rows: int, metadata: dict | None = None) -> None:
        self.directory, self.spec, self.num_rows = Path(directory), spec, num_rows
        self.metadata = dict(metadata or {})
        self.directory.mkdir(parents=True, exist_ok=True)
        label_shape = (num_rows,) if spec.num_tasks == 1 else (num_rows, spec.num_tasks)
        shapes = {"dense": ((num_rows, spec.num_dense), np.float32), "sparse": ((num_rows, spec.num_sparse), np.int64),
                  "label": (label_shape, np.float32)}
        self._arrays = {
            name: np.lib.format.open_memmap(self.directory / f".{name}.npy.partial", mode="w+", dtype=dtype, shape=shape)
            for name, (shape, dtype) in shapes.items()
        }
        self.rows_written = 0

    def write(self, batch: Batch) -> None:
        """Append the rows of `batch` (checked against the spec)."""
        batch.validate(self.spec)
        stop = self.rows_written + batch.num_rows
        if stop > self.num_rows:
            raise ValueError(f"writing rows up to {stop} into a dataset of {self.num_rows} rows")
        for name, values in zip(("dense", "sparse", "label"), batch):
            self._arrays[name][self.rows_written : stop] = values.cpu().numpy()
        self.rows_written = stop

    def close(self) -> None:
        """Flush, rename the arrays into place and write spec.json.

        Raises:
            ValueError: when fewer rows than announced were written.
        """
        if self.rows_written != self.num_rows:
            raise ValueError(f"wrote {self.rows_written} of {self.num_rows} rows")
        for name, array in self._arrays.items():
            array.flush()
            del array
            os.replace(self.directory / f".{name}.npy.partial", self.directory / f"{name}.npy")
        self._arrays = {}
        atomic_write_json(self.directory / "spec.json", {**self.spec.to_dict(), "num_rows": self.num_rows, "metadata": self.metadata})


def save_npy_dataset(directory: str | os.PathLike, batch: Batch, spec: DatasetSpec, metadata: dict | None = None) -> None:
    """Save in-memory rows as a .npy dataset directory."""
    writer = NpyDatasetWriter(directory, spec, batch.num_rows, metadata)
    writer.write(batch)
    writer.close()


def load_npy_dataset(directory: str | os.PathLike) -> tuple[Batch, DatasetSpec]:
    """Load a .npy dataset directory fully into memory.

    Raises:
        FileNotFoundError: when spec.json is missing (not a dataset, or an interrupted write).
    """
    source = NpyRowSource(directory)
    return source.rows(0, source.num_rows), source.spec


def _read_spec(directory: Path) -> tuple[DatasetSpec, dict]:
    path = directory / "spec.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {directory} is not a complete .npy dataset")
    data = json.loads(path.read_text())
    return DatasetSpec.from_dict(data), dict(data.get("metadata", {}))


def train_eval_split(data: Batch, eval_fraction: float, seed: int = 0) -> tuple[Batch, Batch]:
    """Split rows at random into (train, eval) with `round(N * eval_fraction)` eval rows.

    Raises:
        ValueError: unless 0 < eval_fraction < 1.
    """
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    order = torch.randperm(data.num_rows, generator=order_generator(seed, 0x5EED))
    eval_rows = round(data.num_rows * eval_fraction)
    return data[order[eval_rows:]], data[order[:eval_rows]]

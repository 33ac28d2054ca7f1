"""Batch loaders that keep an accelerator fed, and the on-disk .npy dataset format.

Dim letters: N rows, B batch, F sparse fields, T tasks.

Loaders slice whole tensors (no per-row Python). Their row order depends only on (seed, epoch),
so a resumed run can jump straight to batch k of an epoch: `epoch(epoch, start_batch=k)`.
On CUDA, batches are gathered on the CPU into pinned memory and copied with `non_blocking=True`,
or the whole dataset is put on the device once (`data_on_device=True`).

Data-parallel runs: with `shard=(rank, world_size)` a loader delivers only that rank's contiguous
share of every global batch (the global batch order is the same on every rank), so N processes
see exactly the batches of one process, and a run can resume at batch k on any number of ranks.
Shares differ by at most one row (a last, partial batch); each is a `ShardBatch`, which carries
the global batch's row count so that the trainer can weight the rank's loss.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import logging
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
    "ShardBatch",
    "ShardedSource",
    "shard_bounds",
    "shard_source",
    "NpyRowSource",
    "NpyDatasetWriter",
    "save_npy_dataset",
    "load_npy_dataset",
    "train_eval_split",
    "order_generator",
]

log = logging.getLogger(__name__)


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


class ShardBatch(Batch):
    """One rank's rows of a global batch; `global_rows` is the global batch's row count.

    A subclass (not a field) so that every consumer of `Batch` takes it unchanged; slicing or
    moving it gives a plain `Batch`.
    """

    global_rows: int


def _shard_batch(batch: Batch, global_rows: int) -> ShardBatch:
    shard = ShardBatch(*batch)
    shard.global_rows = int(global_rows)
    return shard


def shard_bounds(rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows [start, stop) of `rank`'s contiguous share of a batch of `rows` rows.

    Example:
        >>> [shard_bounds(5, rank, 2) for rank in range(2)]
        [(0, 2), (2, 5)]
    """
    return rank * rows // world_size, (rank + 1) * rows // world_size


def _check_shard(shard: tuple[int, int] | None, batch_size: int, last_rows: int) -> tuple[int, int] | None:
    """Validated (rank, world_size); `last_rows` is the size of a final partial batch (0: none).

    Raises:
        ValueError: a rank outside [0, world_size), a global batch that does not split evenly, or a
            partial batch with fewer rows than processes (some rank would get none).
    """
    if shard is None:
        return None
    rank, world = (int(value) for value in shard)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {tuple(shard)}")
    if batch_size % world:
        raise ValueError(f"the global batch size {batch_size} does not split evenly over {world} processes; "
                         f"choose a batch size divisible by {world}")
    if 0 < last_rows < world:
        raise ValueError(f"the last batch of each epoch has {last_rows} rows, fewer than the {world} processes "
                         "sharing it; drop it (drop_last=True) or use a row count that leaves at least "
                         f"{world} rows in it")
    return rank, world


class _Sharding:
    """What both loaders share for `shard=(rank, world_size)`."""

    shard: tuple[int, int] | None = None
    batch_size: int

    def _last_rows(self) -> int:
        raise NotImplementedError

    def sharded(self, rank: int, world_size: int):
        """A copy of this loader that delivers only `rank`'s share of each global batch."""
        other = copy.copy(self)
        other.shard = _check_shard((rank, world_size), self.batch_size, self._last_rows())
        return other

    def _share(self, start: int, stop: int) -> slice:
        """This rank's rows of the global batch [start, stop)."""
        if self.shard is None:
            return slice(start, stop)
        low, high = shard_bounds(stop - start, *self.shard)
        return slice(start + low, start + high)

    def _tag(self, batch: Batch, global_rows: int) -> Batch:
        return batch if self.shard is None else _shard_batch(batch, global_rows)


class ShardedSource:
    """Any `BatchSource`'s global batches cut to one rank's share after delivery.

    For sources that cannot shard themselves: every rank still loads whole global batches, so
    prefer a loader's `shard=` (or `sharded()`), which gathers only the rank's rows.

    Raises:
        ValueError: (while iterating) a batch with fewer rows than processes.
    """

    def __init__(self, source: BatchSource, rank: int, world_size: int) -> None:
        _check_shard((rank, world_size), world_size, 0)
        self.source, self.shard = source, (rank, world_size)

    def __len__(self) -> int:
        return len(self.source)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        for batch in self.source.epoch(epoch, start_batch):
            rows = batch.num_rows
            if rows < self.shard[1]:
                raise ValueError(f"a batch of {rows} rows cannot be shared by {self.shard[1]} processes")
            low, high = shard_bounds(rows, *self.shard)
            yield _shard_batch(batch[low:high], rows)


def shard_source(source: BatchSource, rank: int, world_size: int) -> BatchSource:
    """`source` as rank `rank` of `world_size` reads it: a loader's sharded copy, a source already
    sharded for this rank as is, anything else wrapped in `ShardedSource`.

    Raises:
        ValueError: `source` is sharded for another rank or world size, or cannot be split evenly.
    """
    shard = getattr(source, "shard", None)
    if shard is not None:
        if tuple(shard) != (rank, world_size):
            raise ValueError(f"the training data is sharded as {tuple(shard)} (rank, world_size) but this "
                             f"process is rank {rank} of {world_size}; pass it unsharded and train() shards it")
        return source
    if isinstance(source, _Sharding):
        return source.sharded(rank, world_size)
    log.info("training data of type %s cannot shard itself: every rank loads whole batches", type(source).__name__)
    return ShardedSource(source, rank, world_size)


class BatchLoader(_Sharding):
    """Mini-batches of an in-memory Batch.

    Args:
        data: all rows (N rows).
        batch_size: B.
        shuffle: permute rows each epoch with a generator seeded by (seed, epoch).
        seed: the data-order seed.
        drop_last: drop a final batch smaller than B.
        device: where batches are delivered.
        data_on_device: copy `data` to `device` once (fastest when it fits).
        shard: (rank, world_size): deliver only that rank's share of each batch (see the module doc).

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
        shard: tuple[int, int] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.data = data.to(self.device) if data_on_device else data
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.shard = _check_shard(shard, batch_size, self._last_rows())

    def _last_rows(self) -> int:
        return 0 if self.drop_last else self.data.num_rows % self.batch_size

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
            start = index * self.batch_size
            stop = min(start + self.batch_size, self.data.num_rows)
            rows = self._share(start, stop)
            batch = self.data[rows] if order is None else self.data[order[rows]]
            yield self._tag(_deliver(batch, self.device), stop - start)


class StreamingLoader(_Sharding):
    """Mini-batches streamed from a RowSource in chunks, for data that does not fit in memory.

    Chunks are read in a (seed, epoch)-shuffled order and rows are shuffled within a chunk; the
    next chunk is read in a background thread while the current one is consumed.

    Args:
        source: anything with `rows(start, stop) -> Batch`.
        num_rows: N, rows to use from the source.
        batch_size: B.
        chunk_rows: rows read at a time (rounded up to a multiple of B).
        shuffle, seed, drop_last, device, shard: as for `BatchLoader` (with `shard`, every rank
            reads whole chunks but delivers only its rows).
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
        shard: tuple[int, int] | None = None,
    ) -> None:
        if batch_size < 1 or num_rows < 0:
            raise ValueError(f"need batch_size >= 1 and num_rows >= 0, got {batch_size} and {num_rows}")
        self.source, self.num_rows, self.batch_size = source, num_rows, batch_size
        self.chunk_rows = max(1, math.ceil(chunk_rows / batch_size)) * batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.device = torch.device(device)
        self._chunk_starts = list(range(0, num_rows, self.chunk_rows))
        self.shard = _check_shard(shard, batch_size, self._last_rows())

    def _last_rows(self) -> int:
        """Chunks hold whole batches, so only the final chunk can end with a partial one."""
        return 0 if self.drop_last else self.num_rows % self.batch_size

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
                    start = index * self.batch_size
                    stop = min(start + self.batch_size, chunk.num_rows)
                    yield self._tag(_deliver(chunk[self._share(start, stop)], self.device), stop - start)


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

"""Data-parallel (DDP) plumbing: the process group from torchrun's environment, a DDP forward that
follows AMGP's shape changes, rank 0's prune plans on every rank, and cross-rank reductions.

Launch with PyTorch's own launcher; every process then calls `init_from_env()` (or `train` finds the
initialised group on its own)::

    python -m torch.distributed.run --standalone --nproc_per_node 2 my_training_script.py

Why the forward wrapper is rebuilt: `DistributedDataParallel` binds its reducer (buckets sized by
the parameters' shapes, autograd hooks on each parameter's gradient accumulator) when it is built.
AMGP surgery gives parameters new shapes and fresh gradient accumulators, so a wrapper built before
a shrink or a grow never hears of the new gradients and stops averaging them (the next step fails
with DDP's misleading "parameters that were not used in producing loss"). `DDPForward` compares a
signature before each forward, the parameters' shapes plus a surgery counter (a grow and a shrink
to the same widths at one phase boundary keep the shapes but still replace the accumulators), and
rebuilds the wrapper when it changed; the constructor also broadcasts rank 0's parameters and
buffers, so ranks stay identical after a growth.

Single process (WORLD_SIZE unset or 1) everything here is a no-op.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DistEnv", "DDPForward", "init_from_env", "current_env", "is_distributed", "broadcast_plan",
           "all_reduce_sum", "barrier", "shutdown", "launched_by_torchrun"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistEnv:
    """Where this process stands in a data-parallel run.

    Attributes:
        rank: global rank (0 writes files).
        world_size: number of processes (1: no process group).
        local_rank: rank on this machine (picks the GPU).
        device: this process's training device (``cuda:local_rank`` on GPUs).
        backend: "nccl", "gloo" or None without a process group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer; launch with torchrun, "
                         "which sets it") from None


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun (or anything that sets WORLD_SIZE)."""
    return os.environ.get("WORLD_SIZE") not in (None, "")


def _pick_device(device: str | torch.device | None, local_rank: int, world_size: int) -> torch.device:
    """The process's device: the GPU of its local rank in a multi-process CUDA run."""
    wanted = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device in (None, "auto") \
        else torch.device(device)
    if wanted.type != "cuda":
        return wanted
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {wanted} requested but torch sees no GPU; use device 'cpu' (gloo backend)")
    if world_size > 1 or wanted.index is None:
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise RuntimeError(f"LOCAL_RANK {local_rank} has no GPU: {count} visible; start at most {count} "
                               "processes per machine (--nproc_per_node)")
        wanted = torch.device("cuda", local_rank)
    torch.cuda.set_device(wanted)
    return wanted


def init_from_env(device: str | torch.device | None = None, backend: str | None = None,
                  timeout: datetime.timedelta | None = None) -> DistEnv:
    """Join the process group described by torchrun's RANK, WORLD_SIZE and LOCAL_RANK.

    Args:
        device: "cpu", "cuda" or None/"auto" (CUDA when available); on CUDA each process takes
            the GPU of its local rank and makes it current.
        backend: default nccl on CUDA, gloo on the CPU.
        timeout: collective timeout (torch's default when None).
    Returns:
        The `DistEnv`; WORLD_SIZE unset or 1 gives a single-process one and no process group.
    Raises:
        ValueError: RANK/WORLD_SIZE out of range or MASTER_ADDR/MASTER_PORT missing (not launched by torchrun).
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world > 1 and not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world})")
    chosen = _pick_device(device, local, world)
    if world <= 1 and not dist.is_initialized():
        return DistEnv(0, 1, 0, chosen, None)
    if not dist.is_initialized():
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
        if missing:
            raise ValueError(f"WORLD_SIZE={world} but {' and '.join(missing)} unset; launch with "
                             f"python -m torch.distributed.run --nproc_per_node {world} ...")
        backend = backend or ("nccl" if chosen.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                **({"timeout": timeout} if timeout is not None else {}))
    return current_env(chosen)


def current_env(device: str | torch.device | None = None) -> DistEnv:
    """The `DistEnv` of the already initialised process group (single-process if there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistEnv(device=torch.device(device or "cpu"))
    backend = str(dist.get_backend())
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return DistEnv(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", dist.get_rank()),
                   torch.device(device), backend)


def is_distributed() -> bool:
    """An initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shutdown() -> None:
    """Destroy the process group if one is initialised (quietens torch's exit warnings)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op single-process); on NCCL, on this process's GPU."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def broadcast_plan(keep: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """Rank 0's keep plan on every rank (the plan itself single-process).

    Every rank scores channels on its own copy of the weights; float differences in the scores
    (e.g. Taylor scores of all-reduced gradients) could rank near-ties differently, and ranks
    that prune different channels no longer hold the same model.
    """
    plan = {str(k): [int(i) for i in v] for k, v in keep.items()}
    if not is_distributed():
        return plan
    box = [plan]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over ranks (in place, also returned; unchanged single-process)."""
    if is_distributed():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


# -- the DDP forward ---------------------------------------------------------------------------------
Forward = Callable[[nn.Module, Any], torch.Tensor]
SPARSE_AS_DENSE_BACKENDS = {"nccl"}  # their all-reduce refuses sparse tensors (NCCL in torch 2.11)


def allreduce_sparse_as_dense(group, bucket):  # no annotations: DDP checks them, and they are strings here
    """DDP communication hook (``group``: a ProcessGroup or None, ``bucket``: a dist.GradBucket;
    returns a Future of the averaged gradient): dense buckets are averaged as DDP does; a sparse
    embedding gradient is averaged as a dense (R, D) tensor and handed back row-sparse, for the
    sparse optimizers.

    For backends without sparse all-reduce (NCCL); it moves whole tables, so it costs a dense
    table's all-reduce per step.
    """
    grad = bucket.buffer()
    if not grad.is_sparse:
        return default_hooks.allreduce_hook(group, bucket)
    world = dist.get_world_size(group)
    dense = grad.to_dense().div_(world)
    work = dist.all_reduce(dense, group=group, async_op=True)
    sparse_dim = grad.sparse_dim()
    return work.get_future().then(lambda future: future.value()[0].to_sparse(sparse_dim))


def sparse_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Weights of nn.Embedding / nn.EmbeddingBag modules with sparse=True (no duplicates)."""
    found: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.sparse and module.weight.requires_grad:
            found.setdefault(id(module.weight), module.weight)
    return list(found.values())


class _ForwardModule(nn.Module):
    """What DDP wraps: the trained model, running ``forward(model, batch)``.

    ``sparse_tables`` holds ``nn.Embedding(sparse=True)`` shells around the sparse tables and comes
    first: DDP keeps the first module it meets a shared parameter in and expects a sparse gradient
    only when that module is a sparse Embedding, which a graph module's plain attribute is not.
    """

    def __init__(self, model: nn.Module, forward: Forward, sparse: Sequence[nn.Parameter]) -> None:
        super().__init__()
        self.sparse_tables = nn.ModuleList()
        for weight in sparse:
            shell = nn.Embedding(1, 1, sparse=True)
            shell.weight = weight
            self.sparse_tables.append(shell)
        self.model = model
        self._run = forward

    def forward(self, batch: Any) -> torch.Tensor:
        return self._run(self.model, batch)


def _signature(model: nn.Module, version: Callable[[], Any] | None) -> tuple:
    """Identity and shape of every parameter and buffer, and the caller's surgery counter."""
    shapes = tuple((id(t), tuple(t.shape)) for t in (*model.parameters(), *model.buffers()))
    return shapes, None if version is None else version()


class DDPForward:
    """``forward(model, batch)`` through a `DistributedDataParallel` wrapper that follows surgery.

    The wrapper is built at the first call and rebuilt whenever a parameter or buffer changed
    shape or identity, or ``version()`` changed, since (AMGP's shrink and grow), or after
    `invalidate()`; building is a collective (rank 0's parameters and buffers are broadcast), so
    every rank must call it at the same steps, which the trainer does.

    Args:
        model: the module whose parameters the optimizers step; for AMGP the eager model, whose
            parameters the graph module that ``forward`` runs shares.
        forward: ``forward(model, batch) -> logits``, e.g. ``AmgpHook.forward``.
        sparse: parameters that get sparse gradients (default: sparse Embedding weights of ``model``);
            on NCCL they are all-reduced as dense tensors (`allreduce_sparse_as_dense`).
        version: a surgery counter (any comparable value) that changes whenever parameters get new
            data in place; `train` counts the ``surgeries`` its hooks record (``AmgpHook`` does).
        on_build: called with the seconds each build took (`train` logs a ``ddp_build`` record).
        ddp_options: more `DistributedDataParallel` arguments (``find_unused_parameters``, ``bucket_cap_mb``...).
    Attributes:
        builds: wrappers built so far; build_seconds: seconds each build took.
    """

    def __init__(self, model: nn.Module, forward: Forward, *, sparse: Sequence[nn.Parameter] | None = None,
                 version: Callable[[], Any] | None = None, ddp_options: Mapping[str, Any] | None = None,
                 on_build: Callable[[float], None] | None = None) -> None:
        self.model = model
        self.on_build = on_build
        self.forward = forward
        self.version = version
        self.sparse = sparse
        self.ddp_options = dict(ddp_options or {})
        self.ddp: DistributedDataParallel | None = None
        self._signature: tuple | None = None
        self.builds = 0
        self.build_seconds: list[float] = []

    def invalidate(self) -> None:
        """Rebuild before the next forward (after surgery that keeps shapes and identities)."""
        self._signature = None

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        if model is not self.model:
            raise ValueError("DDPForward was built for another model; build one per trained model")
        signature = _signature(model, self.version)
        if self.ddp is None or signature != self._signature:
            self._build(signature)
        if self.ddp.training != model.training:
            self.ddp.train(model.training)
        return self.ddp(batch)

    def _build(self, signature: tuple) -> None:
        began = time.perf_counter()
        self.ddp = None  # drop the old reducer (and its hooks on dead gradient accumulators) first
        sparse = sparse_parameters(self.model) if self.sparse is None else list(self.sparse)
        module = _ForwardModule(self.model, self.forward, sparse)
        device = next(self.model.parameters()).device
        options = {"device_ids": [device.index] if device.type == "cuda" else None, **self.ddp_options}
        self.ddp = DistributedDataParallel(module, **options)
        if sparse and dist.get_backend() in SPARSE_AS_DENSE_BACKENDS:
            self.ddp.register_comm_hook(None, allreduce_sparse_as_dense)
        self._signature = signature
        self.builds += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.build_seconds.append(time.perf_counter() - began)
        log.info("built DistributedDataParallel wrapper #%d (%.3f s)", self.builds, self.build_seconds[-1])
        if self.on_build is not None:
            self.on_build(self.build_seconds[-1])

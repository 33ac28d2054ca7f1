"""The dense training loop: sparse-aware optimizers, hooks, metrics, checkpoints and exact resume.

Dim letters: B batch, T tasks.

Embedding tables built with `sparse=True` produce sparse gradients, which Adam and AdamW cannot
apply, so their weights go to a sparse-capable optimizer (SparseAdam, Adagrad or SGD) and every
other parameter to the chosen dense one. `Optimizers.optimizers` lists them, because pruning code
slices each optimizer's per-parameter state in place.

Hooks are objects with any of `on_train_start(ctx)`, `on_step_start(ctx)`, `on_step_end(ctx)`,
`on_eval_start(ctx)`, `on_eval_end(ctx)` (around each evaluation, so a hook that times training can
leave it out), `state_dict()` and `load_state_dict(state)`. Order of a run: build optimizers, `on_train_start`,
then on resume: hooks' `load_state_dict` (a hook may first re-shrink the model so that shapes
match), model and optimizer state, RNG states; then per step: `on_step_start`, forward, backward,
optimizer step, `on_step_end`, logging, evaluation, checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as functional
from torch import nn
from torch.utils import _pytree as pytree
from tqdm import tqdm

from .checkpoint import (
    CHECKPOINT_FORMAT,
    capture_rng_state,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from .config import OptimizerName, SparseOptimizerName, TrainConfig
from .data.batch import Batch
from .data.loader import BatchLoader, BatchSource, shard_source
from .distributed import (
    DDPForward,
    DistEnv,
    all_reduce_sum,
    barrier,
    current_env,
    is_distributed,
    sparse_parameters,
)
from .metrics import MetricsLogger, ctr_metrics
from .lr_schedule import lr_factor, set_learning_rates
from .optim import RowWiseAdagrad

__all__ = ["Optimizers", "TrainContext", "TrainResult", "build_optimizers", "default_forward", "evaluate", "logits_of", "train"]

logger = logging.getLogger(__name__)
Forward = Callable[[nn.Module, Batch], torch.Tensor]


def default_forward(model: nn.Module, batch: Batch) -> torch.Tensor:
    """`model(batch.dense, batch.sparse)`: logits (B,) or (B, T). A model taking other inputs (a dict,
    nested tuples, jagged ids) gets them from an input map: `train(..., example_inputs=...,
    input_map=...)` (see `amgp_fx.batch_inputs`)."""
    return model(batch.dense, batch.sparse)


class Optimizers:
    """Several optimizers stepped as one (dense parameters, sparse embedding tables).

    Attributes:
        optimizers: the torch optimizers, in a fixed order.
        names: a name per optimizer ("dense", "sparse"), checked when loading state.
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer], names: Sequence[str]) -> None:
        if len(optimizers) != len(names):
            raise ValueError(f"{len(optimizers)} optimizers but {len(names)} names")
        self.optimizers = list(optimizers)
        self.names = list(names)

    def __iter__(self) -> Iterator[torch.optim.Optimizer]:
        return iter(self.optimizers)

    def __len__(self) -> int:
        return len(self.optimizers)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load states saved by `state_dict`.

        Raises:
            ValueError: when the saved optimizers are not the same kinds as these.
        """
        if list(state["names"]) != self.names:
            raise ValueError(f"saved optimizers {state['names']} do not match these optimizers {self.names}")
        for optimizer, optimizer_state in zip(self.optimizers, state["optimizers"]):
            optimizer.load_state_dict(optimizer_state)


_SPARSE_COUNTERPART = {
    OptimizerName.SGD: SparseOptimizerName.SGD,
    OptimizerName.ADAM: SparseOptimizerName.SPARSE_ADAM,
    OptimizerName.ADAMW: SparseOptimizerName.SPARSE_ADAM,
    OptimizerName.ADAGRAD: SparseOptimizerName.ADAGRAD,
}


def _sparse_optimizer(tables: list[nn.Parameter], name: SparseOptimizerName, lr: float,
                      momentum: float) -> torch.optim.Optimizer:
    if name is SparseOptimizerName.SGD:
        return torch.optim.SGD(tables, lr=lr, momentum=momentum)
    if name is SparseOptimizerName.ADAGRAD:
        return torch.optim.Adagrad(tables, lr=lr)
    if name is SparseOptimizerName.ROWWISE_ADAGRAD:
        return RowWiseAdagrad(tables, lr=lr)
    return torch.optim.SparseAdam(tables, lr=lr)


def build_optimizers(model: nn.Module, config: TrainConfig) -> Optimizers:
    """A dense optimizer for ordinary parameters and a sparse-capable one for sparse embeddings.

    Sparse counterparts unless `config.sparse_optimizer` names one: sgd -> SGD, adam/adamw ->
    SparseAdam, adagrad -> Adagrad (row-wise Adagrad on request, see `amgp_fx.optim`). Weight decay
    is not applied to sparse embeddings (torch's sparse updates do not support it).

    Returns:
        `Optimizers` with names ["dense", "sparse"], leaving out one with no parameters.
    """
    sparse = sparse_parameters(model)
    sparse_ids = {id(parameter) for parameter in sparse}
    dense = [parameter for parameter in model.parameters() if parameter.requires_grad and id(parameter) not in sparse_ids]
    name = OptimizerName(config.optimizer)
    sparse_lr = config.sparse_lr if config.sparse_lr is not None else config.lr
    optimizers, names = [], []
    if dense:
        if name is OptimizerName.SGD:
            optimizer = torch.optim.SGD(dense, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        elif name is OptimizerName.ADAM:
            optimizer = torch.optim.Adam(dense, lr=config.lr, weight_decay=config.weight_decay)
        elif name is OptimizerName.ADAMW:
            optimizer = torch.optim.AdamW(dense, lr=config.lr, weight_decay=config.weight_decay)
        else:
            optimizer = torch.optim.Adagrad(dense, lr=config.lr, weight_decay=config.weight_decay)
        optimizers.append(optimizer)
        names.append("dense")
    if sparse:
        if config.weight_decay:
            logger.info("weight_decay=%g is not applied to %d sparse embedding tables", config.weight_decay, len(sparse))
        optimizers.append(_sparse_optimizer(sparse, config.sparse_optimizer or _SPARSE_COUNTERPART[name], sparse_lr,
                                            config.momentum))
        names.append("sparse")
    return Optimizers(optimizers, names)


@dataclasses.dataclass
class TrainContext:
    """What hooks see. `step` counts completed optimizer steps (0 before the first)."""

    step: int
    epoch: int
    total_steps: int
    model: nn.Module
    optimizers: Optimizers
    config: TrainConfig
    device: torch.device
    logger: MetricsLogger
    forward: Forward
    batch: Batch | None = None
    loss: torch.Tensor | None = None
    resumed_from: int | None = None


@dataclasses.dataclass
class TrainResult:
    """Outcome of `train`.

    Attributes:
        step: optimizer steps completed.
        metrics: the last evaluation ({"auc", "logloss", ...}; empty without eval data).
        train_loss: mean training loss of the last logging window.
        history: every metrics record of the run (including those before a resume).
        wall_clock_s: seconds spent in this call.
        samples_per_s: training rows per second in this call.
        checkpoint: path of the last checkpoint written, if any.
    """

    step: int
    metrics: dict[str, float]
    train_loss: float
    history: list[dict[str, Any]]
    wall_clock_s: float
    samples_per_s: float
    checkpoint: str | None = None


def logits_of(output: Any) -> torch.Tensor:
    """The model's output as one logits tensor: itself, or a multi-task model's tuple, list or dict
    of per-task logits ((B,) or (B, k) each) side by side as (B, T), tasks in the order of the
    output's leaves (a dict's in its key order)."""
    if isinstance(output, torch.Tensor):
        return output
    leaves = pytree.tree_leaves(output)
    if not leaves or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in leaves):
        raise ValueError(f"model returned {type(output).__name__} of {[type(t).__name__ for t in leaves]}, not "
                         "logits: return a (B,) or (B, T) tensor, or a tuple or dict of per-task (B,) tensors")
    return leaves[0] if len(leaves) == 1 else torch.cat([t.reshape(t.shape[0], -1) for t in leaves], dim=1)


def _loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    logits = logits_of(logits)
    if logits.shape != label.shape:
        if logits.numel() != label.numel():
            raise ValueError(f"model returned logits {tuple(logits.shape)} for labels {tuple(label.shape)}")
        logits = logits.reshape(label.shape)
    return functional.binary_cross_entropy_with_logits(logits, label)  # mean over rows and tasks


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Batch | BatchSource,
    *,
    forward: Forward | None = None,
    batch_size: int = 8192,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """AUC and logloss of `model` on `data` (per task too for (N, T) labels), in eval mode.

    Returns:
        See `amgp_fx.metrics.ctr_metrics`.
    """
    forward = forward or default_forward
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loader = BatchLoader(data, batch_size, device=device) if isinstance(data, Batch) else data
    was_training = model.training
    model.eval()
    logits_parts, label_parts = [], []
    try:
        for batch in loader.epoch(0):
            logits = logits_of(forward(model, batch))
            logits_parts.append(logits.reshape(batch.label.shape).float().cpu())
            label_parts.append(batch.label.cpu())
    finally:
        model.train(was_training)
    if not logits_parts:
        raise ValueError("evaluation data has no rows")
    return ctr_metrics(torch.cat(label_parts), torch.cat(logits_parts))


def _call_hooks(hooks: Sequence[Any], method: str, ctx: TrainContext) -> None:
    for hook in hooks:
        function = getattr(hook, method, None)
        if function is not None:
            function(ctx)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_resumable(saved: dict[str, Any], config: TrainConfig) -> None:
    for name in ("seed", "batch_size", "optimizer", "shuffle"):
        saved_value, value = saved.get(name), config.to_dict()[name]
        if saved_value != value:
            raise ValueError(f"cannot resume: checkpoint has {name}={saved_value!r}, config has {value!r} (data order or optimizer state would differ)")


def train(
    model: nn.Module,
    train_data: Batch | BatchSource,
    eval_data: Batch | BatchSource | None,
    config: TrainConfig,
    *,
    hooks: Sequence[Any] = (),
    forward: Forward | None = None,
    progress: bool = True,
    distributed: bool | None = None,
    ddp_options: Mapping[str, Any] | None = None,
    example_inputs: Any = None,
    input_map: str | Mapping[str, str] | None = None,
) -> TrainResult:
    """Train `model` with BCE-with-logits loss; evaluate, log and checkpoint as `config` says.

    Data-parallel (an initialised process group, see `amgp_fx.distributed`): `config.batch_size`
    is the global batch and each rank trains on its contiguous share of every global batch, so N
    processes take the steps one process would. The forward runs through `DDPForward` (rebuilt
    after every AMGP shrink and grow); the logged loss is averaged over ranks at logging steps
    only; rank 0 alone writes metrics, the progress bar and checkpoints, and the others wait for
    each checkpoint; every rank evaluates the whole eval set on its unwrapped model (the same
    numbers everywhere, no collectives). Checkpoints hold no per-rank state, so a run resumes on
    any number of processes.

    Args:
        model: takes `forward(model, batch)` to logits (B,) or (B, T); moved to `config.device`.
        train_data: in-memory rows (a Batch, batched and shuffled by (seed, epoch)) or a loader
            with `epoch(epoch, start_batch)` and `len()`.
        eval_data: rows or loader for AUC/logloss, or None.
        config: see `TrainConfig`.
        hooks: step hooks (see the module docstring).
        forward: `forward(model, batch) -> logits`; default `model(batch.dense, batch.sparse)`, or with
            `example_inputs` the model's inputs built from each batch by `input_map`.
        example_inputs: the model's positional arguments (any pytree of tensors: a dict, nested
            tuples, a KeyedJaggedTensor-like node) that `input_map` is bound to.
        input_map: `"PATH=SOURCE; ..."` (`amgp_fx.batch_inputs`): which dense/sparse columns of a
            batch each input gets; None: float inputs take the dense columns in order, integer
            inputs the sparse ones.
        progress: show a tqdm bar with loss and samples/s.
        distributed: None: data-parallel when a process group of more than one process is
            initialised; True: require one; False: train this process alone.
        ddp_options: more `DistributedDataParallel` arguments (e.g. ``find_unused_parameters``).

    Returns:
        A `TrainResult`.

    Raises:
        ValueError: for training data with no batches, logits whose size does not match the labels,
            or a checkpoint made with another seed, batch size, optimizer or shuffle setting;
            data-parallel: a batch size not divisible by the number of processes, or
            ``distributed=True`` without a process group.
    """
    if forward is None and (example_inputs is not None or input_map is not None):
        from .batch_inputs import batch_forward

        forward = batch_forward(input_map, example_inputs)
    forward = forward or default_forward
    env = _process_group(distributed, torch.device(config.device), config.batch_size)
    device = env.device
    _seed_everything(config.seed)
    model.to(device)
    model.train()
    optimizers = build_optimizers(model, config)
    if isinstance(train_data, Batch):
        train_data = BatchLoader(train_data, config.batch_size, shuffle=config.shuffle, seed=config.seed,
                                 device=device, data_on_device=config.data_on_device)
    if isinstance(eval_data, Batch):
        eval_data = BatchLoader(eval_data, config.eval_batch_size or config.batch_size, device=device,
                                data_on_device=config.data_on_device)
    if env.distributed:
        train_data = shard_source(train_data, env.rank, env.world_size)
    steps_per_epoch = len(train_data)
    if steps_per_epoch == 0:
        raise ValueError("training data has no batches")
    total_steps = config.steps if config.steps is not None else config.epochs * steps_per_epoch
    metrics_logger = MetricsLogger(config.metrics_path if env.is_main else None)
    ctx = TrainContext(0, 0, total_steps, model, optimizers, config, device, metrics_logger, forward)
    step_forward = _step_forward(model, forward, hooks, ctx, ddp_options) if env.distributed else forward
    saved = None
    if config.resume and (path := latest_checkpoint(config.checkpoint_dir)) is not None:
        saved = load_checkpoint(path)
        _check_resumable(saved["config"], config)
        ctx.step = ctx.resumed_from = saved["step"]
        ctx.epoch = saved["step"] // steps_per_epoch
        logger.info("resuming from %s at step %d", path, saved["step"])
    _call_hooks(hooks, "on_train_start", ctx)
    window = {"loss_sum": 0.0, "steps": 0, "samples": 0}
    if saved is not None:
        _restore(saved, hooks, model, optimizers)
        metrics_logger.truncate_after(saved["step"])
        window = dict(saved["log_window"])
    elif env.is_main:
        if config.metrics_path is not None:
            metrics_logger.truncate_after(-1)  # a fresh run starts a fresh metrics file
        for stale in list_checkpoints(config.checkpoint_dir) if config.checkpoint_dir is not None else []:
            stale.unlink(missing_ok=True)  # an earlier run's: a resume would pick its higher step

    step, last_checkpoint, eval_metrics, train_loss = ctx.step, None, {}, float("nan")
    epoch, batch_index = divmod(step, steps_per_epoch)
    batches = train_data.epoch(epoch, batch_index)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    rows_since_flush = 0
    run_start = window_start = time.perf_counter()
    run_samples = 0
    bar = tqdm(total=total_steps, initial=step, disable=not progress or not env.is_main, unit="step",
               dynamic_ncols=True)
    try:
        while step < total_steps:
            batch = next(batches, None)
            if batch is None:
                epoch += 1
                batches = train_data.epoch(epoch)
                continue
            ctx.step, ctx.epoch, ctx.batch = step, epoch, batch
            _call_hooks(hooks, "on_step_start", ctx)
            set_learning_rates(optimizers, lr_factor(step, total_steps, config.lr_schedule,
                                                     warmup_steps=min(config.lr_warmup_steps, total_steps),
                                                     final_ratio=config.lr_final_ratio))
            optimizers.zero_grad(set_to_none=True)
            loss = _loss(step_forward(model, batch), batch.label)
            weight = _shard_weight(batch, env)
            (loss if weight is None else loss * weight).backward()
            optimizers.step()
            step += 1
            ctx.step, ctx.loss = step, loss.detach()
            loss_sum += ctx.loss if weight is None else ctx.loss * weight
            rows_since_flush += batch.num_rows
            window["steps"] += 1
            bar.update(1)
            _call_hooks(hooks, "on_step_end", ctx)
            finished = step == total_steps
            if (config.log_every and step % config.log_every == 0) or finished:
                run_samples += _flush(window, loss_sum, rows_since_flush, env)
                rows_since_flush = 0
                now = time.perf_counter()
                train_loss = window["loss_sum"] / max(window["steps"], 1)
                record = {"kind": "train", "step": step, "epoch": epoch, "loss": train_loss,
                          "samples_per_s": window["samples"] / max(now - window_start, 1e-9),
                          "wall_clock_s": now - run_start}
                metrics_logger.log(record)
                bar.set_postfix(loss=f"{train_loss:.4f}", samples_per_s=f"{record['samples_per_s']:.0f}")
                window, window_start = {"loss_sum": 0.0, "steps": 0, "samples": 0}, now
            if eval_data is not None and ((config.eval_every and step % config.eval_every == 0) or finished):
                _call_hooks(hooks, "on_eval_start", ctx)
                eval_metrics = evaluate(model, eval_data, forward=forward, device=device,
                                        batch_size=config.eval_batch_size or config.batch_size)
                _call_hooks(hooks, "on_eval_end", ctx)
                metrics_logger.log({"kind": "eval", "step": step, "epoch": epoch, **eval_metrics,
                                    "wall_clock_s": time.perf_counter() - run_start})
            if config.checkpoint_dir is not None and ((config.checkpoint_every and step % config.checkpoint_every == 0) or finished):
                run_samples += _flush(window, loss_sum, rows_since_flush, env)
                rows_since_flush = 0
                if env.is_main:
                    last_checkpoint = _save(config, step, steps_per_epoch, model, optimizers, hooks, window)
                barrier()  # no rank runs ahead of (or resumes from) a half-written checkpoint
    finally:
        bar.close()
        metrics_logger.close()
    wall_clock = time.perf_counter() - run_start
    return TrainResult(step, eval_metrics, train_loss, list(metrics_logger.records), wall_clock,
                       run_samples / max(wall_clock, 1e-9), None if last_checkpoint is None else str(last_checkpoint))


def _process_group(distributed: bool | None, device: torch.device, batch_size: int) -> DistEnv:
    """This process's place in data-parallel training (a one-process `DistEnv` when there is none).

    Raises:
        ValueError: ``distributed=True`` without a process group, a batch size the ranks cannot
            split evenly, or an NCCL group asked to train on the CPU.
    """
    if distributed is False or (distributed is None and not is_distributed()):
        return DistEnv(device=device)
    if not is_distributed():
        raise ValueError("train(distributed=True) needs an initialised process group of more than one process; "
                         "launch with torchrun and call amgp_fx.distributed.init_from_env() first")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    env = current_env(device)
    if env.backend == "nccl" and device.type != "cuda":
        raise ValueError(f"the process group uses NCCL, which cannot reduce {device.type} tensors; train with "
                         "config.device='cuda' or init the group with backend 'gloo'")
    if batch_size % env.world_size:
        raise ValueError(f"the global batch size {batch_size} does not split evenly over {env.world_size} "
                         f"processes; choose a batch size divisible by {env.world_size}")
    return env


def _step_forward(model: nn.Module, forward: Forward, hooks: Sequence[Any], ctx: TrainContext,
                  ddp_options: Mapping[str, Any] | None) -> DDPForward:
    """The training forward through DDP; each (re)build is logged as a ``ddp_build`` record."""

    def log_build(seconds: float) -> None:
        ctx.logger.log({"kind": "ddp_build", "step": ctx.step, "seconds": seconds})

    return DDPForward(model, forward, sparse=sparse_parameters(model), version=lambda: _surgeries(hooks),
                      ddp_options=ddp_options, on_build=log_build)


def _surgeries(hooks: Sequence[Any]) -> int:
    """Surgeries recorded by the hooks (``AmgpHook.surgeries``): each one replaces parameter data
    and gradient accumulators, even when a grow and a shrink at one step restore the shapes."""
    return sum(len(getattr(hook, "surgeries", ())) for hook in hooks)


def _shard_weight(batch: Batch, env: DistEnv) -> float | None:
    """``rows * world_size / global_rows`` of a rank's share, or None when the shares are equal.

    DDP averages the ranks' gradients with equal weights; a rank holding more rows of a partial
    (last) batch must count for more, so that the step equals one-process training on the batch.
    """
    if not env.distributed:
        return None
    global_rows = getattr(batch, "global_rows", None)
    if global_rows is None or batch.num_rows * env.world_size == global_rows:
        return None
    return batch.num_rows * env.world_size / global_rows


def _flush(window: dict[str, Any], loss_sum: torch.Tensor, rows: int, env: DistEnv) -> int:
    """Move the loss and rows since the last flush (over all ranks) into ``window``; zero ``loss_sum``.

    One all-reduce, at logging and checkpoint steps only; the window is then the same on every
    rank, so a checkpoint's log window is too. Returns the rows added.
    """
    if env.distributed:
        totals = all_reduce_sum(torch.stack([loss_sum, loss_sum.new_tensor(float(rows))]))
        loss, rows = totals[0].item() / env.world_size, int(totals[1].item())
    else:
        loss = loss_sum.item()
    loss_sum.zero_()
    window["loss_sum"] += loss
    window["samples"] += rows
    return rows


def _save(config: TrainConfig, step: int, steps_per_epoch: int, model: nn.Module, optimizers: Optimizers,
          hooks: Sequence[Any], window: dict[str, Any]) -> Any:
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "epoch": step // steps_per_epoch,
        "batch_in_epoch": step % steps_per_epoch,
        "model": model.state_dict(),
        "optimizers": optimizers.state_dict(),
        "hooks": [hook.state_dict() if hasattr(hook, "state_dict") else None for hook in hooks],
        "rng": capture_rng_state(),
        "log_window": dict(window),
        "config": config.to_dict(),
    }
    path = save_checkpoint(checkpoint_path(config.checkpoint_dir, step), state)
    prune_checkpoints(config.checkpoint_dir, config.keep_checkpoints)
    logger.info("saved checkpoint %s", path)
    return path


def _restore(saved: dict[str, Any], hooks: Sequence[Any], model: nn.Module, optimizers: Optimizers) -> None:
    hook_states = saved["hooks"]
    if len(hook_states) != len(hooks):
        raise ValueError(f"checkpoint has state for {len(hook_states)} hooks, this run has {len(hooks)}")
    for hook, hook_state in zip(hooks, hook_states):
        if hook_state is not None:
            hook.load_state_dict(hook_state)
    model.load_state_dict(saved["model"])
    optimizers.load_state_dict(saved["optimizers"])
    restore_rng_state(saved["rng"])

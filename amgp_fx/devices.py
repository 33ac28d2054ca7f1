"""``--device`` of ``amgp-compress train``: parse the text (no torch), then check it against the GPUs
torch sees, before any work starts or any file is written.

Accepted: ``cpu``, ``cuda``, ``cuda:N`` (a GPU index) and ``auto`` (CUDA when torch sees a GPU, or
with ``--nproc N`` at least N GPUs; else the CPU). With ``--nproc N`` on CUDA each process trains on
``cuda:LOCAL_RANK`` (see `amgp_fx.distributed.init_from_env`), so the device is plain ``cuda``.

Example:
    >>> parse_device(" CUDA:01 "), parse_device("auto")
    ('cuda:1', 'auto')
    >>> resolve_device("auto", cuda_count=0), resolve_device("cuda", nproc=2, cuda_count=4)
    ('cpu', 'cuda')
"""
from __future__ import annotations

import logging
import re

from amgp_fx.errors import UsageError

__all__ = ["DEVICE_CHOICES", "cuda_device_count", "module_device", "parse_device", "resolve_device", "to_device"]

log = logging.getLogger(__name__)

DEVICE_CHOICES = "cpu, cuda, cuda:N (N = a GPU index) or auto"
_DEVICE = re.compile(r"cpu|auto|cuda(?::(\d+))?")


def parse_device(text: str) -> str:
    """``--device`` text -> ``"cpu"``, ``"auto"``, ``"cuda"`` or ``"cuda:N"`` (case and spaces ignored).

    Raises:
        UsageError: anything else, e.g. ``gpu0`` or ``cuda:x``.
    """
    value = str(text).strip().lower()
    match = _DEVICE.fullmatch(value)
    if match is None:
        raise UsageError(f"--device {text!r} is not a device", f"Pass {DEVICE_CHOICES}, e.g. --device cuda:0")
    return f"cuda:{int(match.group(1))}" if match.group(1) is not None else value


def cuda_device_count() -> int:
    """GPUs torch can use here (0 without a CUDA build, a driver or a visible GPU)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _no_gpu_reason() -> str:
    import torch

    if torch.version.cuda is None:
        return "this torch build has no CUDA support"
    return "torch.cuda.is_available() is False; check the driver and CUDA_VISIBLE_DEVICES"


def resolve_device(text: str, nproc: int = 1, *, cuda_count: int | None = None) -> str:
    """The device training uses: ``"cpu"``, ``"cuda"``/``"cuda:N"`` for one process, or ``"cuda"`` for
    ``nproc`` > 1 processes (each then takes ``cuda:LOCAL_RANK``, with the NCCL backend).

    Args:
        text: the ``--device`` value.
        nproc: processes on this machine (``--nproc``, or torchrun's LOCAL_WORLD_SIZE in a worker).
        cuda_count: GPUs visible (default: ask torch; tests pass a number).
    Raises:
        UsageError: a malformed device, CUDA without a GPU, an index beyond the GPUs torch sees,
            fewer GPUs than processes, or one GPU index for several processes.
    """
    device = parse_device(text)
    if device == "cpu":
        return "cpu"
    count = cuda_device_count() if cuda_count is None else cuda_count
    nproc = max(1, int(nproc))
    if device == "auto":
        if count >= nproc:
            log.info("--device auto: training on CUDA (%d GPUs visible)", count)
            return "cuda"
        if count:
            log.warning("--device auto: %d processes but only %d GPU(s) visible; training on the CPU "
                        "(pass --nproc %d to use the GPUs)", nproc, count, count)
        else:
            log.info("--device auto: no GPU visible; training on the CPU")
        return "cpu"
    if count == 0:
        reason = _no_gpu_reason() if cuda_count is None else "no GPU visible"
        raise UsageError(f"--device {device} but torch sees no GPU ({reason})",
                         "Pass --device cpu, or --device auto to use a GPU only when there is one")
    index = None if device == "cuda" else int(device.partition(":")[2])
    if nproc > 1:
        if index is not None:
            raise UsageError(f"--device {device} names one GPU, but --nproc {nproc} trains one process per GPU "
                             f"(cuda:0 to cuda:{nproc - 1})",
                             "Pass --device cuda, and choose the GPUs with CUDA_VISIBLE_DEVICES")
        if count < nproc:
            raise UsageError(f"--nproc {nproc} --device cuda needs {nproc} GPUs, one per process, but torch sees "
                             f"{count}", f"Pass --nproc {count} or fewer, or --device cpu")
        return "cuda"
    if index is not None and index >= count:
        visible = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise UsageError(f"--device {device} but torch sees {count} GPU{'s' if count > 1 else ''} ({visible})",
                         f"Pass a GPU index below {count}, e.g. --device cuda:0, or check CUDA_VISIBLE_DEVICES")
    return device


def module_device(module) -> "torch.device":
    """The device of ``module``'s first parameter or buffer (the CPU for a module with neither): where
    the tensors that feed it must live."""
    import torch

    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def to_device(inputs, device):
    """``inputs`` (any pytree of tensors: tuple, dict, nested lists) with every tensor on ``device``."""
    import torch
    from torch.utils import _pytree as pytree

    return pytree.tree_map(lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, inputs)

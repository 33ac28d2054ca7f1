"""SIGINT and SIGTERM become exceptions, so that a killed command cleans up like a failed one.

Python turns Ctrl-C into ``KeyboardInterrupt``, but SIGTERM (``kill``, a job scheduler's time
limit, ``docker stop``) ends the process at once: no ``finally`` runs, and the staging folder, a
half-written ``train_metrics.jsonl`` and a created output folder stay behind. :func:`handle_signals`
raises :class:`amgp_fx.errors.Terminated` (a ``KeyboardInterrupt``) for SIGTERM instead, so the
same unwinding (``OutputDir.__exit__``, the training clean-up) runs for both. The first signal
ignores further ones, so that a second Ctrl-C cannot cut the clean-up short.
"""
from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

from amgp_fx.errors import Terminated

__all__ = ["handle_signals"]


def _raise(signum: int, frame) -> None:  # noqa: ARG001 - signal handler signature
    """Raise the exception of ``signum`` once; later SIGINT/SIGTERM wait until the clean-up is over."""
    for other in (signal.SIGINT, signal.SIGTERM):
        signal.signal(other, signal.SIG_IGN)
    if signum == signal.SIGTERM:
        raise Terminated("terminated")
    raise KeyboardInterrupt


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """SIGINT -> ``KeyboardInterrupt``, SIGTERM -> ``Terminated`` inside the block; the previous
    handlers are restored after it (a no-op outside the main thread, where handlers cannot be set)."""
    try:
        previous = {signum: signal.signal(signum, _raise) for signum in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread (e.g. main() called from a worker thread)
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

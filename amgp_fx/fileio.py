"""Atomic file writes: a reader never sees a half-written checkpoint, metrics file or report.

Every write goes to a temporary file in the destination's directory (so the final `os.replace`
stays on one filesystem and is atomic), is flushed and fsynced, and only then replaces the
destination. On an exception the temporary file is removed and the old destination is untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "atomic_write_json"]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file that replaces `path` when the `with` block exits without error.

    Args:
        path: destination; its parent directory is created if missing.
        mode: "wb" or "w" (text, UTF-8 unless `encoding` says otherwise).
        encoding: text encoding for mode "w".

    Raises:
        ValueError: for a mode other than "w" or "wb".

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
        >>> with atomic_open(target, "w") as handle:
        ...     _ = handle.write("done")
        >>> target.read_text()
        'done'
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports modes 'w' and 'wb', got {mode!r}")
    destination = Path(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary_name = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent
    )
    try:
        if mode == "w":
            handle = os.fdopen(descriptor, "w", encoding=encoding or "utf-8", newline="")
        else:
            handle = os.fdopen(descriptor, "wb")
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary_name, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary_name)
        raise
    _fsync_directory(destination.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically."""
    with atomic_open(path, "w", encoding=encoding) as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, value: Any, indent: int | None = 2) -> None:
    """Write `value` as JSON (strict: NaN and infinity are refused) to `path` atomically.

    Raises:
        ValueError: for NaN or infinite floats, which are not JSON.
        TypeError: for values JSON cannot represent.
    """
    text = json.dumps(value, indent=indent, sort_keys=False, allow_nan=False)
    atomic_write_text(path, text + "\n")


def _fsync_directory(directory: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where directories cannot be opened."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)

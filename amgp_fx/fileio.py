"""Atomic file writes: a reader never sees a half-written checkpoint, metrics file or report.

Every write goes to a temporary file in the destination's directory (so the final `os.replace`
stays on one filesystem and is atomic), is flushed and fsynced, and only then replaces the
destination. On an exception the temporary file is removed and the old destination is untouched.
An ``OSError`` of the write (a full disk: ENOSPC) is raised again with the destination's name.

Writers that serialise through C++ (``torch.save``, ``torch.export.save``) go through
:func:`atomic_write_with`: they serialise into memory and only Python writes the file, because a
failed write inside torch's zip writer can end the process (``std::terminate``) instead of raising.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["JsonFileError", "read_json_file", "atomic_open", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_write_with"]


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
    except OSError as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary_name)
        if error.filename is None:  # a failed write(): say which file
            raise OSError(error.errno, error.strerror or str(error), str(destination)) from error
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary_name)
        raise
    _fsync_directory(destination.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_with(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Run ``write(buffer)`` on an in-memory buffer, then write the bytes to ``path`` atomically.

    For ``torch.save``-like writers: I/O errors (ENOSPC) then come from Python's own write, as a
    clean ``OSError``, never from inside torch's C++ writer.
    """
    buffer = io.BytesIO()
    write(buffer)
    with atomic_open(path, "wb") as handle:
        handle.write(buffer.getbuffer())


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


class JsonFileError(ValueError):
    """A JSON file that cannot be read: missing, not UTF-8, not JSON, or nested too deeply."""


def read_json_file(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """The value of the JSON file ``path``, or a one-line ``JsonFileError`` naming ``what`` and the
    file: binary content (UnicodeDecodeError) and deep nesting (RecursionError) included.

    Example:
        >>> import tempfile, pathlib
        >>> bad = pathlib.Path(tempfile.mkdtemp()) / "deep.json"
        >>> _ = bad.write_text("[" * 100000 + "]" * 100000)
        >>> read_json_file(bad, "pruning plan")
        Traceback (most recent call last):
        ...
        amgp_fx.fileio.JsonFileError: pruning plan ... is nested too deeply to be read
    """
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except UnicodeDecodeError:
        raise JsonFileError(f"{what} {path} is not UTF-8 text (a binary file?)") from None
    except json.JSONDecodeError as error:
        raise JsonFileError(f"{what} {path} is not valid JSON ({error.msg} at line {error.lineno}, "
                            f"column {error.colno})") from None
    except RecursionError:
        raise JsonFileError(f"{what} {path} is nested too deeply to be read") from None
    except OSError as error:
        raise JsonFileError(f"cannot read {what} {path}: {error.strerror or error}") from None


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

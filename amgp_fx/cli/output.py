"""Output folders (staged, moved into place only on success), progress lines and tables."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from amgp_fx.cli.progress import Progress  # noqa: F401 - re-exported: progress lines live there
from amgp_fx.errors import OutputPathError

__all__ = ["OutputDir", "Progress", "check_output_path", "render_table", "report_written", "write_json",
           "written_count"]


_UMASK = os.umask(0)
os.umask(_UMASK)


class OutputDir:
    """Stage a command's output files, then move them all into ``path`` only if the command succeeds.

    Files go to a hidden staging folder inside ``path`` (same filesystem, so each move is an atomic
    ``os.replace``); on an exception the staging folder, and the folders this created if left empty,
    are removed, so a failed command leaves no output files.

    Raises:
        OutputPathError: ``path`` is a file, or cannot be created or written.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.written: list[Path] = []
        self._created: list[Path] = []
        self._staging: Path | None = None

    def __enter__(self) -> OutputDir:
        fix = "Pass a writable folder with --output-dir"
        check_output_path(self.path)
        missing = [p for p in [self.path, *self.path.parents] if not p.exists()]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._created = missing
            self._staging = Path(tempfile.mkdtemp(prefix=".amgp-staging-", dir=self.path))
        except OSError as error:
            self._remove_created()
            raise OutputPathError(f"cannot write to {self.path}: {error.strerror or error}", fix) from error
        return self

    def file(self, name: str) -> Path:
        """Where to write output ``name`` now (inside the staging folder)."""
        target = self._staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                for staged in sorted(p for p in self._staging.rglob("*") if p.is_file()):
                    target = self.path / staged.relative_to(self._staging)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staged, target)
                    os.chmod(target, 0o666 & ~_UMASK)  # temporary files are created 0600
                    self.written.append(target)
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)
            if exc_type is not None:
                self._remove_created()

    def _remove_created(self) -> None:
        for folder in self._created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break


def check_output_path(path: Path) -> None:
    """Refuse, without creating anything, an output folder that cannot be made or written.

    Raises:
        OutputPathError: ``path`` or an ancestor is a file, or the nearest existing folder is read-only.
    """
    fix = "Pass a writable folder with --output-dir"
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"output path {path} is a file, not a folder", fix)
    existing = next(p for p in [path, *path.parents, Path(".")] if p.exists())
    if not existing.is_dir():
        raise OutputPathError(f"cannot write to {path}: Not a directory ({existing} is a file)", fix)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write to {path}: Permission denied ({existing} is read-only)", fix)


def write_json(path: Path, value: Any) -> None:
    from amgp_fx.fileio import atomic_write_json

    try:
        atomic_write_json(path, value)
    except OSError as error:
        raise OutputPathError(f"cannot write {path}: {error.strerror or error}", "Pass a writable path") from error


def render_table(rows, headers) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def report_written(out: OutputDir, quiet: bool) -> None:
    if not quiet:
        print(f"wrote {len(out.written)} files to {out.path.resolve()}:")
        for path in out.written:
            print(f"  {path}")


def written_count(out: OutputDir, quiet: bool, also: tuple[Path, ...] = ()) -> None:
    """``wrote N files to DIR``: the staged files and ``also`` (files written straight into the folder,
    such as train's metrics log and checkpoints), so N is what the folder holds from this command."""
    if not quiet:
        print(f"wrote {len(out.written) + len(also)} files to {out.path.resolve()}")

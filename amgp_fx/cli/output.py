"""Output folders (staged, moved into place only on success), progress lines and tables."""
from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from amgp_fx.cli.progress import Progress  # noqa: F401 - re-exported: progress lines live there
from amgp_fx.errors import OutputPathError

__all__ = ["OUTPUT_FILES", "OutputDir", "Progress", "check_output_path", "check_overwrite", "keep_resumable",
           "render_table", "report_written", "write_json", "written_count"]


_UMASK = os.umask(0)
os.umask(_UMASK)

STAGING_PREFIX = ".amgp-staging-"
_STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + r"(\d+)-")  # .amgp-staging-<pid>-<random>


class OutputDir:
    """Stage a command's output files, then move them all into ``path`` only if the command succeeds.

    Files go to a hidden staging folder inside ``path`` (same filesystem, so each move is an atomic
    ``os.replace``); on an exception (SIGINT and SIGTERM included, :mod:`amgp_fx.cli.signals`) the
    staging folder, and the folders this created if left empty, are removed, so a failed command
    leaves no output files. A process killed outright (SIGKILL, power loss) leaves its staging
    folder; the next command into ``path`` removes it (its name holds the dead process's id).

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
            remove_stale_staging(self.path)
            self._staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=self.path))
        except OSError as error:
            self._remove_created()
            raise OutputPathError(f"cannot write to {self.path}: {error.strerror or error}", fix) from error
        return self

    def file(self, name: str) -> Path:
        """Where to write output ``name`` now (inside the staging folder)."""
        target = self._staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def final(self, staged: str | os.PathLike) -> Path:
        """Where the staged file ``staged`` will be once the command succeeds, relative to the output
        folder (what reports should record: the staging folder is gone by then)."""
        return Path(staged).resolve().relative_to(self._staging.resolve())

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


@contextlib.contextmanager
def keep_resumable(folder: Path) -> Iterator[None]:
    """Around training that writes ``train_metrics.jsonl`` and ``checkpoints/`` straight into
    ``folder`` (so that ``--resume`` finds them): when it fails or is interrupted, leave exactly what
    a resume needs, the checkpoints and the metrics up to the last one; with no checkpoint, nothing."""
    try:
        yield
    except BaseException:
        _discard_unresumable(folder)
        raise


def _discard_unresumable(folder: Path) -> None:
    from amgp_fx.checkpoint import latest_checkpoint
    from amgp_fx.metrics import MetricsLogger

    metrics, checkpoints = folder / "train_metrics.jsonl", folder / "checkpoints"
    last = latest_checkpoint(checkpoints)
    try:
        if last is None:
            metrics.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                checkpoints.rmdir()  # only if empty
        elif metrics.exists():
            MetricsLogger(metrics).truncate_after(int(re.findall(r"\d+", last.name)[-1]))
    except OSError:  # a full disk can refuse the rewrite too: the failure being reported matters more
        pass


# the files each command writes (folders end in "/"); a second command into a folder that holds
# any of them is refused without --force (train: without --resume either)
OUTPUT_FILES = {
    "prune": ("pruned.pt2", "pruned.safetensors", "plan.json", "prune_report.json"),
    "train": ("trained.pt2", "trained.safetensors", "train_summary.json", "train_metrics.jsonl", "checkpoints/",
              "train_curve.png"),
    "export": ("model.onnx", "export_report.json"),
    "bench": ("latency.json", "latency.md", "latency.png"),
    "run": ("dense.pt2", "dense.safetensors", "compact.pt2", "compact.safetensors", "plan.json", "groups.json",
            "dense.onnx", "compact.onnx", "latency.json", "latency.md", "summary.json", "report.md",
            "train_curve.png", "latency.png"),
}


def check_overwrite(command: str, path: Path, force: bool, resume: bool = False) -> None:
    """Refuse to replace an earlier command's results in ``path`` without ``--force``: ``train
    --resume`` continues its own run there, so it may."""
    if force or (command == "train" and resume) or not path.is_dir():
        return
    found = [name for name in OUTPUT_FILES.get(command, ()) if _holds(path / name, folder=name.endswith("/"))]
    if not found:
        return
    shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
    resume_hint = " --resume to continue that training," if command == "train" else ""
    raise OutputPathError(f"{path} already holds results of an earlier '{command}' ({shown}); they would be "
                          "overwritten", f"Pass{resume_hint} --force to overwrite them, or another --output-dir")


def _holds(path: Path, folder: bool) -> bool:
    """A result file, or a folder of results that is not empty."""
    return path.is_dir() and any(path.iterdir()) if folder else path.is_file()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def remove_stale_staging(folder: Path) -> None:
    """Remove the staging folders a killed command left in ``folder``: those whose process is gone
    (and unnamed ones of older versions); a live command's staging folder is left alone."""
    for entry in folder.glob(f"{STAGING_PREFIX}*"):
        match = _STAGING_NAME.match(entry.name)
        if not entry.is_dir():
            continue
        if match and (int(match.group(1)) == os.getpid() or _process_alive(int(match.group(1)))):
            continue  # a running command's (or this process's own)
        shutil.rmtree(entry, ignore_errors=True)


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
    """Write ``value`` atomically; NaN and infinity (a metric of one-class data, a resumed run with no
    steps left) are written as null, as in ``train_metrics.jsonl``. Written into a staging folder,
    every path in it that points into that folder is recorded as its final path relative to the
    output folder (``model.onnx``)."""
    from amgp_fx.fileio import atomic_write_json

    staging = next((p for p in Path(path).parents if p.name.startswith(STAGING_PREFIX)), None)
    value = _final_paths(value, *((str(staging), str(staging.resolve())) if staging is not None else ()))
    try:
        atomic_write_json(path, value)
    except OSError as error:
        raise OutputPathError(f"cannot write {path}: {error.strerror or error}", "Pass a writable path") from error


def _final_paths(value: Any, *staging: str) -> Any:
    """``value`` with each string naming a file in a staging folder made relative to the output folder,
    and non-finite floats as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        for root in staging:
            if value == root or value.startswith(root + os.sep):
                return os.path.relpath(value, root)
        return value
    if isinstance(value, dict):
        return {key: _final_paths(item, *staging) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_final_paths(item, *staging) for item in value]
    return value


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

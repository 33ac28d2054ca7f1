"""Helpers of the CLI tests that run commands in a pool: a command's result once it succeeded, and
the files an output folder holds."""
from __future__ import annotations

import subprocess
from pathlib import Path


def succeeded(results, name: str) -> subprocess.CompletedProcess:
    """The finished command ``name`` of ``results`` (name -> Future), asserting it exited 0 without a traceback."""
    result = results[name].result()
    assert result.returncode == 0, f"{name} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


def files(folder: Path) -> set[str]:
    """Every file below ``folder``, as posix paths relative to it."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}

"""Atomic writes: complete or untouched, never half-written, no temporary files left behind."""

from __future__ import annotations

import json
import math
import os

import pytest

from amgp_fx.fileio import atomic_open, atomic_write_bytes, atomic_write_json, atomic_write_text


def test_write_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "deep" / "dir" / "report.json"
    atomic_write_json(target, {"auc": 0.8})
    atomic_write_json(target, {"auc": 0.81})
    assert json.loads(target.read_text()) == {"auc": 0.81}
    assert os.listdir(target.parent) == ["report.json"]


def test_failure_leaves_old_content_and_no_temporary_file(tmp_path):
    target = tmp_path / "model.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_open(target, "wb") as handle:
            handle.write(b"new, half")
            raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.bin"]


def test_temporary_file_lives_beside_the_target(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_open(target, "w") as handle:
        handle.write("text")
        (temporary,) = os.listdir(tmp_path)  # beside the target: same filesystem, so os.replace is atomic
        assert temporary.startswith(".out.txt.") and temporary.endswith(".tmp")
        assert not target.exists(), "the target appears only once the write is complete"
    assert target.read_text() == "text"


def test_text_and_json_rules(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "héllo\n")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        atomic_write_json(tmp_path / "nan.json", {"auc": math.nan})
    assert not (tmp_path / "nan.json").exists()
    with pytest.raises(ValueError, match="atomic_open supports modes 'w' and 'wb', got 'a'"):
        with atomic_open(tmp_path / "x", "a"):
            pass

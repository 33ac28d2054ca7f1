"""``amgp-compress train --device``: CPU and ``auto`` train end to end (one process and ``--nproc 2``),
every bad device fails with exit code 2 before any work or output file, and the device parsing.

Runs on a CPU-only machine: GPUs are faked by patching ``torch.cuda`` where a test needs some.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from amgp_fx.cli import train as cli_pipeline
from amgp_fx.cli import build_parser, main
from amgp_fx.devices import parse_device, resolve_device
from amgp_fx.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
FAST_TRAIN = ["--steps", "10", "--rows", "2000", "--train-batch", "64"]  # as in test_cli.py
FAST_DDP = ["--steps", "4", "--rows", "800", "--train-batch", "64"]  # as in test_distributed.py
TRAINED = {"trained.pt2", "trained.safetensors", "train_summary.json", "train_metrics.jsonl"}


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m amgp_fx.cli ARGS`` in ``cwd`` with one torch thread (several run side by side)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "amgp_fx.cli", *args], cwd=cwd, env=env, capture_output=True,
                            check=False, text=True, timeout=timeout)
    result.seconds = time.perf_counter() - started
    return result


COMMANDS: dict[str, list[str]] = {
    "cpu": ["train", "--model", "dlrm", *FAST_TRAIN, "--device", "cpu", "-o", "cpu"],
    "auto": ["train", "--model", "dlrm", *FAST_TRAIN, "--device", "auto", "-o", "auto"],
    "auto-nproc2": ["train", "--model", "dlrm", *FAST_DDP, "--nproc", "2", "--device=auto", "-q", "-o", "auto-nproc2"],
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """The commands of COMMANDS, started together in one folder: (folder, {name: future})."""
    folder = tmp_path_factory.mktemp("cli-device")
    with ThreadPoolExecutor(max_workers=len(COMMANDS)) as pool:
        futures: dict[str, Future] = {name: pool.submit(run_cli, args, folder) for name, args in COMMANDS.items()}
        yield folder, futures


def succeeded(results, name: str) -> tuple[Path, subprocess.CompletedProcess]:
    folder, futures = results
    result = futures[name].result()
    assert result.returncode == 0, f"{name} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return folder / name, result


def expected_auto(nproc: int = 1) -> str:
    return "cuda" if torch.cuda.is_available() and torch.cuda.device_count() >= nproc else "cpu"


# -- end to end -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, device", [("cpu", "cpu"), ("auto", expected_auto())])
def test_train_on_cpu_and_auto_writes_the_trained_model(results, name, device):
    out, result = succeeded(results, name)
    assert TRAINED <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["device"] == device
    assert summary["steps"] == 10 and math.isfinite(summary["train_loss"])
    assert "[3/3] saving" in result.stderr  # progress goes to stderr


def test_cpu_and_auto_train_the_same_model_on_a_cpu_machine(results):
    if expected_auto() != "cpu":
        pytest.skip("auto picks the GPU here")
    summaries = [json.loads((succeeded(results, name)[0] / "train_summary.json").read_text())
                 for name in ("cpu", "auto")]
    assert summaries[0]["train_loss"] == summaries[1]["train_loss"]
    assert summaries[0]["eval"] == summaries[1]["eval"]


def test_nproc_workers_get_the_resolved_device(results):
    out, _ = succeeded(results, "auto-nproc2")
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 4
    assert summary["device"] == ("cuda:0" if expected_auto(2) == "cuda" else "cpu")  # rank 0's device


def test_worker_command_line_drops_nproc_and_carries_the_checked_device():
    argv = ["train", "--model", "dlrm", "--nproc", "2", "--device", "auto", "--nproc=2", "--device=cuda:1", "-q"]
    assert cli_pipeline._worker_argv(argv, "cuda") == ["train", "--model", "dlrm", "-q", "--device", "cuda"]
    args = build_parser().parse_args(cli_pipeline._worker_argv(argv, "cpu"))
    assert (args.device, args.nproc, args.quiet) == ("cpu", 1, True)


def test_device_defaults_to_the_cpu():
    assert build_parser().parse_args(["train", "--model", "dlrm"]).device == "cpu"


# -- bad devices: exit code 2, the device named, nothing written ------------------------------------------------
@pytest.fixture
def fake_gpus(monkeypatch):
    """``fake_gpus(n)``: torch sees ``n`` GPUs (n = 0: none)."""

    def install(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return install


@pytest.fixture
def no_launch(monkeypatch):
    """Fail the test if the command would start worker processes."""

    def launch(args):
        raise AssertionError("workers were launched")

    monkeypatch.setattr(cli_pipeline, "launch_workers", launch)


def _refused(tmp_path, capsys, *options: str) -> str:
    """Run ``train`` in process; assert exit code 2, one error line and no output; return the line."""
    out = tmp_path / "out"
    code = main(["train", "--model", "dlrm", *FAST_TRAIN, *options, "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("amgp-compress: error: "), err
    assert not out.exists() and list(tmp_path.iterdir()) == []
    return err[0]


@pytest.mark.parametrize("device", ["gpu0", "cuda:x", "cuda:-1", "cpu:0", "cuda0", ""])
def test_a_malformed_device_is_refused_before_torch_runs(tmp_path, capsys, no_launch, device):
    line = _refused(tmp_path, capsys, "--device", device)
    assert f"--device {device!r} is not a device" in line
    assert "Pass cpu, cuda, cuda:N" in line


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:7"])
def test_cuda_without_a_gpu_is_refused(tmp_path, capsys, fake_gpus, no_launch, device):
    fake_gpus(0)
    line = _refused(tmp_path, capsys, "--device", device)
    assert f"--device {device} but torch sees no GPU" in line and "Pass --device cpu" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_on_this_cpu_only_machine_is_refused(tmp_path, capsys, no_launch):
    line = _refused(tmp_path, capsys, "--device", "cuda")
    assert "--device cuda but torch sees no GPU" in line and "Pass --device cpu" in line


def test_a_gpu_index_beyond_the_gpus_is_refused(tmp_path, capsys, fake_gpus, no_launch):
    fake_gpus(2)
    line = _refused(tmp_path, capsys, "--device", "cuda:7")
    assert "--device cuda:7 but torch sees 2 GPUs (cuda:0 to cuda:1)" in line
    assert "GPU index below 2" in line and "CUDA_VISIBLE_DEVICES" in line


def test_more_processes_than_gpus_are_refused_before_any_launch(tmp_path, capsys, fake_gpus, no_launch):
    fake_gpus(1)
    line = _refused(tmp_path, capsys, "--nproc", "2", "--device", "cuda")
    assert "--nproc 2 --device cuda needs 2 GPUs, one per process, but torch sees 1" in line
    assert "Pass --nproc 1 or fewer, or --device cpu" in line


def test_one_gpu_index_for_several_processes_is_refused(tmp_path, capsys, fake_gpus, no_launch):
    fake_gpus(4)
    line = _refused(tmp_path, capsys, "--nproc", "2", "--device", "cuda:1")
    assert "--device cuda:1 names one GPU, but --nproc 2" in line and "Pass --device cuda" in line


def test_a_torchrun_worker_checks_the_gpus_of_its_machine(tmp_path, capsys, fake_gpus, monkeypatch):
    fake_gpus(1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(cli_pipeline, "_join_process_group", lambda args: pytest.fail("joined a process group"))
    line = _refused(tmp_path, capsys, "--device", "cuda")
    assert "--nproc 2 --device cuda needs 2 GPUs" in line


# -- parsing ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, device", [
    ("cpu", "cpu"), ("auto", "auto"), ("cuda", "cuda"), ("cuda:0", "cuda:0"), ("cuda:12", "cuda:12"),
    (" CUDA:03 ", "cuda:3"), ("Auto", "auto"),
])
def test_parse_device_normalises_the_accepted_forms(text, device):
    assert parse_device(text) == device


@pytest.mark.parametrize("text", ["gpu0", "gpu", "cuda:", "cuda:x", "cuda:-1", "cuda:1:2", "cpu:0", "cuda 0",
                                  "mps", "", "cuda0"])
def test_parse_device_refuses_anything_else_as_a_usage_error(text):
    with pytest.raises(UsageError, match="is not a device") as caught:
        parse_device(text)
    assert caught.value.exit_code == 2 and repr(text) in caught.value.problem


@pytest.mark.parametrize("text, nproc, gpus, device", [
    ("cpu", 1, 0, "cpu"), ("cpu", 4, 8, "cpu"),
    ("auto", 1, 0, "cpu"), ("auto", 1, 1, "cuda"), ("auto", 2, 1, "cpu"), ("auto", 2, 2, "cuda"),
    ("cuda", 1, 1, "cuda"), ("cuda:1", 1, 2, "cuda:1"), ("cuda", 2, 2, "cuda"), ("cuda", 2, 8, "cuda"),
])
def test_resolve_device(text, nproc, gpus, device):
    assert resolve_device(text, nproc, cuda_count=gpus) == device


@pytest.mark.parametrize("text, nproc, gpus, message", [
    ("cuda", 1, 0, "--device cuda but torch sees no GPU"),
    ("cuda:0", 2, 0, "--device cuda:0 but torch sees no GPU"),
    ("cuda:1", 1, 1, "--device cuda:1 but torch sees 1 GPU (cuda:0)"),
    ("cuda:2", 1, 2, "--device cuda:2 but torch sees 2 GPUs (cuda:0 to cuda:1)"),
    ("cuda", 3, 2, "--nproc 3 --device cuda needs 3 GPUs"),
    ("cuda:0", 2, 2, "--device cuda:0 names one GPU"),
    ("tpu", 1, 8, "--device 'tpu' is not a device"),
])
def test_resolve_device_refuses_what_this_machine_cannot_do(text, nproc, gpus, message):
    with pytest.raises(UsageError) as caught:
        resolve_device(text, nproc, cuda_count=gpus)
    assert message in caught.value.line() and caught.value.exit_code == 2

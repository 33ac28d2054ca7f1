"""Each class of bad input (issue 14, item 9) and the output-folder rules (item 8) through the real
``amgp-compress`` process: the documented exit code, exactly one stderr line
``amgp-compress: error: ...`` (``-q`` keeps progress off stderr), no traceback, and nothing left
behind: no output folder, no staging folder, no half-written metrics, no temporary file.

Several cases of a class share one fix (e.g. every float option refuses nan); the class is what is
tested, so each gets more than one case where the inputs differ (safetensors and .pt, .pt2 and a
state dict, JSON and TOML, a file and a command-line value).
"""
from __future__ import annotations

import errno
import gzip
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from amgp_fx import models
from amgp_fx.errors import EXIT_CODES
from amgp_fx.model_io import save_pt2, save_state_dict

REPO = Path(__file__).resolve().parents[1]
CRITEO_SHAPED = ["--factory", "amgp_fx.models:build_model", "--factory-kwargs",
                 json.dumps({"name": "dlrm", "num_dense": 13, "table_sizes": [10] * 26})]
CSV_COLUMNS = ["--label", "click", "--dense", "a,b,c,d", "--categorical", "u,i,c1,c2"]
TINY_TRAIN = ["--steps", "20", "--rows", "400", "--train-batch", "32"]
CODES = {**EXIT_CODES, "Interrupted": 130, "Terminated": 143}


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amgp_fx.cli", *args], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=timeout)


def _checkpoint_folder(cwd: Path, content: bytes) -> None:
    (cwd / "out" / "checkpoints").mkdir(parents=True)
    (cwd / "out" / "checkpoints" / "checkpoint_000000010.pt").write_bytes(content)


def _pickled_checkpoint(cwd: Path) -> None:
    """A checkpoint whose unpickling would build an nn.Module (i.e. run code)."""
    torch.save({"format": 1, "step": 10, "payload": torch.nn.Linear(2, 2)}, cwd / "pickled.pt")
    _checkpoint_folder(cwd, (cwd / "pickled.pt").read_bytes())
    (cwd / "pickled.pt").unlink()


def _corrupt_checkpoint(cwd: Path) -> None:
    torch.save({"format": 1, "step": 10, "weights": torch.zeros(1000)}, cwd / "whole.pt")
    _checkpoint_folder(cwd, (cwd / "whole.pt").read_bytes()[:300])
    (cwd / "whole.pt").unlink()


DEEP = "[" * 50_000 + "]" * 50_000

# name: (arguments, exit code class, pattern the error line must match[, setup of the case's folder])
CASES: dict[str, tuple] = {
    # a state dict's tensor of another dtype is refused, naming the tensor and both dtypes
    "dtype-safetensors": (["prune", "f64.safetensors", "--model", "dlrm", "--ratio", "0.5"], "ModelFileError",
                          r"tensor 'bottom_mlp.0.weight' in f64.safetensors is float64 but the factory's model "
                          r"expects float32"),
    "dtype-torch-file": (["export", "int.pt", "--model", "dlrm"], "ModelFileError",
                         r"tensor 'embeddings.0.weight' in int.pt is int64 but the factory's model expects float32"),
    # NaN/inf weights and diverged training: exit 11, before any AUC is computed
    "nan-weights-state-dict": (["train", "nan.safetensors", "--model", "dlrm", *TINY_TRAIN], "TrainingFailure",
                               r"weights of nan.safetensors are not finite: bottom_mlp.0.weight holds 1 NaN"),
    "inf-weights-pt2": (["prune", "inf.pt2", "--ratio", "0.5"], "TrainingFailure",
                        r"weights of inf.pt2 are not finite: .* holds 2 NaN or infinite values"),
    "diverged-training": (["train", "--model", "dlrm", *TINY_TRAIN, "--lr", "1e30"], "TrainingFailure",
                          r"training diverged: .*Lower --lr"),
    # a factory that calls sys.exit is an error, not a silent success
    "sys-exit-on-import": (["analyze", "--factory", "exits_on_import.py:build"], "FactoryError",
                           r"importing 'exits_on_import.py' for --factory called sys.exit\(0\)"),
    "sys-exit-in-factory": (["prune", "--factory", "exits_in_call.py:build", "--ratio", "0.5"], "FactoryError",
                            r"factory exits_in_call.py:build called sys.exit\(3\)"),
    # truncated compressed data: the data error, naming the file
    "truncated-criteo-gz": (["train", *CRITEO_SHAPED, "--data", "cut.tsv.gz"], "DataError",
                            r"cut.tsv.gz:\d+: the compressed file is truncated"),
    "truncated-csv-gz": (["train", "--model", "dlrm", "--data", "cut.csv.gz", *CSV_COLUMNS], "DataError",
                         r"cut.csv.gz.*truncated"),
    "binary-csv": (["train", "--model", "dlrm", "--data", "binary.csv", *CSV_COLUMNS], "DataError",
                   r"binary.csv: .*Check that the file is intact"),
    "binary-parquet": (["train", "--model", "dlrm", "--data", "binary.parquet", *CSV_COLUMNS], "DataError",
                       r"binary.parquet: is not a readable Parquet file: .*Check that the file is intact"),
    # over-long names, of inputs and of outputs
    "long-model-name": (["analyze", "m" * 300 + ".pt2"], "UsageError", r"MODEL m+\.\.\. is too long"),
    "long-output-name": (["prune", "dense.pt2", "--ratio", "0.5", "-o", "o" * 300], "UsageError",
                         r"--output-dir o+\.\.\. is too long \(a name of 300 bytes"),
    "long-data-name": (["train", "--model", "dlrm", "--data", "d" * 256 + ".csv"], "UsageError",
                       r"--data d+\.\.\. is too long"),
    # absurd sizes: refused up front, not an allocation of terabytes
    "absurd-batch-sizes": (["bench", "dense.pt2", "--batch-sizes", "1,100000000000"], "UsageError",
                           r"--batch-sizes entry 100,000,000,000 is larger than 1,048,576"),
    "absurd-batch-size": (["export", "dense.pt2", "--batch-size", "10000000000000"], "UsageError",
                          r"--batch-size 10,000,000,000,000 is larger than"),
    "absurd-train-batch": (["train", "--model", "dlrm", "--train-batch", "99999999999"], "UsageError",
                           r"--train-batch 99,999,999,999 is larger than"),
    "absurd-rows": (["train", "--model", "dlrm", "--rows", "10000000000000"], "UsageError",
                    r"--rows 10,000,000,000,000 of synthetic data would need about .* GiB of memory"),
    # a file that is not ONNX, given to bench
    "garbage-onnx": (["bench", "--onnx", "garbage.onnx"], "ModelFileError",
                     r"garbage.onnx is not a readable ONNX model"),
    "empty-onnx": (["bench", "empty.onnx"], "ModelFileError", r"empty.onnx is not a readable ONNX model"),
    # deeply nested or binary JSON/TOML arguments
    "deep-json-columns": (["train", "--model", "dlrm", "--data", "ok.csv", "--columns", "deep.json"],
                          "UsageError", r"column spec deep.json is nested too deeply"),
    "binary-json-columns": (["train", "--model", "dlrm", "--data", "ok.csv", "--columns", "binary.json"],
                            "UsageError", r"column spec binary.json is not UTF-8 text"),
    "deep-toml-columns": (["train", "--model", "dlrm", "--data", "ok.csv", "--columns", "deep.toml"],
                          "UsageError", r"column spec deep.toml is nested too deeply"),
    "deep-json-plan": (["prune", "dense.pt2", "--apply-plan", "deep.json"], "PruneRequestError",
                       r"pruning plan deep.json is nested too deeply"),
    "binary-json-plan": (["prune", "dense.safetensors", "--model", "dlrm", "--plan", "binary.json", "--ratio", "0.5"],
                         "PruneRequestError", r"pruning plan binary.json is not UTF-8 text"),
    "deep-json-model-metadata": (["prune", "deep-meta.safetensors", "--model", "dlrm", "--ratio", "0.5"],
                                 "ModelFileError", r"deep-meta.safetensors: its amgp-fx metadata is not valid JSON"),
    "deep-factory-kwargs": (["analyze", "--factory", "my_models.py:build", "--factory-kwargs", "[" * 5000 + "]" * 5000],
                            "UsageError", r"--factory-kwargs is nested too deeply"),
    # non-finite or negative numbers
    "lr-nan": (["train", "--model", "dlrm", "--lr", "nan"], "UsageError", r"argument --lr: .*got 'nan'"),
    "lr-inf": (["run", "--lr", "inf"], "UsageError", r"argument --lr: .*got 'inf'"),
    "lr-negative": (["train", "--model", "dlrm", "--lr=-0.1"], "UsageError", r"argument --lr: .*got '-0.1'"),
    "lr-zero": (["train", "--model", "dlrm", "--lr", "0"], "UsageError", r"argument --lr: .*positive"),
    "seed-negative": (["train", "--model", "dlrm", "--seed=-1"], "UsageError", r"argument --seed: .*got '-1'"),
    "seed-too-large": (["run", "--seed", "1" + "0" * 30], "UsageError", r"argument --seed: expected an integer"),
    "atol-nan": (["export", "dense.pt2", "--atol", "nan"], "UsageError", r"argument --atol: .*got 'nan'"),
    # checkpoints on --resume: never unpickled, a damaged one is one line
    "pickled-checkpoint": (["train", "--model", "dlrm", *TINY_TRAIN, "--resume"], "ModelFileError",
                           r"checkpoint out/checkpoints/checkpoint_000000010.pt holds pickled Python objects, which "
                           r"are not loaded", _pickled_checkpoint),
    "corrupt-checkpoint": (["train", "--model", "dlrm", *TINY_TRAIN, "--resume"], "ModelFileError",
                           r"checkpoint out/checkpoints/checkpoint_000000010.pt is truncated or corrupt",
                           _corrupt_checkpoint),
    # an earlier command's results are not overwritten without --force (train: nor without --resume)
    "results-in-output-folder": (["prune", "dense.pt2", "--ratio", "0.5"], "OutputPathError",
                                 r"out already holds results of an earlier 'prune' \(plan.json\).*--force",
                                 lambda cwd: (cwd / "out").mkdir() or (cwd / "out" / "plan.json").write_text("{}")),
    "checkpoints-in-output-folder": (["train", "--model", "dlrm", *TINY_TRAIN], "OutputPathError",
                                     r"earlier 'train' \(checkpoints/\).*Pass --resume to continue that training",
                                     lambda cwd: _checkpoint_folder(cwd, b"x")),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The broken files, next to a good small DLRM."""
    folder = tmp_path_factory.mktemp("bad-inputs")
    torch.manual_seed(0)
    model = models.build_model("dlrm")
    save_pt2(model, model.example_inputs(8), folder / "dense.pt2")
    save_state_dict(model, folder / "dense.safetensors")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    from safetensors.torch import save_file

    save_file({**state, "bottom_mlp.0.weight": state["bottom_mlp.0.weight"].double()}, folder / "f64.safetensors")
    torch.save({**state, "embeddings.0.weight": state["embeddings.0.weight"].long()}, folder / "int.pt")
    nan = {k: v.clone() for k, v in state.items()}
    nan["bottom_mlp.0.weight"][0, 0] = float("nan")
    save_file(nan, folder / "nan.safetensors")
    save_file(state, folder / "deep-meta.safetensors", metadata={"amgp_fx.json": DEEP})
    with torch.no_grad():
        broken = models.build_model("dlrm")
        broken.load_state_dict(state)
        next(broken.parameters()).view(-1)[:2] = float("inf")
    save_pt2(broken, broken.example_inputs(8), folder / "inf.pt2")
    (folder / "my_models.py").write_text("from amgp_fx import models\n\ndef build():\n"
                                         "    return models.build_model('dlrm')\n")
    (folder / "exits_on_import.py").write_text("import sys\nsys.exit(0)\n\ndef build():\n    pass\n")
    (folder / "exits_in_call.py").write_text("import sys\n\ndef build():\n    sys.exit(3)\n")
    random.seed(0)
    row = "\t".join(["1"] + ["3"] * 13 + ["a1"] * 26)
    data = gzip.compress(("\n".join(row.replace("3", str(random.randint(0, 9)), 1) for _ in range(4000)) + "\n").encode())
    (folder / "cut.tsv.gz").write_bytes(data[: len(data) // 2])
    lines = ["click,a,b,c,d,u,i,c1,c2"] + [f"{random.randint(0, 1)},{random.random()},{random.random()},"
                                           f"{random.random()},{random.random()},u{random.randint(0, 999)},"
                                           f"i{random.randint(0, 999)},x{random.randint(0, 9)},y{random.randint(0, 9)}"
                                           for _ in range(4000)]
    (folder / "ok.csv").write_text("\n".join(lines) + "\n")
    data = gzip.compress((folder / "ok.csv").read_bytes())
    (folder / "cut.csv.gz").write_bytes(data[: len(data) // 2])
    (folder / "garbage.onnx").write_bytes(bytes(random.getrandbits(8) for _ in range(4096)))
    (folder / "binary.csv").write_bytes(b"a\x1b[31m,b\n\x07\x1b]0;x\x07," + bytes(random.getrandbits(8) for _ in range(4096)))
    (folder / "binary.parquet").write_bytes(bytes(random.getrandbits(8) for _ in range(4096)))
    (folder / "empty.onnx").write_bytes(b"")
    (folder / "deep.json").write_text(DEEP)
    (folder / "deep.toml").write_text("label = " + DEEP)
    (folder / "binary.json").write_bytes(bytes(range(256)) * 4)
    return folder


def tree(folder: Path) -> dict[str, int]:
    """Every real (not linked-in) file and folder under ``folder``, hidden ones included, with sizes."""
    found = {}
    for path in folder.rglob("*"):
        if not path.is_symlink():
            found[path.relative_to(folder).as_posix()] = path.stat().st_size if path.is_file() else -1
    return found


@pytest.fixture(scope="module")
def outcomes(inputs):
    """Each case in its own working folder (inputs linked in), two at a time."""
    def one(name: str):
        args, _, _, *setup = CASES[name]
        cwd = inputs / "cases" / name
        cwd.mkdir(parents=True)
        for item in inputs.iterdir():
            if item.name != "cases":
                (cwd / item.name).symlink_to(item)
        if setup:
            setup[0](cwd)
        before = tree(cwd)
        result = run_cli([*args, "-q", *([] if "-o" in args or args[0] == "analyze" else ["-o", "out"])], cwd)
        return result, before, tree(cwd)

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(one, name) for name in CASES}
        return {name: future.result() for name, future in futures.items()}


def assert_one_error_line(result: subprocess.CompletedProcess, code: int, pattern: str = "") -> str:
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert len(lines) == 1, f"expected one stderr line, got:\n{result.stderr}"
    assert lines[0].startswith("amgp-compress: error: "), lines[0]
    assert lines[0].isprintable(), f"control characters reach the terminal: {lines[0]!r}"
    assert re.search(pattern, lines[0]), lines[0]
    assert result.returncode == code, (result.returncode, lines[0])
    return lines[0]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_class_gets_its_code_one_line_and_leaves_nothing(outcomes, name):
    _, error_class, pattern, *_ = CASES[name]
    result, before, after = outcomes[name]
    line = assert_one_error_line(result, CODES[error_class], pattern)
    assert line.endswith("."), "the line ends with the fix, as a sentence"
    assert after == before, f"files added, removed or changed: {set(after.items()) ^ set(before.items())}"


# -- signals -------------------------------------------------------------------------------------------
def _start_training(cwd: Path, *extra: str) -> subprocess.Popen:
    args = ["train", "--model", "dlrm", "--steps", "6000", "--rows", "2000", "--train-batch", "16", "-q",
            "-o", "out", *extra]
    return subprocess.Popen([sys.executable, "-m", "amgp_fx.cli", *args], cwd=cwd, env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not (path.exists() and path.stat().st_size) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "training ended before it could be interrupted"
    assert path.exists(), f"{path} never appeared"


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_training_leaves_no_metrics_and_no_folder(tmp_path, signum, code):
    """Interrupted before its first checkpoint, a training run has nothing to resume: it leaves nothing,
    not even the output folder (the metrics log it was appending to is removed)."""
    process = _start_training(tmp_path, "--checkpoint-every", "100000")
    _wait_for(tmp_path / "out" / "train_metrics.jsonl", process)
    assert list((tmp_path / "out").glob(".amgp-staging-*")), "the staging folder exists while it runs"
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert_one_error_line(result, code, "interrupted" if signum == signal.SIGINT else "terminated")
    assert not (tmp_path / "out").exists(), tree(tmp_path)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143)])
def test_signal_during_run_leaves_no_staging_folder(tmp_path, signum, code):
    """`run` stages every file: interrupted while it trains, it leaves no folder at all."""
    args = ["run", "--steps", "20000", "--rows", "2000", "--train-batch", "16", "-q", "-o", "out"]
    process = subprocess.Popen([sys.executable, "-m", "amgp_fx.cli", *args], cwd=tmp_path, env=env(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob("out/.amgp-staging-*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(3)  # into the training stage (loading takes about a second)
    assert process.poll() is None, "run ended before it could be interrupted"
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert_one_error_line(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), code)
    assert not (tmp_path / "out").exists(), tree(tmp_path)


def test_sigterm_after_a_checkpoint_keeps_exactly_what_resume_needs(tmp_path):
    """The checkpoints stay, the metrics log is cut back to the last checkpoint's step (no record a
    resume would write twice), the staging folder goes."""
    process = _start_training(tmp_path, "--checkpoint-every", "300")
    _wait_for(tmp_path / "out" / "checkpoints" / "checkpoint_000000600.pt", process)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert_one_error_line(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), 143)
    out = tmp_path / "out"
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints and all(re.fullmatch(r"checkpoint_\d{9}\.pt", name) for name in checkpoints)
    last = int(checkpoints[-1][11:20])
    records = [json.loads(line) for line in (out / "train_metrics.jsonl").read_text().splitlines()]
    assert records and max(r["step"] for r in records) <= last
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "train_metrics.jsonl"]


def test_killed_run_resumes_and_its_staging_folder_goes(tmp_path):
    """SIGKILL leaves a staging folder (nothing can clean up); the successful --resume removes it,
    and the summary it writes names no staging folder."""
    args = ["train", "--model", "dlrm", "--steps", "120", "--rows", "2000", "--train-batch", "32",
            "--checkpoint-every", "20", "-q", "-o", "out"]
    process = subprocess.Popen([sys.executable, "-m", "amgp_fx.cli", *args], cwd=tmp_path, env=env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(tmp_path / "out" / "checkpoints" / "checkpoint_000000020.pt", process)
    process.kill()
    assert process.wait() == -signal.SIGKILL
    assert list((tmp_path / "out").glob(".amgp-staging-*")), "a killed run leaves its staging folder"
    refused = run_cli(args, tmp_path)  # neither --resume nor --force: the checkpoints are not overwritten
    assert_one_error_line(refused, 8, "Pass --resume to continue that training")
    resumed = run_cli([*args, "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    out = tmp_path / "out"
    assert not list(out.glob(".amgp-staging-*"))
    assert (out / "trained.pt2").is_file() and json.loads((out / "train_summary.json").read_text())["steps"] == 120
    assert ".amgp-staging" not in "".join(p.read_text() for p in out.glob("*.json"))


# -- in-process: a full disk, internal errors, staging paths -------------------------------------------
@pytest.fixture()
def full_disk(monkeypatch):
    """Every file the CLI writes through amgp_fx.fileio fails with ENOSPC after its first KiB."""
    import amgp_fx.fileio as fileio

    real_fdopen = fileio.os.fdopen

    class FullDisk:
        def __init__(self, handle):
            self.handle, self.written = handle, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 1024:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(fileio.os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k)))


def _main(args: list[str], capsys) -> tuple[int, str]:
    from amgp_fx.cli.entry import main

    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command", [["prune", "dense.pt2", "--ratio", "0.5"],
                                     ["train", "--model", "dlrm", "--steps", "10", "--rows", "400",
                                      "--train-batch", "32", "--checkpoint-every", "5"]])
def test_full_disk_is_one_line_exit_8_and_cleans_up(inputs, tmp_path, monkeypatch, capsys, full_disk, command):
    monkeypatch.chdir(tmp_path)
    args = [arg if not arg.endswith(".pt2") else str(inputs / arg) for arg in command]
    code, err = _main([*args, "-q", "-o", "out"], capsys)
    lines = err.strip().splitlines()
    assert code == 8 and len(lines) == 1, err
    assert lines[0].startswith("amgp-compress: error: No space left on device writing a file (") and \
        "Free some space" in lines[0] and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [], tree(tmp_path)  # no folder, no staging, no checkpoint or metrics


def test_internal_error_is_one_line_and_its_traceback_needs_verbose(monkeypatch, capsys):
    import amgp_fx.cli.analyze as analyze

    def broken(args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(analyze, "command", broken)
    code, err = _main(["analyze", "--model", "dlrm"], capsys)
    assert code == 1 and err.strip().splitlines() == [
        "amgp-compress: error: internal error: RuntimeError: boom second line. This is a bug; rerun with --verbose "
        "and report the traceback."]
    code, err = _main(["analyze", "--model", "dlrm", "-v"], capsys)
    assert code == 1 and "Traceback" in err and err.strip().splitlines()[-1].startswith("amgp-compress: error:")


def test_sys_exit_in_model_code_is_an_error_not_a_success(monkeypatch, capsys):
    """sys.exit(0) from code amgp-compress runs (a model's forward, a factory) must not end as exit 0."""
    import amgp_fx.cli.analyze as analyze

    def exits(args):
        sys.exit(0)

    monkeypatch.setattr(analyze, "command", exits)
    code, err = _main(["analyze", "--model", "dlrm"], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "called sys.exit(0)" in lines[0] and lines[0].endswith(".")
    assert _main(["analyze", "--help"], capsys)[0] == 0  # argparse's own exit for --help stays a success


def test_reports_name_final_paths_not_the_staging_folder(tmp_path):
    """write_json inside a staging folder records paths relative to the output folder (the staging
    folder is gone once the command succeeds), at any depth; NaN becomes null."""
    from amgp_fx.cli.output import OutputDir, write_json

    with OutputDir(tmp_path / "out") as out:
        onnx = out.file("dense.onnx")
        report = {"path": str(onnx), "exports": {"compact": {"path": str(out.file("compact.onnx").resolve())}},
                  "files": [str(onnx), "elsewhere/x.onnx"], "auc": float("nan")}
        write_json(out.file("summary.json"), report)
        assert out.final(onnx) == Path("dense.onnx")
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved == {"path": "dense.onnx", "exports": {"compact": {"path": "compact.onnx"}},
                     "files": ["dense.onnx", "elsewhere/x.onnx"], "auc": None}


def test_stale_staging_folders_of_dead_processes_are_removed(tmp_path):
    from amgp_fx.cli.output import OutputDir

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, alive = int(finished.stdout), os.getppid()
    for name in (f".amgp-staging-{dead}-abc", ".amgp-staging-legacy", f".amgp-staging-{alive}-def"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "half.pt2").write_bytes(b"x")
    with OutputDir(tmp_path) as out:
        out.file("a.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".amgp-staging-{alive}-def", "a.json"]


def test_force_overwrites_and_resume_continues(inputs, tmp_path):
    """--force replaces an earlier prune's results; train --resume into its own folder is allowed
    (the refusals are cases of test_bad_input_class_gets_its_code_one_line_and_leaves_nothing)."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "plan.json").write_text("{}")
    forced = run_cli(["prune", str(inputs / "dense.pt2"), "--ratio", "0.5", "-q", "-o", "out", "--force"], tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert json.loads((tmp_path / "out" / "plan.json").read_text())["format"] == "amgp-fx-pruning-plan"


def test_a_library_error_caused_by_a_full_disk_is_the_disk_error():
    """ONNX files are written by torch.onnx, not amgp_fx.fileio: its ExportError raised from ENOSPC
    maps to the full-disk line (exit 8), not to an export failure (exit 10)."""
    from amgp_fx.errors import as_cli_error
    from amgp_fx.export import ExportError

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "out/model.onnx")
        except OSError as error:
            raise ExportError("saving model.onnx failed") from error
    except ExportError as error:
        mapped = as_cli_error(error)
    assert mapped.exit_code == 8 and mapped.line().startswith("No space left on device writing a file (out/model.onnx)")
    assert as_cli_error(ExportError("saving model.onnx failed")).exit_code == 10  # no OS cause: export's own code


def test_force_starts_training_afresh_without_an_older_runs_checkpoints(tmp_path, capsys):
    """train --force (no --resume) into a folder of an earlier run: its checkpoints go, so that a later
    --resume cannot pick up the older run's higher step (and checkpoint pruning cannot drop the new ones)."""
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint_000000999.pt").write_bytes(b"an older run's")
    (out / "train_metrics.jsonl").write_text('{"kind": "train", "step": 999, "loss": 0.1}\n')
    args = ["train", "--model", "dlrm", "--steps", "4", "--rows", "400", "--train-batch", "32", "--checkpoint-every",
            "2", "-q", "-o", str(out)]
    code, err = _main(args, capsys)
    assert code == 8 and "Pass --resume to continue that training, --force" in err
    code, err = _main([*args, "--force"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint_000000002.pt",
                                                                       "checkpoint_000000004.pt"]
    steps = [json.loads(line)["step"] for line in (out / "train_metrics.jsonl").read_text().splitlines()]
    assert 999 not in steps and max(steps) == 4

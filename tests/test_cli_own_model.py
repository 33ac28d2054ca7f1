"""A user's own model through ``amgp-compress`` (subprocess), as docs/cli.md#your-own-model-and-data-end-to-end walks it:
a positional ``(dense, sparse)`` model and a dict-input one (tests/fixtures/own_models.py: 5 tables,
a dense MLP, two cross layers, a top MLP), each saved as a dynamic-batch .pt2, a static-batch .pt2
(``torch.export.export`` + ``torch.export.save``, the recipe in the docs) and a safetensors state
dict with a factory; through analyze, prune, export, bench, train (dense and --amgp) and run.

The commands start together (three at a time) when the first test asks for them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from amgp_fx.model_inputs import parse_input_spec
from amgp_fx.model_io import load_model, save_pt2, save_state_dict
from tests.fixtures import own_models

REPO = Path(__file__).resolve().parents[1]
FAST_TRAIN = ["--steps", "10", "--rows", "600", "--train-batch", "64"]
FAST_BENCH = ["--batch-sizes", "1,4", "--iters", "2", "--warmup", "1"]
SOURCES = {
    "pos": ["pos.pt2"],
    "pos-static": ["pos_static.pt2"],
    "pos-sd": ["pos.safetensors", "--factory", "my_pos.py:build_positional"],  # inputs read off the model
    "dict": ["dict.pt2"],
    "dict-static": ["dict_static.pt2"],
    "dict-sd": ["dict.safetensors", "--factory", "my_dict.py:build_dict", "--example-inputs", "dict_batch.pt"],
}
STEPS = {
    "analyze": lambda name: ["analyze", "--json", f"{name}/groups.json"],
    "prune": lambda name: ["prune", "--ratio", "0.5", "-o", name],
    "export": lambda name: ["export", "-o", name],
    "bench": lambda name: ["bench", *FAST_BENCH, "-o", name],
    "amgp": lambda name: ["train", *FAST_TRAIN, "--amgp", "-o", name],
}
EXTRA = {
    "train-pos": ["train", "pos.pt2", *FAST_TRAIN, "-o", "train-pos"],
    "train-dict": ["train", "dict.pt2", *FAST_TRAIN, "-o", "train-dict"],
    "train-dict-map": ["train", "dict.pt2", *FAST_TRAIN, "--input-map",
                       "dense=dense; user=sparse[0]; item=sparse[1]; context=sparse[2:5]", "-o", "train-dict-map"],
    "run-pos": ["run", "pos.pt2", *FAST_TRAIN, "--finetune-steps", "5", *FAST_BENCH, "-o", "run-pos"],
    "run-dict-static": ["run", "dict_static.pt2", *FAST_TRAIN, "--finetune-steps", "5", *FAST_BENCH,
                        "-o", "run-dict-static"],
    "run-dict-sd": ["run", *SOURCES["dict-sd"], *FAST_TRAIN, "--finetune-steps", "5", *FAST_BENCH,
                    "-o", "run-dict-sd"],
    "bench-static-eager": ["bench", "pos_static.pt2", "--runtimes", "torch-eager", *FAST_BENCH,
                           "-o", "bench-static-eager"],
    "dict-sd-no-inputs": ["train", "dict.safetensors", "--factory", "my_dict.py:build_dict", "--amgp", *FAST_TRAIN,
                          "-o", "dict-sd-no-inputs"],
    "bad-map": ["train", "dict.pt2", *FAST_TRAIN, "--input-map", "dense=dense; user=sparse[0]", "-o", "bad-map"],
    "dict-shape": ["analyze", "dict.safetensors", "--factory", "my_dict.py:build_dict", "--input-shape",
                   "dense=float32[B,13];user=int64[B]:0..20;item=int64[B]:0..20;context=int64[B,3]:0..20"],
}


def command_line(name: str) -> list[str]:
    if name in EXTRA:
        return EXTRA[name]
    step, source = name.split(":")
    args = STEPS[step](f"{step}-{source}")
    return [args[0], *SOURCES[source], *args[1:]]


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "amgp_fx.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The user's folder: the factory files, the saved models and a saved dict batch."""
    folder = tmp_path_factory.mktemp("own-model")
    fixture = Path(own_models.__file__)
    shutil.copy(fixture, folder / "my_pos.py")
    shutil.copy(fixture, folder / "my_dict.py")
    for stem, build, batch in (("pos", own_models.build_positional, own_models.positional_batch),
                               ("dict", own_models.build_dict, own_models.dict_batch)):
        model = build()
        save_pt2(model, batch(4), folder / f"{stem}.pt2")
        torch.export.save(torch.export.export(model, batch(4), strict=False), folder / f"{stem}_static.pt2")
        save_state_dict(model, folder / f"{stem}.safetensors")
    torch.save(own_models.dict_batch(4)[0], folder / "dict_batch.pt")  # the dict itself, as a user saves it
    return folder


@pytest.fixture(scope="module")
def results(workspace):
    names = [f"{step}:{source}" for step in STEPS for source in SOURCES] + list(EXTRA)
    for source in SOURCES:
        (workspace / f"analyze-{source}").mkdir(exist_ok=True)
    pool = ThreadPoolExecutor(max_workers=3)
    futures: dict[str, Future] = {name: pool.submit(run_cli, command_line(name), workspace) for name in names}
    yield futures
    pool.shutdown(wait=True)


def succeeded(results, name: str) -> subprocess.CompletedProcess:
    result = results[name].result()
    assert result.returncode == 0, f"{name} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    return result


def failed(results, name: str, code: int) -> str:
    result = results[name].result()
    assert result.returncode == code, f"{name} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("amgp-compress: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def metadata(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("amgp_fx.json"))
        return json.loads(archive.read(name))


@pytest.mark.parametrize("source", list(SOURCES))
def test_analyze_lists_groups_and_the_inputs(results, workspace, source):
    out = succeeded(results, f"analyze:{source}").stdout
    groups = json.loads((workspace / f"analyze-{source}" / "groups.json").read_text())["groups"]
    assert sum(g["prunable"] for g in groups) >= 2  # the dense MLP's hidden units, the cross/top widths
    line = next(line for line in out.splitlines() if line.startswith("inputs: "))
    if source.startswith("dict"):
        assert "dense=float32[B,13]" in line and "context=int64[B,3]" in line
    else:
        assert line.startswith("inputs: float32[B,13];int64[B,5]")
    assert ("(static batch 4)" in line) == source.endswith("static")


@pytest.mark.parametrize("source", list(SOURCES))
def test_prune_halves_and_keeps_the_batch_kind(results, workspace, source):
    out = succeeded(results, f"prune:{source}")
    report = json.loads((workspace / f"prune-{source}" / "prune_report.json").read_text())
    assert report["params_after"] < report["params_before"] and report["flops_after"] < report["flops_before"]
    loaded = load_model(workspace / f"prune-{source}" / "pruned.pt2")
    assert loaded.static_batch == (4 if source.endswith("static") else None)
    if source.startswith("dict"):
        assert isinstance(loaded.example_inputs[0], dict)
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("source", list(SOURCES))
def test_export_runs_parity_with_the_right_batch(results, workspace, source):
    out = succeeded(results, f"export:{source}").stdout
    report = json.loads((workspace / f"export-{source}" / "export_report.json").read_text())
    assert report["max_abs_diff"] is not None and report["max_abs_diff"] < 1e-3
    if source.endswith("static"):
        assert "static batch 4" in out and "dynamic_batch" not in out
    else:
        assert "dynamic batch" in out


@pytest.mark.parametrize("source", list(SOURCES))
def test_bench_times_ort_and_torch(results, workspace, source):
    result = succeeded(results, f"bench:{source}")
    records = json.loads((workspace / f"bench-{source}" / "latency.json").read_text())
    records = records["records"] if isinstance(records, dict) else records
    batches = {r["batch_size"] for r in records}
    runtimes = {r["runtime"] for r in records}
    assert {"torch-eager"} <= runtimes and any(r.startswith("ort") for r in runtimes)
    if source.endswith("static"):
        assert batches == {4} and "timing batch 4 only" in result.stderr
    else:
        assert batches == {1, 4}


def test_bench_torch_eager_on_a_static_batch(results, workspace):
    succeeded(results, "bench-static-eager")
    records = json.loads((workspace / "bench-static-eager" / "latency.json").read_text())
    records = records["records"] if isinstance(records, dict) else records
    assert {(r["runtime"], r["batch_size"]) for r in records} == {("torch-eager", 4)}


@pytest.mark.parametrize("source", list(SOURCES))
def test_train_with_amgp(results, workspace, source):
    result = succeeded(results, f"amgp:{source}")
    summary = json.loads((workspace / f"amgp-{source}" / "train_summary.json").read_text())
    assert summary["steps"] == 10 and 0.0 <= summary["eval"]["auc"] <= 1.0
    meta = metadata(workspace / f"amgp-{source}" / "trained.pt2")
    assert meta["data"]["table_sizes"] == list(own_models.TABLES)  # read from the model's tables
    if source.startswith("dict"):
        assert meta["input_map"] == "dense=dense[0:13]; user=sparse[0]; item=sparse[1]; context=sparse[2:5]"
    if source.endswith("static"):
        assert "training with batch 4" in result.stderr
    if source == "pos-sd":  # the README's example: no --input-shape needed
        assert "inputs inferred from the model: --input-shape 'float32[B,13];int64[B,5]:0..20'" in result.stderr


def test_dict_and_positional_models_train_alike(results, workspace):
    """Same weights, same rows, the default map: the same model, so the same held-out numbers."""
    for name in ("train-pos", "train-dict", "train-dict-map"):
        succeeded(results, name)  # waits for the run: its files exist only after it
    summaries = [json.loads((workspace / name / "train_summary.json").read_text())
                 for name in ("train-pos", "train-dict", "train-dict-map")]
    assert summaries[0]["eval"]["auc"] == pytest.approx(summaries[1]["eval"]["auc"], abs=1e-6)
    assert summaries[1]["eval"] == pytest.approx(summaries[2]["eval"], abs=1e-9)


@pytest.mark.parametrize("name", ["run-pos", "run-dict-static", "run-dict-sd"])
def test_run_the_whole_pipeline(results, workspace, name):
    succeeded(results, name)
    out = workspace / name
    assert {"dense.pt2", "compact.pt2", "dense.onnx", "compact.onnx", "report.md", "latency.json"} <= \
        {p.name for p in out.iterdir()}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pruning"]["flops_after"] < summary["pruning"]["flops_before"]
    assert not any(p.name.startswith(".amgp-staging") for p in out.iterdir())


def test_dict_factory_without_inputs_says_which_flag(results, workspace):
    line = failed(results, "dict-sd-no-inputs", 5)
    assert "--input-shape" in line and "dense=float32[B,13]" in line and "--example-inputs" in line
    assert not (workspace / "dict-sd-no-inputs").exists()


def test_bad_input_map_lists_the_inputs(results, workspace):
    line = failed(results, "bad-map", 5)
    assert "'item', 'context'" in line and "dense float32" in line
    assert not (workspace / "bad-map").exists()


def test_dict_inputs_from_a_shape_spec(results):
    out = succeeded(results, "dict-shape").stdout
    line = next(text for text in out.splitlines() if text.startswith("inputs: "))
    seen = {spec.path: spec for spec in parse_input_spec(line.removeprefix("inputs: "))}
    assert {path: (spec.dtype, spec.shape) for path, spec in seen.items()} == {
        "dense": ("float32", ("B", 13)), "user": ("int64", ("B",)), "item": ("int64", ("B",)),
        "context": ("int64", ("B", 3))}
    # the ids drawn lie in the given range 0..20 (the line shows the range of the values drawn)
    assert all(0 <= seen[key].low < seen[key].high <= 20 for key in ("user", "item", "context"))

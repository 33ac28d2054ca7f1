"""amgp-compress end to end: every subcommand through a real subprocess, on a saved .pt2 and on a
state dict + factory, checking exit codes and files; plus property tests of argument parsing.

The subprocesses are started together (two or three at a time) when the module's first test asks
for them, so importing torch in each overlaps; every test then checks its own command's result.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from amgp_fx import models
from amgp_fx.cli import build_parser, main, parse_batch_sizes, parse_factory_kwargs, parse_group_ratio, parse_ratio
from amgp_fx.errors import CliError, InputSpecError, PruneRequestError, UsageError
from amgp_fx.model_inputs import TensorSpec, format_input_spec, parse_input_spec
from amgp_fx.model_io import load_model, save_pt2, save_state_dict
from tests.cli_results import files, succeeded

REPO = Path(__file__).resolve().parents[1]
SD_FACTORY = ["--factory", "amgp_fx.models.dlrm:build", "--factory-kwargs", '{"preset": "small"}']
FAST_BENCH = ["--batch-sizes", "1,4", "--iters", "2", "--warmup", "1"]
FAST_TRAIN = ["--steps", "10", "--rows", "2000", "--train-batch", "64"]
RESUMABLE_TRAIN = ["--steps", "200", "--rows", "2000", "--train-batch", "64", "--checkpoint-every", "20"]


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m amgp_fx.cli ARGS`` in ``cwd`` with one torch thread (several run side by side)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "amgp_fx.cli", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    result.seconds = time.perf_counter() - started
    return result


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """dense.pt2, dense.safetensors and a factory file, from one small DLRM."""
    folder = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = models.build_model("dlrm")
    save_pt2(model, model.example_inputs(8), folder / "dense.pt2")
    save_state_dict(model, folder / "dense.safetensors")
    (folder / "my_models.py").write_text(textwrap.dedent("""
        from amgp_fx import models

        def build(preset="small"):
            return models.build_model("dlrm", preset)
    """))
    return folder


COMMANDS: dict[str, list[str]] = {
    "analyze-pt2": ["analyze", "dense.pt2", "--json", "analyze-pt2/groups.json"],
    "analyze-sd": ["analyze", "dense.safetensors", "--factory", "my_models.py:build", "--prunable-only"],
    "prune-pt2": ["prune", "dense.pt2", "--ratio", "0.5", "-o", "prune-pt2"],
    "prune-sd": ["prune", "dense.safetensors", *SD_FACTORY, "--flops-target", "0.5", "--kinds", "hidden",
                 "-o", "prune-sd"],
    "train-pt2": ["train", "dense.pt2", *FAST_TRAIN, "--amgp", "-o", "train-pt2"],
    "train-sd": ["train", "dense.safetensors", "--model", "dlrm", *RESUMABLE_TRAIN, "-o", "train-sd"],
    "export-pt2": ["export", "dense.pt2", "-o", "export-pt2"],
    "export-sd": ["export", "dense.safetensors", *SD_FACTORY, "--static-batch", "--no-parity", "-o", "export-sd"],
    "bench-pt2": ["bench", "dense.pt2", *FAST_BENCH, "-o", "bench-pt2"],
    "bench-sd": ["bench", "dense.safetensors", *SD_FACTORY, "--runtimes", "torch-eager", *FAST_BENCH,
                 "-o", "bench-sd"],
    "run-pt2": ["run", "dense.pt2", *FAST_TRAIN, "--finetune-steps", "5", *FAST_BENCH, "-o", "run-pt2"],
    "run-sd": ["run", "dense.safetensors", *SD_FACTORY, "--steps", "0", "--finetune-steps", "0",
               "--flops-target", "0.6", "--no-parity", *FAST_BENCH, "-o", "run-sd"],
}


@pytest.fixture(scope="module")
def results(workspace):
    """Every command of COMMANDS, plus ``run`` with no arguments (alone, so its time is its own)."""
    (workspace / "defaults").mkdir()
    pool = ThreadPoolExecutor(max_workers=3)
    futures: dict[str, Future] = {"run-defaults": pool.submit(run_cli, ["run"], workspace / "defaults")}
    futures["run-defaults"].result()
    futures.update({name: pool.submit(run_cli, args, workspace) for name, args in COMMANDS.items()})
    yield futures
    pool.shutdown(wait=True)


def test_run_with_no_arguments_runs_the_whole_pipeline_quickly(results, workspace):
    result = succeeded(results, "run-defaults")
    out = workspace / "defaults" / "amgp-out"
    assert files(out) == {"dense.pt2", "dense.safetensors", "dense.onnx", "compact.pt2", "compact.safetensors",
                          "compact.onnx", "plan.json", "groups.json", "latency.json", "latency.md", "report.md",
                          "summary.json", "train_curve.png", "latency.png"}  # the plots: matplotlib is a test extra
    assert "[7/7]" in result.stderr and str(out.resolve()) in result.stdout  # progress on stderr, results on stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pruning"]["flops_after"] < summary["pruning"]["flops_before"]
    assert 0.5 < summary["training"]["eval"]["auc"] <= 1.0
    assert result.seconds < 120, f"'amgp-compress run' took {result.seconds:.0f} s"


@pytest.mark.parametrize("name", ["analyze-pt2", "analyze-sd"])
def test_analyze(results, workspace, name):
    result = succeeded(results, name)
    assert "bottom_mlp.0.weight[0]" in result.stdout and "4 prunable" in result.stdout
    if name == "analyze-pt2":
        groups = json.loads((workspace / name / "groups.json").read_text())["groups"]
        assert [g["full_size"] for g in groups if g["prunable"]] == [16, 32, 16, 8]
    else:
        assert "top_mlp.1.weight[0]" not in result.stdout  # --prunable-only


@pytest.mark.parametrize("name", ["prune-pt2", "prune-sd"])
def test_prune_writes_models_and_a_plan_that_recreates_them(results, workspace, name):
    succeeded(results, name)
    out = workspace / name
    assert files(out) == {"pruned.pt2", "pruned.safetensors", "plan.json", "prune_report.json"}
    report = json.loads((out / "prune_report.json").read_text())
    assert report["flops_after"] <= (0.5 if name == "prune-sd" else 1.0) * report["flops_before"]
    compact = load_model(out / "pruned.pt2")
    recreated = load_model(out / "pruned.safetensors", factory="amgp_fx.models.dlrm:build", factory_kwargs={"preset": "small"},
                           plan=json.loads((out / "plan.json").read_text()))
    torch.testing.assert_close(recreated.module(*compact.example_inputs), compact.module(*compact.example_inputs))


@pytest.mark.parametrize("name, steps", [("train-pt2", 10), ("train-sd", 200)])
def test_train_writes_the_trained_model_metrics_and_checkpoints(results, workspace, name, steps):
    succeeded(results, name)
    out = workspace / name
    assert {"trained.pt2", "trained.safetensors", "train_summary.json", "train_metrics.jsonl",
            f"checkpoints/checkpoint_{steps:09d}.pt"} <= files(out)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == steps and math.isfinite(summary["train_loss"])
    trained = load_model(out / "trained.pt2")
    assert trained.module(*trained.example_inputs).shape == (8,)


def test_killed_training_resumes_to_the_uninterrupted_result(results, workspace):
    """SIGKILL a real `train` at its first checkpoint; `--resume` ends exactly where `train-sd` did."""
    from safetensors.torch import load_file

    args = ["train", "dense.safetensors", "--model", "dlrm", *RESUMABLE_TRAIN, "-o", "killed"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "amgp_fx.cli", *args], cwd=workspace, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = workspace / "killed" / "checkpoints" / "checkpoint_000000020.pt"
    deadline = time.monotonic() + 240
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.kill()
    assert process.wait() == -9, "training finished before it could be killed"
    assert not (workspace / "killed" / "trained.safetensors").exists()  # no output of the killed run
    resumed = run_cli([*args, "--resume"], workspace)
    assert resumed.returncode == 0, resumed.stderr
    baseline = succeeded(results, "train-sd") and workspace / "train-sd"
    summary, expected = (json.loads((folder / "train_summary.json").read_text()) for folder in
                         (workspace / "killed", baseline))
    assert (summary["steps"], summary["train_loss"], summary["eval"]) == \
        (expected["steps"], expected["train_loss"], expected["eval"])
    weights, expected_weights = (load_file(folder / "trained.safetensors") for folder in
                                 (workspace / "killed", baseline))
    for name, tensor in expected_weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["export-pt2", "export-sd"])
def test_export_writes_a_checked_onnx_file(results, workspace, name):
    result = succeeded(results, name)
    out = workspace / name
    assert files(out) == {"model.onnx", "export_report.json"}
    report = json.loads((out / "export_report.json").read_text())
    if name == "export-pt2":
        assert report["max_abs_diff"] <= report["atol"] and "parity max" in result.stdout
    else:
        assert report["dynamic_batch"] is False and report["max_abs_diff"] is None


@pytest.mark.parametrize("name, runtimes", [("bench-pt2", {"ort", "torch-eager"}), ("bench-sd", {"torch-eager"})])
def test_bench_writes_latency_records(results, workspace, name, runtimes):
    from amgp_fx.bench import cuda_provider_available

    # --device auto: ONNX Runtime's CUDA provider where onnxruntime-gpu and a GPU are there
    ort = "ort-cuda" if cuda_provider_available() else "ort-cpu"
    runtimes = {ort if r == "ort" else r for r in runtimes}
    succeeded(results, name)
    records = json.loads((workspace / name / "latency.json").read_text())["records"]
    assert {r["runtime"] for r in records} == runtimes
    assert sorted({r["batch_size"] for r in records}) == [1, 4]
    assert all(r["p50_ms"] > 0 and r["flops"] > 0 for r in records)


@pytest.mark.parametrize("name", ["run-pt2", "run-sd"])
def test_run_on_saved_models(results, workspace, name):
    succeeded(results, name)
    out = workspace / name
    assert {"dense.onnx", "compact.onnx", "compact.pt2", "plan.json", "report.md"} <= files(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pruning"]["flops_after"] <= (0.6 if name == "run-sd" else 1.0) * summary["pruning"]["flops_before"]
    assert ("training" in summary) == (name == "run-pt2")


# -- in-process: help and parsing ---------------------------------------------------------------------
@pytest.mark.parametrize("command", ["analyze", "prune", "train", "export", "bench", "run"])
def test_every_command_explains_itself_with_an_example(command, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"amgp-compress {command}" in text


def test_usage_errors_are_one_line_with_exit_code_2(capsys):
    assert main([]) == 2
    assert main(["prune", "--no-such-flag"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("amgp-compress: error: ") for line in lines)
    assert "unrecognized arguments: --no-such-flag" in lines[1]


finite_fractions = st.floats(min_value=0.0, max_value=1.0, exclude_min=True, exclude_max=True)


@given(finite_fractions)
def test_ratio_parses_any_fraction_in_the_open_interval(value):
    assert parse_ratio(repr(value)) == value


@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not 0 < v < 1), st.text()))
def test_ratio_refuses_everything_else_with_a_prune_request_error(value):
    text = value if isinstance(value, str) else repr(value)
    try:
        parsed = parse_ratio(text)
    except PruneRequestError as error:
        assert "Pass a fraction such as 0.5" in error.line()
    else:
        assert 0 < parsed < 1  # a random string that happens to be a fraction


@given(st.lists(st.integers(1, 10**6), min_size=1, max_size=8))
def test_batch_sizes_round_trip(sizes):
    assert parse_batch_sizes(",".join(map(str, sizes))) == tuple(dict.fromkeys(sizes))


@pytest.mark.parametrize("text", ["\u00b2", "1,\u0663", "\uff11"])  # superscript two, Arabic-Indic three, fullwidth one
def test_batch_sizes_refuse_non_ascii_digits(text):
    with pytest.raises(UsageError, match="not a positive integer"):
        parse_batch_sizes(text)


@given(st.text(max_size=20))
def test_batch_sizes_never_crash(text):
    try:
        sizes = parse_batch_sizes(text)
    except UsageError:
        return
    assert sizes and all(size >= 1 for size in sizes)


@given(st.text(alphabet=st.characters(blacklist_characters="=", blacklist_categories=("Cs",)), min_size=1),
       finite_fractions)
def test_group_ratio(group, value):
    if not group.strip():
        return
    assert parse_group_ratio(f"{group}={value!r}") == (group.strip(), value)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(), lambda c: st.lists(c, max_size=3)
                    | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=8))
def test_factory_kwargs_accept_json_objects_only(value):
    text = json.dumps(value)
    if isinstance(value, dict):
        assert parse_factory_kwargs(text) == value
    else:
        with pytest.raises(UsageError, match="must be a JSON object"):
            parse_factory_kwargs(text)


dims = st.lists(st.integers(1, 64), max_size=3)
bounds = st.floats(-1e3, 1e3, allow_nan=False)
specs = st.lists(st.tuples(st.sampled_from(["float32", "float64", "int64", "int32", "bool"]), dims,
                           bounds, st.floats(0.5, 100), st.booleans()), min_size=1, max_size=4)


@given(specs)
def test_input_spec_round_trips_and_makes_matching_tensors(entries):
    from amgp_fx.model_inputs import make_inputs

    tensor_specs = []
    for dtype, shape, low, width, ranged in entries:
        integer = dtype.startswith("int")
        low, high = (math.floor(low), math.floor(low) + math.ceil(width)) if integer else (low, low + width)
        ranged = ranged and dtype != "bool"
        tensor_specs.append(TensorSpec(dtype, ("B", *shape), float(low) if ranged else None,
                                       float(high) if ranged else None))
    text = format_input_spec(tensor_specs)
    assert parse_input_spec(text) == tuple(tensor_specs)
    for spec, tensor in zip(tensor_specs, make_inputs(tensor_specs, batch_size=3), strict=True):
        assert tuple(tensor.shape) == (3, *spec.shape[1:]) and str(tensor.dtype) == f"torch.{spec.dtype}"
        if spec.low is not None and tensor.numel():  # integers in [low, high), floats in [low, high]
            low, high = (torch.tensor(bound, dtype=torch.float64).to(tensor.dtype) for bound in (spec.low, spec.high))
            assert low <= tensor.min() and tensor.max() <= high  # compared in the tensor's precision
            assert not spec.is_integer or tensor.max() < high


@given(st.text(max_size=40))
def test_input_spec_errors_are_input_spec_errors(text):
    try:
        parse_input_spec(text)
    except InputSpecError as error:
        assert "float32[B,13];int64[B,26]:0..1000" in error.line()


def test_parser_keeps_defaults_that_run_needs():
    args = build_parser().parse_args(["run"])
    assert (args.ratio, args.model_file, args.model_name, args.output_dir) == (0.5, None, None, "amgp-out")
    assert isinstance(CliError("x"), Exception)


@pytest.mark.parametrize("text", ["[" * 40 + "]" * 40, '{"a": ' + "[" * 40 + "]" * 40 + "}", "[" * 100_000 + "]" * 100_000])
def test_deep_factory_kwargs_are_refused_alike_on_every_python(text):
    """Python 3.12 parses JSON far deeper than 3.11 before a RecursionError: the limit is ours, not the parser's."""
    with pytest.raises(UsageError, match="nested too deeply"):
        parse_factory_kwargs(text)
    assert parse_factory_kwargs('{"preset": "small", "widths": [[1, 2], [3]]}') == {"preset": "small",
                                                                                 "widths": [[1, 2], [3]]}

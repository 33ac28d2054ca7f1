"""What `amgp-compress` tells its user: run's report.md (model names, the training FLOPs AMGP saved,
plots, latency numbers), progress on stderr and its silence with -q, help texts that list the files
each command writes, and "wrote N files" counts, all through the installed entry point.

The commands run in subprocesses on tiny settings, two at a time, when the first test asks for them;
each test then checks its own command's output.
"""
from __future__ import annotations

import fnmatch
import io
import json
import os
import re
import shutil
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from amgp_fx.report_format import of_dense
from amgp_fx.schedule import DEFAULT_RECIPE
from tests.cli_results import files, succeeded

ENTRY = shutil.which("amgp-compress")
TINY_TRAIN = ["--rows", "2000", "--train-batch", "64"]
TINY_BENCH = ["--batch-sizes", "1,4", "--iters", "3", "--warmup", "1"]
COMMANDS: dict[str, list[str]] = {
    "run-amgp": ["run", "--amgp", "--steps", "30", *TINY_TRAIN, "--finetune-steps", "5", *TINY_BENCH, "-o", "run-amgp"],
    "run-dense-no-plot": ["run", "--steps", "10", *TINY_TRAIN, "--finetune-steps", "0", *TINY_BENCH,
                          "-o", "run-dense-no-plot"],
    "train": ["train", "--model", "dlrm", "--amgp", "--steps", "20", *TINY_TRAIN, "--checkpoint-every", "10",
              "-o", "train"],
    "train-quiet": ["train", "--model", "dlrm", "--steps", "4", *TINY_TRAIN, "-q", "-o", "train-quiet"],
    "export": ["export", "--model", "dlrm", "-o", "export"],
    "export-quiet": ["export", "--model", "dlrm", "-q", "-o", "export-quiet"],
    "bench": ["bench", "--model", "dlrm", *TINY_BENCH, "-o", "bench"],
}
NO_MATPLOTLIB = {"run-dense-no-plot"}  # run where `import matplotlib` fails, as without the plot extra


def run_entry(args: list[str], cwd: Path, hide_matplotlib: bool = False) -> subprocess.CompletedProcess:
    """The installed ``amgp-compress ARGS`` in ``cwd``, one torch thread (two run side by side)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if hide_matplotlib:
        blocker = cwd / "no-matplotlib"
        (blocker / "matplotlib").mkdir(parents=True, exist_ok=True)
        (blocker / "matplotlib" / "__init__.py").write_text("raise ImportError('matplotlib hidden by the test')\n")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(blocker), env.get("PYTHONPATH")) if p)
    return subprocess.run([ENTRY, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli-report")


@pytest.fixture(scope="module")
def results(workspace):
    assert ENTRY, "the amgp-compress entry point is not installed (pip install -e .)"
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures: dict[str, Future] = {name: pool.submit(run_entry, args, workspace, name in NO_MATPLOTLIB)
                                      for name, args in COMMANDS.items()}
        yield futures


def section(report: str, title: str) -> str:
    """The text of ``## title`` in a markdown report, up to the next section."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", report, re.S | re.M)
    assert match, f"report has no '## {title}' section"
    return match.group(1)


def table_rows(markdown: str) -> list[list[str]]:
    """The body rows of the first markdown table in ``markdown``."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


# -- run's report ------------------------------------------------------------------------------------------
def test_report_calls_the_amgp_trained_model_by_how_it_was_trained(results, workspace):
    succeeded(results, "run-amgp")
    out = workspace / "run-amgp"
    report = (out / "report.md").read_text()
    models = table_rows(section(report, "Models"))
    assert [row[0] for row in models] == ["full-size (AMGP-trained)", "compact"]
    assert "AMGP" in section(report, "What was done") and DEFAULT_RECIPE in report
    assert {r["variant"] for r in json.loads((out / "latency.json").read_text())["records"]} == {"full-size",
                                                                                                  "compact"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labels"]["full-size"] == "full-size (AMGP-trained)"


def test_a_dense_trained_model_is_labelled_dense_trained(results, workspace):
    succeeded(results, "run-dense-no-plot")
    report = (workspace / "run-dense-no-plot" / "report.md").read_text()
    assert [row[0] for row in table_rows(section(report, "Models"))] == ["full-size (dense-trained)", "compact"]
    assert "AMGP" not in report and "Training FLOPs" not in report


def test_saved_training_flops_are_in_summary_and_report_in_one_format(results, workspace):
    result = succeeded(results, "run-amgp")
    out = workspace / "run-amgp"
    amgp = json.loads((out / "summary.json").read_text())["amgp"]
    fraction = amgp["flops_vs_full_width"]
    assert fraction == pytest.approx(amgp["train_flops"] / amgp["full_width_train_flops"])
    assert 0.4 < fraction < 0.95  # the default recipe: 60% of the steps at half width, the rest full
    report = (out / "report.md").read_text()
    assert f"Training FLOPs: {of_dense(fraction)} of dense" in section(report, "Training")
    assert f"training FLOPs (AMGP): {of_dense(fraction)} of dense" in result.stdout
    assert not re.search(r"\d%\)", report)  # no "(35.0%)": fractions are written 0.35x everywhere
    assert "e-0" not in section(report, "Models") + section(report, "Latency")  # no 2.992e-06 GFLOPs


def test_train_counts_the_same_amgp_flops_as_the_hook_and_a_full_width_reference(results, workspace):
    succeeded(results, "train")
    out = workspace / "train"
    amgp = json.loads((out / "train_summary.json").read_text())["amgp"]
    records = [json.loads(line) for line in (out / "train_metrics.jsonl").read_text().splitlines()]
    hook = next(r for r in records if r["kind"] == "amgp_summary")
    assert amgp["train_flops"] == hook["train_flops"] and amgp["steps"] == hook["steps"] == 20
    full_step = next(r["flops_per_step"] for r in records if r["kind"] == "amgp_phase" and r["width"] == 1.0)
    assert amgp["full_width_train_flops"] == pytest.approx(20 * full_step, rel=0.05)  # a few short last batches
    assert amgp["full_width_train_flops"] > amgp["train_flops"]


def test_report_links_plots_that_exist(results, workspace):
    result = succeeded(results, "run-amgp")
    out = workspace / "run-amgp"
    report = (out / "report.md").read_text()
    linked = set(re.findall(r"\]\(([^)]+\.png)\)", report))
    assert linked == {"train_curve.png", "latency.png"}
    for name in linked:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert str(out / name) in result.stdout or f"run-amgp/{name}" in result.stdout  # the printed summary
    assert set(json.loads((out / "summary.json").read_text())["plots"].values()) == linked


def test_without_matplotlib_run_succeeds_and_says_how_to_get_plots(results, workspace):
    result = succeeded(results, "run-dense-no-plot")
    out = workspace / "run-dense-no-plot"
    assert not [name for name in files(out) if name.endswith(".png")]
    report = (out / "report.md").read_text()
    assert "pip install amgp-fx[plot]" in section(report, "Training") and "](" not in section(report, "Training")
    assert "pip install amgp-fx[plot]" in result.stdout
    assert "plots_missing" in json.loads((out / "summary.json").read_text())


def test_samples_per_s_is_batch_over_p50_everywhere(results, workspace):
    succeeded(results, "run-amgp")
    out = workspace / "run-amgp"
    records = json.loads((out / "latency.json").read_text())["records"]
    for record in records:
        assert record["samples_per_s"] == pytest.approx(record["batch_size"] / (record["p50_ms"] / 1e3), rel=1e-9)
    rows = table_rows((out / "latency.md").read_text())
    assert len(rows) == len(records)
    for row, record in zip(rows, records):
        assert row[7] == f"{record['batch_size'] / (record['p50_ms'] / 1e3):,.0f}"  # samples/s (at p50)
        assert float(row[4]) == pytest.approx(record["p50_ms"], abs=5e-4)
    headline = [line for line in section((out / "report.md").read_text(), "Latency").splitlines()
                if line.startswith("- ")]
    assert len(headline) == len({r["runtime"] for r in records})  # one line per runtime, at the largest batch
    for line in headline:
        runtime = line[2:].split(",")[0]
        full, compact = (next(r for r in records if r["runtime"] == runtime and r["variant"] == v
                              and r["batch_size"] == 4) for v in ("full-size", "compact"))
        assert f"{full['p50_ms']:.3f} ms full-size" in line and of_dense(compact["p50_ms"] / full["p50_ms"]) in line
        assert f"{4 / (full['p50_ms'] / 1e3):,.0f} vs {4 / (compact['p50_ms'] / 1e3):,.0f} samples/s" in line


# -- progress ------------------------------------------------------------------------------------------------
def test_train_shows_step_progress_with_the_loss_on_stderr(results):
    result = succeeded(results, "train")
    steps = re.findall(r"step (\d+)/20", result.stderr)
    assert steps and steps[-1] == "20" and [int(s) for s in steps] == sorted(int(s) for s in steps)
    assert re.search(r"step \d+/20: loss \d\.\d{4}", result.stderr)
    assert "training FLOPs 0." in result.stderr and "x of dense" in result.stderr
    assert "step " not in result.stdout and "[2/3]" not in result.stdout  # stdout: results only


def test_export_shows_its_stages_on_stderr(results):
    result = succeeded(results, "export")
    stages = [result.stderr.find(name) for name in ("tracing", "ONNX export", "checker", "ORT parity")]
    assert -1 not in stages and stages == sorted(stages), result.stderr
    assert "tracing" not in result.stdout


def test_bench_shows_loading_export_and_timing_on_stderr(results):
    result = succeeded(results, "bench")
    lines = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert [line.split(" ...")[0] for line in lines] == [
        "[1/3] loading the model", "[2/3] exporting a scratch ONNX file to time",
        "[3/3] timing model (ort, torch-eager) at batch sizes 1,4"]
    assert re.search(r"\(\d+\.\d s\)$", lines[-1])


@pytest.mark.parametrize("name", ["train-quiet", "export-quiet"])
def test_quiet_silences_progress(results, workspace, name):
    result = succeeded(results, name)
    for marker in ("[1/", "step ", "tracing", "wrote "):
        assert marker not in result.stderr + result.stdout
    assert files(workspace / name)  # it did the work


# -- help texts and file counts ------------------------------------------------------------------------------
def help_files(command: str) -> list[str]:
    """The file names (and patterns) the help of ``command`` says it writes."""
    text = subprocess.run([ENTRY, command, "--help"], capture_output=True, text=True, check=True).stdout
    writes = text[text.index("\nwrites"):]
    return re.findall(r"[\w*/-]+\.(?:pt2|safetensors|jsonl|json|onnx|md|png|pt)\b", writes)


@pytest.mark.parametrize("command, folder", [("train", "train"), ("run", "run-amgp"), ("bench", "bench"),
                                             ("export", "export")])
def test_help_lists_exactly_the_files_the_command_writes(results, workspace, command, folder):
    succeeded(results, folder)
    listed, present = help_files(command), files(workspace / folder)
    assert listed
    assert [p for p in listed if not fnmatch.filter(present, p)] == []  # nothing listed that is not written
    assert [f for f in present if not any(fnmatch.fnmatch(f, p) for p in listed)] == []  # nothing unlisted


@pytest.mark.parametrize("name", ["train", "export", "bench"])
def test_wrote_count_is_the_number_of_files_in_the_folder(results, workspace, name):
    result = succeeded(results, name)
    count = re.search(r"wrote (\d+) files", result.stdout)
    assert count, result.stdout
    assert int(count.group(1)) == len(files(workspace / name))


# -- the Progress helper, in-process -------------------------------------------------------------------------
class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_stage_lines_parts_and_bars_in_a_log():
    from amgp_fx.cli.progress import Progress

    log = io.StringIO()
    progress = Progress(2, quiet=False, stream=log)
    progress.stage("exporting")
    progress.part("tracing")
    progress.part("checker")
    progress.done("40 bytes")
    progress.stage("training for 20 steps")
    bar = progress.bar(20)
    for step in range(20):
        bar.update(1, f"loss {step}")
    bar.close()
    progress.done("loss 19")
    lines = log.getvalue().splitlines()
    assert re.fullmatch(r"\[1/2\] exporting \.\.\. tracing, checker\. 40 bytes \(\d+\.\d s\)", lines[0])
    assert lines[1] == "[2/2] training for 20 steps ..."
    assert lines[2:12] == [f"[2/2] step {n}/20: loss {n - 1}" for n in range(2, 21, 2)]  # a line per tenth
    assert re.fullmatch(r"\[2/2\] training for 20 steps \.\.\. loss 19 \(\d+\.\d s\)", lines[12])
    assert len(lines) == 13


def test_progress_bar_on_a_terminal_is_tqdm_and_clears_itself():
    from amgp_fx.cli.progress import Progress

    terminal = Terminal()
    progress = Progress(1, quiet=False, stream=terminal)
    progress.stage("training")
    with progress.bar(5) as bar:
        for _ in range(5):
            bar.update(1, "loss 0.5")
    progress.done("ok")
    text = terminal.getvalue()
    assert "\r[1/1] training:   0%|" in text and "0/5" in text  # tqdm draws over the stage line
    assert "\n" not in text[:-1]  # one line on the terminal: the bar cleared itself, the stage line came back
    assert re.search(r"\r +\r\[1/1\] training \.\.\. ok \(\d+\.\d s\)\n$", text), repr(text)


def test_quiet_progress_writes_nothing_and_a_note_gets_its_own_line():
    from amgp_fx.cli.progress import Progress

    log = io.StringIO()
    quiet = Progress(1, quiet=True, stream=log)
    quiet.stage("x")
    quiet.bar(10).update(10, "loss 1")
    quiet.done("y")
    assert log.getvalue() == ""
    loud = Progress(1, quiet=False, stream=log)
    loud.stage("loading")
    Progress.make_room()  # what common.note does before its line
    log.write("amgp-compress: note: something\n")
    loud.done("done")
    assert log.getvalue().splitlines() == ["[1/1] loading ...", "amgp-compress: note: something",
                                           log.getvalue().splitlines()[2]]
    assert log.getvalue().splitlines()[2].startswith("[1/1] loading ... done (")


@pytest.mark.parametrize("training, label", [
    (None, "full-size (untrained here)"), ({"steps": 5}, "full-size (dense-trained)"),
    ({"amgp": {"method": "amgp", "final": "full"}}, "full-size (AMGP-trained)"),
    ({"amgp": {"method": "amgp", "final": "compact"}}, "AMGP-trained (ends compact)"),
    ({"amgp": {"method": "prune_only", "final": "compact"}}, "prune-only-trained (ends compact)"),
    ({"amgp": {"method": "dense", "final": "full"}}, "full-size (dense-trained)")])
def test_the_model_before_pruning_is_named_by_its_training(training, label):
    from amgp_fx.cli.run import full_size_label

    assert full_size_label(training) == label


@pytest.mark.parametrize("module_name", ["amgp_fx.report_format", "amgp_fx.latency_report", "amgp_fx.amgp_report"])
def test_report_module_examples_run(module_name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module_name))
    assert result.attempted > 0 and result.failed == 0


def test_a_resumed_loop_counts_on_from_where_it_stopped():
    from amgp_fx.cli.progress import Progress

    for stream in (io.StringIO(), Terminal()):
        progress = Progress(1, quiet=False, stream=stream)
        progress.stage("training")
        bar = progress.bar(10)
        bar.start_at(6)
        for _ in range(4):
            bar.update(1)
        bar.close()
        progress.done()
        text = stream.getvalue()
        if isinstance(stream, Terminal):
            assert "6/10" in text and "0/10" not in text.split("6/10")[-1]  # tqdm drawn from 6 on
        else:
            assert "step 7/10" in text and "step 6/10" not in text and text.count("step ") == 4

"""Deliberately broken inputs through the real ``amgp-compress`` process: each must end with exactly
one stderr line ``amgp-compress: error: <problem>. <fix>``, its own exit code, no traceback, and no
output files (the output folder is not even created).

The cases run side by side when the first test asks for them; each test checks one.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
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
GOOD_ROW = "\t".join(["1"] + ["3"] * 13 + ["a1"] * 26)

# name: (arguments, exit code class, pattern the error line must match)
CASES: dict[str, tuple[list[str], str, str]] = {
    "truncated-pt2": (["prune", "truncated.pt2", "--ratio", "0.5"], "ModelFileError",
                      "truncated.pt2 is not a torch.export archive: it is truncated, corrupt"),
    "corrupt-pt2": (["export", "corrupt.pt2"], "ModelFileError", "corrupt.pt2 is corrupt: .* fails its CRC check"),
    "missing-model": (["analyze", "absent.pt2"], "ModelFileError", "model file absent.pt2 does not exist"),
    "pickle-without-trust": (["prune", "whole.pt", "--ratio", "0.5"], "ModelFileError",
                             "pickled Python objects .* pass --trust-pickle if you trust"),
    "state-dict-of-another-model": (["prune", "dense.safetensors", "--factory", "amgp_fx.models.dlrm:build",
                                     "--factory-kwargs", '{"preset": "small", "embedding_dim": 16, '
                                     '"bottom_mlp": [16, 16]}', "--ratio", "0.5"], "ModelFileError",
                                    "does not fit the factory's model: .*size mismatch"),
    "factory-does-not-import": (["prune", "dense.safetensors", "--factory", "no_such_package.models:build",
                                 "--ratio", "0.5"], "FactoryError",
                                "cannot import 'no_such_package.models' .*ModuleNotFoundError"),
    "factory-attribute-missing": (["export", "dense.safetensors", "--factory", "my_models.py:nope"], "FactoryError",
                                  "'my_models.py' has no attribute 'nope'"),
    "input-wrong-shape": (["prune", "dense.pt2", "--input-shape", "float32[B,5];int64[B,4]:0..20", "--ratio", "0.5"],
                          "InputSpecError", r"fails on example inputs float32\[B,5\].*Pass inputs of the shapes"),
    "input-wrong-dtype": (["export", "dense.pt2", "--input-shape", "float32[B,4];float32[B,4]"], "InputSpecError",
                          r"fails on example inputs float32\[B,4\];float32\[B,4\]"),
    "input-spec-malformed": (["prune", "dense.pt2", "--input-shape", "float32[13]", "--ratio", "0.5"],
                             "InputSpecError", "must have the batch B as its first dim"),
    "untraceable-model": (["prune", "--factory", "untraceable.py:build", "--ratio", "0.5"], "TraceFailure",
                          "torch.export could not trace Untraceable.*untraceable.py:8.*What to try"),
    "ratio-above-one": (["prune", "dense.pt2", "--ratio", "1.5"], "PruneRequestError",
                        r"ratio '1.5' is outside \(0, 1\). Pass a fraction"),
    "ratio-zero": (["run", "--ratio", "0"], "PruneRequestError", r"ratio '0' is outside \(0, 1\)"),
    "ratio-empties-a-layer": (["prune", "dense.pt2", "--ratio", "0.97", "--max-layer-ratio", "1"],
                              "PruneRequestError", r"ratio 0.97 would empty group g0 .* Use a ratio below 0.938"),
    "non-prunable-group": (["prune", "dense.pt2", "--ratio", "0.5", "--groups", "g3"], "PruneRequestError",
                           "group g3 .* cannot be pruned: a single channel"),
    "plan-of-another-model": (["prune", "dense.pt2", "--apply-plan", "other_plan.json"], "PruneRequestError",
                              "is not in this model: the plan was made for another model"),
    "unwritable-output": (["prune", "dense.pt2", "--ratio", "0.5", "-o", "a_file/out"], "OutputPathError",
                          r"cannot write to a_file/out: Not a directory \(a_file is a file\). Pass a writable"),
    "malformed-row": (["train", *CRITEO_SHAPED, "--data", "bad_row.tsv"], "DataError",
                      r"bad_row.tsv:3: expected 40 tab-separated columns, found 3. .*--skip-malformed"),
    "nan-in-data": (["train", *CRITEO_SHAPED, "--data", "nan.tsv"], "DataError",
                    r"nan.tsv:2: column 4 \(dense 3\): 'nan' is not an integer"),
    "data-for-another-model": (["run", "--data", "nan.tsv"], "DataError",
                               "Criteo TSV data .* but the model takes 4 dense and 4 sparse inputs"),
    "factory-kwargs-not-json": (["export", "dense.safetensors", "--factory", "amgp_fx.models.dlrm:build",
                                 "--factory-kwargs", "{preset: small}"], "UsageError",
                                "--factory-kwargs is not valid JSON"),
    "unknown-flag": (["prune", "dense.pt2", "--ratoi", "0.5"], "UsageError", "unrecognized arguments: --ratoi"),
}


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "amgp_fx.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> Path:
    """A folder of damaged and mismatched inputs next to a good small DLRM."""
    folder = tmp_path_factory.mktemp("broken")
    torch.manual_seed(0)
    model = models.build_model("dlrm")
    save_pt2(model, model.example_inputs(8), folder / "dense.pt2")
    save_state_dict(model, folder / "dense.safetensors")
    data = (folder / "dense.pt2").read_bytes()
    (folder / "truncated.pt2").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    (folder / "corrupt.pt2").write_bytes(bytes(flipped))
    torch.save(model, folder / "whole.pt")
    (folder / "my_models.py").write_text("from amgp_fx import models\n\ndef build():\n    return models.build_model('dlrm')\n")
    (folder / "untraceable.py").write_text(textwrap.dedent("""\
        import torch

        class Untraceable(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = torch.nn.Linear(4, 8)
            def forward(self, x):
                if x.sum() > 0:  # a branch on tensor values: torch.export cannot trace it
                    return self.linear(x)
                return -self.linear(x)
            def example_inputs(self, batch_size):
                return (torch.randn(batch_size, 4),)

        def build():
            return Untraceable()
    """))
    (folder / "a_file").write_text("not a folder")
    (folder / "other_plan.json").write_text(json.dumps({
        "format": "amgp-fx-pruning-plan", "version": 1,
        "groups": [{"id": "g0", "name": "tower.0.weight[0]", "kind": "hidden", "full_size": 64, "keep": [0, 1]}]}))
    (folder / "bad_row.tsv").write_text(f"{GOOD_ROW}\n{GOOD_ROW}\n1\t2\t3\n" + f"{GOOD_ROW}\n" * 30)
    nan_row = GOOD_ROW.split("\t")
    nan_row[3] = "nan"
    (folder / "nan.tsv").write_text(f"{GOOD_ROW}\n" + "\t".join(nan_row) + "\n" + f"{GOOD_ROW}\n" * 30)
    return folder


@pytest.fixture(scope="module")
def outcomes(broken):
    """Each case run in its own empty working folder (a copy-free view: inputs are linked in)."""
    def one(name: str):
        args, _, _ = CASES[name]
        cwd = broken / "cases" / name
        cwd.mkdir(parents=True)
        for item in broken.iterdir():
            if item.name != "cases":
                (cwd / item.name).symlink_to(item)
        before = {p.name for p in cwd.iterdir()}
        # -q: progress lines go to stderr too; the one line checked here is the error
        result = run_cli([*args, "-q", *([] if "-o" in args or args[0] == "analyze" else ["-o", "out"])], cwd)
        return result, {p.name for p in cwd.iterdir()} - before, list(cwd.rglob(".amgp-staging-*"))

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(one, name) for name in CASES}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_broken_input_gets_one_clear_line_a_distinct_code_and_no_files(outcomes, name):
    _, error_class, pattern = CASES[name]
    result, new_entries, staging = outcomes[name]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{result.stderr}"
    assert lines[0].startswith("amgp-compress: error: ") and "Traceback" not in result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert lines[0].endswith("."), "the line ends with the fix, as a sentence"
    assert result.returncode == EXIT_CODES[error_class], (result.returncode, lines[0])
    assert not new_entries and not staging, f"left output behind: {new_entries} {staging}"


def test_exit_codes_are_distinct():
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES) and 0 not in EXIT_CODES.values()
    assert set(EXIT_CODES.values()).isdisjoint({1, 130})  # internal error, interrupted

"""Saved-model formats: .pt2 round trips, state dicts with factories and plans, safe refusal of
pickles and damaged files, example inputs, and staged (all-or-nothing) outputs."""
from __future__ import annotations

import io
import json
import logging
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

import amgp_fx
from amgp_fx import models
from amgp_fx.cli.output import OutputDir
from amgp_fx.errors import FactoryError, InputSpecError, ModelFileError, OutputPathError, TraceFailure, UsageError
from amgp_fx.model_inputs import load_example_batch, parse_input_spec
from amgp_fx.model_io import build_from_factory, check_pt2_archive, load_model, save_pt2, save_state_dict
from amgp_fx.pruning_plan import PruningPlan, prune_

FACTORY = "amgp_fx.models:build_model"
KWARGS = {"name": "dlrm", "preset": "small"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small DLRM saved as .pt2 and as a state dict, and a pruned copy of both."""
    folder = tmp_path_factory.mktemp("saved")
    torch.manual_seed(0)
    model = models.build_model("dlrm")
    inputs = model.example_inputs(8)
    save_pt2(model, inputs, folder / "dense.pt2", {"factory": FACTORY, "factory_kwargs": KWARGS})
    save_state_dict(model, folder / "dense.safetensors")
    save_state_dict(model, folder / "dense.pt")
    dense_out = model(*inputs).detach()
    graph = amgp_fx.analyze(model, inputs)
    plan, _ = prune_(graph, 0.5)
    save_pt2(graph.module, inputs, folder / "pruned.pt2", {"plan": plan.to_dict()})
    save_state_dict(graph.module, folder / "pruned.safetensors", {"plan": plan.to_dict()})
    save_state_dict(graph.module, folder / "pruned.pt")
    plan.save(folder / "plan.json")
    return {"folder": folder, "inputs": inputs, "dense": dense_out, "pruned": graph.module(*inputs).detach(),
            "plan": plan}


def test_pt2_round_trip_keeps_outputs_inputs_and_metadata(saved):
    loaded = load_model(saved["folder"] / "dense.pt2")
    assert isinstance(loaded.module, torch.fx.GraphModule)
    assert loaded.metadata["factory_kwargs"] == KWARGS
    assert [tuple(t.shape) for t in loaded.example_inputs] == [(8, 4), (8, 4)]  # the batch saved in the archive
    torch.testing.assert_close(loaded.module(*saved["inputs"]), saved["dense"])


def test_analyze_and_prune_a_loaded_pt2_module(saved, tmp_path):
    """analyze() re-exports the unlifted module of a loaded program; the result prunes and saves."""
    loaded = load_model(saved["folder"] / "dense.pt2", batch_size=5)
    assert loaded.example_inputs[0].shape[0] == 5  # the saved batch, resized
    graph = amgp_fx.analyze(loaded.module, loaded.example_inputs)
    assert [g.full_size for g in graph.prunable_groups()] == [16, 32, 16, 8]
    plan, _ = prune_(graph, 0.5)
    assert plan.to_dict()["groups"] == saved["plan"].to_dict()["groups"]  # same groups, same channels
    save_pt2(graph.module, loaded.example_inputs, tmp_path / "again.pt2")
    torch.testing.assert_close(load_model(tmp_path / "again.pt2").module(*saved["inputs"]), saved["pruned"])


@pytest.mark.parametrize("name", ["dense.safetensors", "dense.pt"])
def test_state_dict_with_factory(saved, name):
    loaded = load_model(saved["folder"] / name, factory=FACTORY, factory_kwargs=KWARGS)
    torch.testing.assert_close(loaded.module(*saved["inputs"]), saved["dense"])
    assert loaded.metadata["factory"] == FACTORY


def test_pruned_state_dict_recreated_from_factory_and_plan(saved):
    """The plan stored in the safetensors metadata (or passed explicitly) re-creates the shapes."""
    from_metadata = load_model(saved["folder"] / "pruned.safetensors", factory=FACTORY, factory_kwargs=KWARGS)
    torch.testing.assert_close(from_metadata.module(*saved["inputs"]), saved["pruned"])
    explicit = load_model(saved["folder"] / "pruned.pt", factory=FACTORY, factory_kwargs=KWARGS,
                          plan=saved["plan"].to_dict())
    torch.testing.assert_close(explicit.module(*saved["inputs"]), saved["pruned"])


def test_pruned_state_dict_without_plan_names_the_fix(saved):
    with pytest.raises(ModelFileError, match="does not fit the factory's model.*--plan"):
        load_model(saved["folder"] / "pruned.pt", factory=FACTORY, factory_kwargs=KWARGS)


def test_state_dict_without_factory_says_which_factory(saved):
    with pytest.raises(UsageError, match="state dict: it needs the code"):
        load_model(saved["folder"] / "dense.safetensors")


def test_pickled_module_needs_trust(saved, tmp_path, caplog):
    torch.save(models.build_model("dlrm"), tmp_path / "whole.pt")
    with pytest.raises(ModelFileError, match="pickled Python objects.*--trust-pickle"):
        load_model(tmp_path / "whole.pt")
    with caplog.at_level(logging.WARNING, logger="amgp_fx.model_io"):
        loaded = load_model(tmp_path / "whole.pt", trust_pickle=True)
    assert "execute arbitrary code" in caplog.text
    assert loaded.module(*saved["inputs"]).shape == (8,)


def _rewrite_member(source: Path, target: Path, suffix: str, edit) -> None:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = old.read(info.filename)
            new.writestr(info, edit(data) if info.filename.endswith(suffix) else data)


def test_pt2_with_pickled_payload_is_refused_before_loading(saved, tmp_path):
    """A weights entry flagged use_pickle would make torch.export.load unpickle it."""
    def flag_pickle(data: bytes) -> bytes:
        config = json.loads(data)
        next(iter(config["config"].values()))["use_pickle"] = True
        return json.dumps(config).encode()

    _rewrite_member(saved["folder"] / "dense.pt2", tmp_path / "flagged.pt2", "_weights_config.json", flag_pickle)
    with pytest.raises(ModelFileError, match="pickled Python objects or compiled code"):
        check_pt2_archive(tmp_path / "flagged.pt2")


def test_pt2_whose_sample_inputs_need_pickle_is_refused(saved, tmp_path):
    def pickled(_: bytes) -> bytes:
        buffer = io.BytesIO()
        torch.save(((torch.nn.Linear(1, 1),), {}), buffer)  # a module: weights_only refuses it
        return buffer.getvalue()

    _rewrite_member(saved["folder"] / "dense.pt2", tmp_path / "sample.pt2", "sample_inputs/model.pt", pickled)
    with pytest.raises(ModelFileError, match="sample_inputs"):
        load_model(tmp_path / "sample.pt2")


@pytest.mark.parametrize("name, damage, message", [
    ("dense.pt2", "truncate", "not a torch.export archive"),
    ("dense.pt2", "flip", "fails its CRC check"),
    ("dense.safetensors", "truncate", "not a readable safetensors file"),
    ("dense.pt", "truncate", "not a readable torch file"),
])
def test_damaged_files(saved, tmp_path, name, damage, message):
    data = bytearray((saved["folder"] / name).read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 3] ^= 0xFF
    target = tmp_path / name
    target.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=message):
        load_model(target, factory=None if name.endswith(".pt2") else FACTORY,
                   factory_kwargs=None if name.endswith(".pt2") else KWARGS)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nope.pt2")
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(ModelFileError, match="unsupported model file type '.onnx'"):
        load_model(tmp_path / "model.onnx")


def test_factory_from_a_file_and_its_errors(tmp_path):
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        import torch
        def build(width=4):
            return torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.ReLU(), torch.nn.Linear(width, 1))
        def not_a_model():
            return 3
        CONSTANT = 1
    """))
    (tmp_path / "broken.py").write_text("def build(:\n")
    model = build_from_factory(f"{tmp_path / 'my_models.py'}:build", {"width": 6})
    assert model[0].out_features == 6
    cases = [
        ("no_such_package.models:build", "cannot import 'no_such_package.models'.*ModuleNotFoundError"),
        (f"{tmp_path / 'broken.py'}:build", "SyntaxError"),
        (f"{tmp_path / 'absent.py'}:build", "does not exist"),
        ("amgp_fx.models:no_such_function", "has no attribute 'no_such_function'"),
        (f"{tmp_path / 'my_models.py'}:CONSTANT", "not a callable"),
        (f"{tmp_path / 'my_models.py'}:not_a_model", "returned a int, not a torch.nn.Module"),
        ("models", "no ':callable' part"),
    ]
    for spec, message in cases:
        with pytest.raises(FactoryError, match=message):
            build_from_factory(spec)
    with pytest.raises(FactoryError, match="failed: TypeError.*--factory-kwargs"):
        build_from_factory(f"{tmp_path / 'my_models.py'}:build", {"depth": 2})


def test_example_inputs_from_a_spec_and_from_a_saved_batch(saved, tmp_path):
    dense, sparse = saved["inputs"]
    torch.save((dense, sparse), tmp_path / "batch.pt")
    from safetensors.torch import save_file

    save_file({"dense": dense, "sparse": sparse}, tmp_path / "batch.safetensors")
    for file in ("batch.pt", "batch.safetensors"):
        loaded = load_model(saved["folder"] / "dense.pt2", example_inputs=tmp_path / file)
        assert torch.equal(loaded.example_inputs[1], sparse)
    loaded = load_model(saved["folder"] / "dense.pt2", input_shape="float32[B,4];int64[B,4]:0..20", batch_size=3)
    assert [tuple(t.shape) for t in loaded.example_inputs] == [(3, 4), (3, 4)]
    torch.save({"not": "tensors"}, tmp_path / "bad.pt")
    with pytest.raises(InputSpecError, match="not tensors"):
        load_example_batch(tmp_path / "bad.pt")


@pytest.mark.parametrize("spec, message", [
    ("float32[B,5];int64[B,4]",  # the guard (torch < 2.13) or the shape check of the graph names the width
     r"fails on example inputs float32\[B,5\].*(dense.size\(\)\[1\] == 4|shape\[1\] to be equal to 4)"),
    ("float32[B,4];float32[B,4]", "fails on example inputs.*Long, Int"),
])
def test_wrong_example_inputs_name_the_shapes(saved, spec, message):
    with pytest.raises(InputSpecError, match=message):
        load_model(saved["folder"] / "dense.pt2", input_shape=spec)


def test_model_without_known_inputs_asks_for_a_spec():
    with pytest.raises(InputSpecError, match="--input-shape"):
        load_model(factory="torch.nn:Identity")


def test_spec_round_trip():
    specs = parse_input_spec(" float[B, 13] ; long[B,26]:0..100 ; bool[B] ")
    assert [s.format() for s in specs] == ["float32[B,13]", "int64[B,26]:0..100", "bool[B]"]


def test_save_failure_leaves_no_file(tmp_path):
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(TraceFailure, match="could not export DataDependent to save it as .pt2"):
        save_pt2(DataDependent(), (torch.randn(4, 3),), tmp_path / "model.pt2")
    assert list(tmp_path.iterdir()) == []


def test_output_dir_is_all_or_nothing(tmp_path):
    target = tmp_path / "new" / "out"
    with pytest.raises(RuntimeError):
        with OutputDir(target) as out:
            out.file("a.json").write_text("{}")
            raise RuntimeError("stage failed")
    assert not (tmp_path / "new").exists()  # the folders it created are gone too
    with OutputDir(target) as out:
        out.file("a.json").write_text("{}")
        out.file("sub/b.txt").write_text("b")
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == ["a.json",
                                                                                                 "sub/b.txt"]
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "file", tmp_path / "file" / "below"):
        with pytest.raises(OutputPathError):
            with OutputDir(bad):
                pass


def test_plan_json_is_versioned(saved):
    data = json.loads((saved["folder"] / "plan.json").read_text())
    assert data["format"] == "amgp-fx-pruning-plan" and data["version"] == 1
    assert PruningPlan.from_dict(data) == saved["plan"]

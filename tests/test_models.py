"""Reference models (`amgp_fx/models/`): contract, gradients, export with a dynamic batch, presets."""

from __future__ import annotations

import ast
import doctest
import importlib
import itertools
import pathlib

import pytest
import torch
from torch import nn

from amgp_fx import models
from amgp_fx.models import criteo, deepfm, dlrm

# tests/conftest.py puts tests/ on sys.path, so fixture modules import as `fixtures.*`.
from fixtures.export_checks import export_batch_dynamic

TRAILING_DIMS = {"mmoe": (2,)}
REPOSITORY = pathlib.Path(__file__).resolve().parents[1]


def _small(name: str) -> nn.Module:
    torch.manual_seed(0)
    return models.build_model(name)


def _mlp_parameters(widths) -> int:
    """Weights plus biases of a chain of Linear layers with the given widths."""
    return sum((fan_in + 1) * fan_out for fan_in, fan_out in itertools.pairwise(widths))


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_forward_returns_logits_per_sample(name):
    model = _small(name)
    dense, sparse = model.example_inputs(4)
    assert dense.dtype == torch.float32 and sparse.dtype == torch.int64
    assert sparse.shape == (4, len(model.table_sizes))
    assert model(dense, sparse).shape == (4, *TRAILING_DIMS.get(name, ()))


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_backward_reaches_every_parameter(name):
    model = _small(name)
    model(*model.example_inputs(4)).square().mean().backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, parameter_name
        grad = parameter.grad.to_dense()
        assert torch.isfinite(grad).all(), parameter_name
        assert grad.abs().sum() > 0, parameter_name


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_export_with_dynamic_batch_matches_eager(name):
    model = _small(name).eval()
    args = model.example_inputs(4)
    program = export_batch_dynamic(model, args)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(*args), model(*args))
        other_batch = model.example_inputs(6, seed=1)
        torch.testing.assert_close(program.module()(*other_batch), model(*other_batch))


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_default_preset_has_criteo_shape(name):
    model = models.build_model(name, "default")
    dimension = importlib.import_module(f"amgp_fx.models.{name}").PRESETS["default"]["embedding_dim"]
    embedding_parameters = sum(
        module.num_embeddings * module.embedding_dim
        for module in model.modules() if isinstance(module, nn.Embedding)
    )  # fmt: skip
    total = sum(parameter.numel() for parameter in model.parameters())
    assert model.num_dense == 13 and model.table_sizes == criteo.capped_table_sizes()
    assert embedding_parameters >= sum(criteo.capped_table_sizes()) * dimension
    assert total < 50_000_000, f"{name} default preset has {total} parameters"
    with torch.no_grad():
        assert model.eval()(*model.example_inputs(2)).shape == (2, *TRAILING_DIMS.get(name, ()))


@pytest.mark.parametrize("preset", ["default", "criteo", "mlperf", "industrial"])
def test_dlrm_preset_parameter_count_matches_formula(preset):
    config = dlrm.PRESETS[preset]
    with torch.device("meta"):
        model = dlrm.build(preset)
    num_fields, dimension = len(config["table_sizes"]), config["embedding_dim"]
    interaction_width = dimension + num_fields * (num_fields + 1) // 2
    expected = (
        sum(config["table_sizes"]) * dimension
        + _mlp_parameters((config["num_dense"], *config["bottom_mlp"]))
        + _mlp_parameters((interaction_width, *config["top_mlp"], 1))
    )
    assert sum(parameter.numel() for parameter in model.parameters()) == expected


def test_dlrm_interaction_equals_pairwise_dot_products():
    model = _small("dlrm")
    x = torch.randn(3, 8)
    embedded = [torch.randn(3, 8) for _ in model.table_sizes]
    vectors = [x] + embedded
    pairs = [(vectors[i] * vectors[j]).sum(1) for i in range(len(vectors)) for j in range(i)]
    expected = torch.cat([x, torch.stack(pairs, dim=1)], dim=1)
    torch.testing.assert_close(model.interact_features(x, embedded), expected)


@pytest.mark.parametrize("sparse_grads", [True, False])
def test_dlrm_embedding_gradient_layout_follows_sparse_grads(sparse_grads):
    model = models.build_model("dlrm", sparse_grads=sparse_grads)
    model(*model.example_inputs(4)).sum().backward()
    assert model.embeddings[0].weight.grad.is_sparse == sparse_grads


def test_dlrm_rejects_bottom_mlp_that_does_not_end_in_embedding_dim():
    with pytest.raises(ValueError, match=r"bottom_mlp must end in embedding_dim=8, got \(16, 4\)"):
        models.build_model("dlrm", bottom_mlp=(16, 4))


def test_factorization_machine_equals_sum_of_pairwise_dot_products():
    embedded = torch.randn(5, 4, 3)
    pairs = sum((embedded[:, i] * embedded[:, j]).sum(1) for i in range(4) for j in range(i + 1, 4))
    torch.testing.assert_close(deepfm.factorization_machine(embedded).squeeze(1), pairs)


def test_unknown_names_raise_with_the_choices():
    with pytest.raises(ValueError, match="unknown model 'dlrm2'; choose from"):
        models.build_model("dlrm2")
    with pytest.raises(ValueError, match=r"unknown DLRM preset 'huge'; choose from \['criteo', "):
        models.build_model("dlrm", "huge")


def test_presets_include_small_and_default():
    for name in models.MODEL_NAMES:
        assert {"small", "default"} <= set(models.presets(name)), name
    assert {"criteo", "mlperf", "industrial"} <= set(models.presets("dlrm"))


@pytest.mark.parametrize("folder", ["amgp_fx/models", "tests/fixtures"])
def test_reference_code_never_imports_amgp_fx(folder):
    paths = sorted((REPOSITORY / folder).glob("*.py"))
    assert len(paths) >= 3, folder  # the folder is there: the check is not vacuous
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(name.split(".")[0] == "amgp_fx" for name in names), path


@pytest.mark.parametrize("module_name", ["amgp_fx.models", "amgp_fx.models.criteo", *(f"amgp_fx.models.{name}" for name in models.MODEL_NAMES)])
def test_docstring_examples_run(module_name):
    result = doctest.testmod(importlib.import_module(module_name))
    assert result.attempted > 0 and result.failed == 0

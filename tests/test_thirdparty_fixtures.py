"""Third-party-style fixtures: shapes, gradients, size budget, export with a dynamic batch."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.utils._pytree as pytree
from torch.utils.flop_counter import FlopCounterMode

# tests/conftest.py puts tests/ on sys.path, so fixture modules import as `fixtures.*`.
from fixtures.export_checks import export_batch_dynamic
import fixtures.thirdparty
from fixtures.thirdparty import BATCH_SIZE, EXAMPLE_INPUTS, FIXTURES, OUTPUT_TRAILING_DIMS

NAMES = sorted(FIXTURES)
# Softmax is shift-invariant, so the bias of the Linear feeding it has an exactly zero gradient.
ZERO_GRADIENT_PARAMETERS = {"pytorchfm_afm": {"projection.bias"}}


def _fixture(name: str):
    torch.manual_seed(0)
    return FIXTURES[name]()


def _outputs(output) -> list[torch.Tensor]:
    return pytree.tree_leaves(output)


def test_registry_covers_the_required_kinds():
    required = {
        "fuxictr_dict_dnn", "deepctr_din", "bst_multihead_attention", "recbole_sasrec", "paddlerec_ple",
        "deepctr_dcn", "torchrec_dcn_m", "pytorchfm_ffm", "pytorchfm_xdeepfm", "two_tower",
        "torchrec_dlrm", "pytorchfm_nfm", "pytorchfm_afm", "multihot_embedding_bag",
    }  # fmt: skip
    assert required <= set(FIXTURES)
    assert set(FIXTURES) == set(EXAMPLE_INPUTS) == set(OUTPUT_TRAILING_DIMS)


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_and_size_budget(name):
    model, args = _fixture(name)
    assert model.training
    outputs = _outputs(model(*args))
    assert outputs and all(output.shape == (BATCH_SIZE, *OUTPUT_TRAILING_DIMS[name]) for output in outputs)
    assert sum(parameter.numel() for parameter in model.parameters()) < 200_000
    # The "< 20 ms per forward" budget, stated in FLOPs so that a busy machine cannot fail it:
    # 1 MFLOP is well under a millisecond on any CPU; the rest of a forward is Python overhead.
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(*args)
    assert counter.get_total_flops() < 1_000_000


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name):
    model, args = _fixture(name)
    loss = sum(output.square().mean() for output in _outputs(model(*args)))
    loss.backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name
        if parameter_name not in ZERO_GRADIENT_PARAMETERS.get(name, set()):
            assert parameter.grad.abs().sum() > 0, parameter_name


# nn.GRU re-assigns its `_flat_weights` list while exporting; the weights still come out as parameters.
@pytest.mark.filterwarnings("ignore:The tensor attributes self.gru_layers._flat_weights")
@pytest.mark.parametrize("name", NAMES)
def test_export_with_dynamic_batch_matches_eager(name):
    model, args = _fixture(name)
    model.eval()
    program = export_batch_dynamic(model, args)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(*args), model(*args))
        other_batch = EXAMPLE_INPUTS[name](6, seed=1)
        torch.testing.assert_close(program.module()(*other_batch), model(*other_batch))


def test_example_inputs_are_deterministic():
    for name in NAMES:
        first, second = EXAMPLE_INPUTS[name](3, seed=7), EXAMPLE_INPUTS[name](3, seed=7)
        for left, right in zip(pytree.tree_leaves(first), pytree.tree_leaves(second), strict=True):
            torch.testing.assert_close(left, right, rtol=0, atol=0)


def test_docstring_example_runs():
    result = doctest.testmod(fixtures.thirdparty)
    assert result.attempted > 0 and result.failed == 0

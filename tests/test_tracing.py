"""Tracing: wrong inputs and untraceable models fail with messages that name the line and the fix."""
import pytest
import torch
import torch.nn as nn

import amgp_fx
from amgp_fx.tracing import ExampleInputError, TraceError


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # branching on a tensor value cannot be traced
            return self.lin(x)
        return -self.lin(x)


def test_wrong_example_inputs_name_the_shapes():
    model = nn.Linear(4, 2)
    with pytest.raises(ExampleInputError, match=r"\(3, 5, 'torch.float32'\).*shapes and dtypes"):
        amgp_fx.trace(model, (torch.randn(3, 5),))


def test_untraceable_model_names_the_user_line():
    with pytest.raises(TraceError) as info:
        amgp_fx.trace(DataDependent(), (torch.randn(3, 4),))
    message = str(info.value)
    assert "test_tracing.py" in message and "x.sum() > 0" in message and "What to try" in message


def test_traced_module_shares_parameters_and_accepts_other_batch_sizes():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    traced = amgp_fx.trace(model, (torch.randn(3, 4),))
    assert all(a is b for a, b in zip(model.parameters(), traced.module.parameters()))
    x = torch.randn(11, 4)
    torch.testing.assert_close(traced.module(x), model(x))


def test_dict_and_keyword_inputs():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, features, scale=None):
            return self.lin(features["x"]) * scale

    model = TwoInputs()
    features, scale = {"x": torch.randn(4, 3)}, torch.randn(4, 1)
    traced = amgp_fx.trace(model, (features,), kwargs={"scale": scale})
    torch.testing.assert_close(traced.module(features, scale=scale), model(features, scale=scale))


def test_training_branch_is_detected():
    class EvalSigmoid(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 1)

        def forward(self, x):
            y = self.lin(x)
            return y if self.training else torch.sigmoid(y)

    assert not amgp_fx.trace(EvalSigmoid(), (torch.randn(3, 4),)).eval_matches
    assert amgp_fx.trace(nn.Sequential(nn.Linear(4, 2), nn.Dropout(0.5)), (torch.randn(3, 4),)).eval_matches

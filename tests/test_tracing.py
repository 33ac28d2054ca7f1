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


def test_traced_module_leaves_shape_guards_to_each_later_export():
    """Every later torch.export of the traced module traces its own guards. Re-tracing the first
    trace's guard call failed on torch 2.11 for a shrunk sequence-first attention (it could not
    prove ``min(B, 2*B) == B`` for a dynamic B; GPU check of issue 15)."""
    model = nn.MultiheadAttention(8, 2)  # sequence-first: (L, B, D)
    x = torch.randn(4, 3, 8)
    traced = amgp_fx.trace(model, (x, x, x))
    assert not [n.target for n in traced.module.graph.nodes if n.op == "call_module"]
    torch.testing.assert_close(traced.module(x, x, x)[0], model(x, x, x)[0])
    batch = torch.export.Dim("batch", min=2)
    again = torch.export.export(traced.module, (x, x, x), dynamic_shapes=({0: batch},) * 3, strict=False)
    y = torch.randn(9, 3, 8)
    torch.testing.assert_close(again.module()(y, y, y)[0], model(y, y, y)[0])


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


class AnyMask(nn.Module):
    """Sequence models often zero padded steps only `if mask.any()`: a data-dependent branch."""

    def __init__(self):
        super().__init__()
        self.table, self.lin = nn.Embedding(10, 4), nn.Linear(4, 1)

    def forward(self, ids):
        mask = ids == 0
        e = self.table(ids)
        if mask.any():
            e = e.masked_fill(mask.unsqueeze(-1), 0.0)
        return self.lin(e.sum(1)).squeeze(-1)


class PackedGRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.table, self.gru, self.lin = nn.Embedding(10, 4), nn.GRU(4, 6, batch_first=True), nn.Linear(6, 1)

    def forward(self, ids, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(self.table(ids), lengths, batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        return self.lin(h[-1]).squeeze(-1)


def _ids():
    ids = torch.randint(1, 10, (4, 5), generator=torch.Generator().manual_seed(0))
    ids[0, -1] = 0
    return ids


def _trace_error(model, args) -> str:
    with pytest.raises(TraceError) as info:
        amgp_fx.trace(model, args)
    return str(info.value)


def test_data_dependent_branch_names_the_line_and_the_change():
    message = _trace_error(AnyMask(), (_ids(),))
    assert "test_tracing.py:" in message and "if mask.any():" in message
    assert "<string>" not in message
    assert "torch.where" in message and "masked_fill" in message


def test_pack_padded_sequence_names_the_line_and_the_change():
    message = _trace_error(PackedGRU(), (_ids(), torch.tensor([5, 3, 2, 4])))
    assert "test_tracing.py:" in message and "self.gru(packed)" in message
    assert "<string>" not in message
    assert "padded batch" in message and "gather" in message


def test_libraries_beside_torch_are_user_code():
    """torchrec/, torchfm/ sit beside torch/ and start with its path: before, their frames were
    skipped and the message named torch.export's generated ``<string>:1``."""
    import os

    from amgp_fx.tracing import _is_user_file

    torch_dir = os.path.dirname(torch.__file__)
    assert _is_user_file(torch_dir + "fm" + os.sep + "model.py")
    assert _is_user_file(torch_dir + "rec" + os.sep + "modules" + os.sep + "embedding_modules.py")
    assert not _is_user_file(os.path.join(torch_dir, "nn", "modules", "rnn.py"))
    assert not _is_user_file("<string>") and not _is_user_file("<eval_with_key>.3")


def test_the_user_line_is_found_in_the_cause_of_a_re_raised_error():
    """torch can re-raise a failure from its own frames; the user's line is in the cause."""

    class Rewrapping(nn.Module):
        def forward(self, x):
            try:
                return AnyMask()(x)
            except Exception as e:  # the new error's traceback holds no line of AnyMask
                wrapper = eval("lambda: (_ for _ in ()).throw(RuntimeError('export failed'))")
                try:
                    wrapper()
                except RuntimeError as outer:
                    raise outer from e

    message = _trace_error(Rewrapping(), (_ids(),))
    assert "if mask.any():" in message and "<string>" not in message

"""Patterns that used to break a shrink (issue 13): each fixture shrinks every prunable group, runs
with the same output shapes, passes the mask oracle and the restoring round trip, and exports to
ONNX with ONNX Runtime parity; hand-derived checks say why each pattern is grouped as it is."""
import logging

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.utils._pytree as pytree

import amgp_fx
from amgp_fx.export import export_onnx
from amgp_fx.testing import assert_mask_oracle, assert_round_trip, random_keep
from amgp_fx.tracing import TraceError
from fixtures.shrink_patterns import INPUTS, MODELS, AnyMaskGRUHistory, PackedGRUHistory, make_fixture

NAMES = sorted(MODELS)


def _factory(name):
    return lambda: make_fixture(name)


def _shapes(output):
    return [tuple(t.shape) for t in pytree.tree_leaves(output)]


def _shrink_all(graph, fraction=0.75):
    keep = {g.id: random_keep(g, fraction, torch.Generator().manual_seed(0)) for g in graph.prunable_groups()}
    return amgp_fx.shrink_(graph, keep)


@pytest.mark.parametrize("name", NAMES)
def test_shrink_keeps_output_shapes_and_passes_the_oracles(name):
    model, args = make_fixture(name)
    graph = amgp_fx.analyze(model, args)
    assert graph.prunable_groups() and not graph.unknown_ops
    before = sum(p.numel() for p in model.parameters())
    reference = _shapes(graph.module(*args))
    _shrink_all(graph)
    assert _shapes(graph.module(*args)) == reference
    assert sum(p.numel() for p in model.parameters()) < before
    assert assert_mask_oracle(_factory(name), fraction=0.75)
    model, args = make_fixture(name)
    graph = amgp_fx.analyze(model, args)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    pytree.tree_leaves(graph.module(*args))[0].float().pow(2).sum().backward()
    optimizer.step()
    assert_round_trip(graph, args, optimizer, fraction=0.75)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", NAMES)
def test_shrunk_model_exports_to_onnx_with_parity(name, tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="amgp_fx")  # restored after the test: other tests read warnings
    model, args = make_fixture(name)
    graph = amgp_fx.analyze(model, args)
    _shrink_all(graph)
    report = export_onnx(graph.module, args, tmp_path / f"{name}.onnx")
    assert report.max_abs_diff <= report.atol + 1e-6


def _group_holding(graph, tensor, dim):
    return [g for g in graph.groups if any(m.tensor == tensor and m.dim == dim for m in g.members)]


def test_unsqueezed_dense_columns_are_frozen_not_pruned():
    """(B, 1) columns concatenated: the DNN's first 3 input columns hold no removable channel."""
    graph = amgp_fx.analyze(*make_fixture("dense_columns"))
    frozen = [g for g in _group_holding(graph, "dnn.0.weight", 1)
              if any(m.tensor == "dnn.0.weight" and m.dim == 1 and set(m.positions.tolist()) <= {0, 1, 2}
                     for m in g.members)]
    assert frozen and not any(g.prunable for g in frozen)
    assert any("unsqueeze" in g.reason for g in frozen)


def test_experts_concatenated_from_unsqueeze_freeze_the_gates():
    """Gate rows index experts that a cat of unsqueezed outputs holds: not prunable."""
    graph = amgp_fx.analyze(*make_fixture("mmoe_unsqueeze_gates"))
    gate_rows = _group_holding(graph, "gates.0.weight", 0)
    assert gate_rows and not any(g.prunable for g in gate_rows)
    assert graph.group("experts.0.0.weight[0]").prunable  # the expert width still is


def test_fields_from_unsqueeze_keep_the_senet_fields_frozen():
    graph = amgp_fx.analyze(*make_fixture("field_unsqueeze_senet"))
    assert not any(g.prunable for g in _group_holding(graph, "excite.weight", 0))
    assert graph.group("squeeze.weight[0]").prunable  # the bottleneck is an ordinary hidden layer


@pytest.mark.parametrize("name, shared, norms", [
    ("shared_linear_bn", "blocks.0.0.weight", ["blocks.0.1", "blocks.1.1"]),
    ("shared_glu", "shared_first.weight", ["steps.0.first.bn", "steps.1.first.bn"]),
])
def test_a_shared_linear_is_one_tensor_with_every_following_norm(name, shared, norms):
    model, args = make_fixture(name)
    graph = amgp_fx.analyze(model, args)
    (group,) = [g for g in _group_holding(graph, shared, 0) if g.prunable]
    tensors = [(m.tensor, m.dim) for m in group.members]
    assert len(tensors) == len(set(tensors))  # each tensor once, by one name
    names = {t for t, _ in tensors}
    for norm in norms:
        assert {f"{norm}.weight", f"{norm}.running_mean", f"{norm}.running_var"} <= names
    aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    assert aliases and not names & aliases
    keep = list(range(group.size // 2))
    amgp_fx.shrink_(graph, {group.id: keep})
    for norm in norms:
        (member,) = [m for m in group.members if m.tensor == f"{norm}.running_mean"]
        kept_positions = int(np.isin(member.channels, keep).sum())  # a GLU's input has 2 per channel
        assert graph.model.get_submodule(norm).running_mean.shape == (kept_positions,) < (len(member.positions),)
    graph.module(*args)


def test_glu_rows_i_and_h_plus_i_are_one_channel():
    graph = amgp_fx.analyze(*make_fixture("shared_glu"))
    (group,) = [g for g in _group_holding(graph, "shared_first.weight", 0) if g.prunable]
    (rows,) = [m for m in group.members if m.tensor == "shared_first.weight" and m.dim == 0]
    hidden = group.full_size
    assert sorted(rows.positions.tolist()) == list(range(2 * hidden))
    assert all(c == p % hidden for p, c in zip(rows.positions.tolist(), rows.channels.tolist()))


def test_tied_embedding_and_output_projection_are_one_tensor():
    model, args = make_fixture("shared_glu")
    graph = amgp_fx.analyze(model, args)
    assert not any(m.tensor == "item_scores.weight" for g in graph.groups for m in g.members)
    assert model.item_scores.weight is model.tables[0].weight


def test_recurrent_hidden_units_move_with_their_gate_rows():
    model, args = make_fixture("gru_lstm_tower")
    graph = amgp_fx.analyze(model, args)
    gru = graph.group("gru.weight_ih_l0[0]")
    (rows,) = [m for m in gru.members if m.tensor == "gru.weight_ih_l0" and m.dim == 0]
    assert rows.channels.tolist() == [p % 8 for p in rows.positions.tolist()]  # row g*H + j is unit j
    assert {("gru.weight_hh_l0", 1), ("lstm.weight_ih_l0", 1), ("lstm.weight_ih_l0_reverse", 1)} <= \
        {(m.tensor, m.dim) for m in gru.members}
    lstm = graph.group("lstm.weight_ih_l0[0]")
    (inputs,) = [m for m in lstm.members if m.tensor == "lstm.weight_ih_l1" and m.dim == 1]
    assert inputs.channels.tolist() == [p % 8 for p in range(16)]  # both directions' outputs
    amgp_fx.shrink_(graph, {gru.id: [0, 2, 4], lstm.id: [1, 3, 5, 7]})
    assert model.gru.weight_ih_l0.shape == (9, 6) and model.gru.weight_hh_l0.shape == (9, 3)
    assert model.lstm.weight_ih_l1.shape == (16, 8) and model.lstm.weight_hh_l1_reverse.shape == (16, 4)
    assert graph.module(*args).shape == (4,)


def test_lstm_states_recorded_with_a_spurious_step_dim_still_group_the_hidden_units():
    """torch 2.11 records LSTM's h_n and c_n as (layers * directions, 1, B, H) (pytorch/pytorch#151200): the
    rule labels the recorded shape instead of giving up and freezing every LSTM unit."""
    model, args = make_fixture("gru_lstm_tower")
    traced = amgp_fx.trace(model, args)
    (lstm_node,) = [n for n in traced.module.graph.nodes if n.target is torch.ops.aten.lstm.input]
    output, h_n, c_n = lstm_node.meta["val"]
    # (layers * directions, 1, B, H) from the last two dims: torch 2.11 records that shape already
    as_recorded = [torch.empty((s.shape[0], 1, *s.shape[-2:]), device="meta") for s in (h_n, c_n)]
    lstm_node.meta["val"] = (output, *as_recorded)
    graph = amgp_fx.analyze(model, args, traced=traced)
    assert not [u for u in graph.unknown_ops if u.target == "aten.lstm.input"]
    lstm = graph.group("lstm.weight_ih_l0[0]")
    assert lstm.prunable and lstm.full_size == 8
    amgp_fx.shrink_(graph, {lstm.id: [1, 3, 5, 7]})
    assert model.lstm.weight_hh_l1_reverse.shape == (16, 4) and graph.module(*args).shape == (4,)


def test_sequence_first_attention_analyses_and_shrinks_its_heads():
    """view(L, B * heads, d) with a concrete batch: heads are products (batch, head) of the right sizes."""
    model, args = make_fixture("mha_seq_first")
    graph = amgp_fx.analyze(model, args)
    heads = [g for g in graph.prunable_groups() if g.kind == "heads"]
    assert len(heads) == 1 and heads[0].full_size == 2
    reference = graph.module(*args).shape
    amgp_fx.shrink_(graph, {heads[0].id: [1]})
    assert model.attention.in_proj_weight.shape == (12, 8) and graph.module(*args).shape == reference


class SpecialisedBatch(nn.Module):
    """A buffer with the batch baked in: tracing specialises B to 4 after the first Linear, so that
    node's output still holds a SymInt that is now the constant 4."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 6), nn.Linear(12, 1)
        self.register_buffer("position", torch.randn(4, 6))

    def forward(self, x):
        return self.b((self.a(x) + self.position).reshape(-1, 12)).squeeze(-1)


def test_a_batch_specialised_while_tracing_is_concrete():
    """Was `TypeError: only length-1 arrays can be converted to Python scalars` in atoms.resolve."""
    torch.manual_seed(0)
    model, args = SpecialisedBatch(), (torch.randn(4, 8),)
    graph = amgp_fx.analyze(model, args)
    hidden = graph.group("a.weight[0]")
    assert hidden.prunable
    (columns,) = [m for m in hidden.members if m.tensor == "b.weight" and m.dim == 1]
    assert columns.channels.tolist() == [p % 6 for p in range(12)]  # reshape(-1, 12) pairs two rows
    assert_mask_oracle(lambda: (torch.manual_seed(0), SpecialisedBatch())[1:] + (args,))
    amgp_fx.shrink_(graph, {hidden.id: [0, 2, 3]})
    assert graph.module(*args).shape == (2,)


def test_incompatible_factorisations_freeze_instead_of_looping():
    """(F, D) flattened and (D, F) flattened added together: the same 12 positions factor
    differently, so they cannot be removed factor by factor."""

    class Crossed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fields, self.head = nn.Linear(5, 3 * 4), nn.Linear(12, 1)

        def forward(self, x):
            e = self.fields(x).view(-1, 3, 4)
            return self.head(e.flatten(1) + e.transpose(1, 2).flatten(1)).squeeze(-1)

    torch.manual_seed(0)
    graph = amgp_fx.analyze(Crossed(), (torch.randn(4, 5),))
    frozen = [g for g in graph.groups if "incompatible factorisations" in (g.reason or "")]
    assert frozen
    for group in graph.prunable_groups():
        model, args = Crossed(), (torch.randn(4, 5),)
        g = amgp_fx.analyze(model, args)
        amgp_fx.shrink_(g, {group.id: random_keep(g.group(group.id), 0.5, torch.Generator().manual_seed(0))})
        assert g.module(*args).shape == (4,)
    assert np.all([g.reason for g in graph.groups if not g.prunable])


@pytest.mark.parametrize("model_class, line, advice", [
    (AnyMaskGRUHistory, "if mask.any():", "torch.where"),
    (PackedGRUHistory, "self.gru(packed)", "torch.arange(B), lengths - 1]"),
])
def test_sequence_trace_errors_name_the_fixture_line_and_the_change(model_class, line, advice):
    """Item 6: the error names the model's own file and line (was torch.export's ``<string>:1``)."""
    torch.manual_seed(0)
    with pytest.raises(TraceError) as info:
        amgp_fx.analyze(model_class(), INPUTS["masked_gru_history"](4))
    message = str(info.value)
    assert "shrink_patterns.py:" in message and line in message and "<string>" not in message
    assert advice in message


def test_the_advised_rewrite_traces_and_prunes_the_recurrent_units():
    """The same model written as the message advises keeps the GRU's hidden units one prunable group
    (the shrink, oracles and ONNX parity run in the parametrised tests above) and computes the same
    scores as the packed original."""
    model, args = make_fixture("masked_gru_history")
    graph = amgp_fx.analyze(model, args)
    assert graph.group("gru.weight_ih_l0[0]").prunable
    packed = PackedGRUHistory()
    packed.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(*args), packed.eval()(*args), atol=1e-5, rtol=1e-4)

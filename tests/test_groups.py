"""Dependency groups on one model per op family: mask oracle, round trip, and hand-derived members."""
import numpy as np
import pytest
import torch

import amgp_fx
from amgp_fx.testing import assert_mask_oracle, assert_round_trip, random_keep
from op_family_models import FAMILIES


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_mask_oracle(family):
    """Physically removing channels == zeroing every slice they own, for every mask-equivalent group."""
    model, args = FAMILIES[family]()
    graph = amgp_fx.analyze(model, args)
    expected = [g.id for g in graph.prunable_groups() if g.mask_equivalent]
    assert expected, f"{family}: no prunable group found"
    assert assert_mask_oracle(FAMILIES[family]) == expected


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_round_trip_restores_outputs_and_optimizer_state(family):
    model, args = FAMILIES[family]()
    graph = amgp_fx.analyze(model, args)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    out = graph.module(*args)
    (out.float().pow(2).sum()).backward()
    optimizer.step()
    assert_round_trip(graph, args, optimizer)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_non_mask_equivalent_groups_still_prune_and_run(family):
    """Groups normalised together (LayerNorm, softmax, mean) are not zero-equivalent: they must
    still shrink to a runnable model with the same output shape."""
    for group in amgp_fx.analyze(*FAMILIES[family]()).prunable_groups():
        if group.mask_equivalent:
            continue
        model, args = FAMILIES[family]()
        graph = amgp_fx.analyze(model, args)
        reference = graph.module(*args)
        amgp_fx.shrink_(graph, {group.id: random_keep(graph.group(group.id), 0.5, torch.Generator().manual_seed(0))})
        assert graph.module(*args).shape == reference.shape
        assert graph.group(group.id).size < group.full_size


def _members(group, tensor, dim):
    return [m for m in group.members if m.tensor == tensor and m.dim == dim]


def test_cat_offsets_split_the_consumer_columns():
    graph = amgp_fx.analyze(*FAMILIES["cat"]())
    a = next(g for g in graph.groups if g.name == "a.weight[0]")
    b = next(g for g in graph.groups if g.name == "b.weight[0]")
    (ma,), (mb,) = _members(a, "head.weight", 1), _members(b, "head.weight", 1)
    assert ma.positions.tolist() == list(range(10)) and ma.channels.tolist() == list(range(10))
    assert mb.positions.tolist() == list(range(10, 24)) and mb.channels.tolist() == list(range(14))


def test_residual_couples_both_producers_and_the_consumer():
    graph = amgp_fx.analyze(*FAMILIES["residual"]())
    group = next(g for g in graph.groups if g.name == "stem.weight[0]")
    tensors = {(m.tensor, m.dim) for m in group.members}
    assert {("stem.weight", 0), ("stem.bias", 0), ("outer.weight", 0), ("outer.bias", 0),
            ("inner.weight", 1), ("head.weight", 1)} <= tensors


def test_flattened_fields_map_columns_to_embedding_dims():
    graph = amgp_fx.analyze(*FAMILIES["field_view"]())
    group = next(g for g in graph.groups if g.kind == "embedding")
    (member,) = _members(group, "mlp.0.weight", 1)
    assert member.positions.tolist() == list(range(12))
    assert member.channels.tolist() == [p % 4 for p in range(12)]
    assert {("tables.%d.weight" % i, 1) for i in range(3)} <= {(m.tensor, m.dim) for m in group.members}


def test_attention_heads_are_whole_groups():
    graph = amgp_fx.analyze(*FAMILIES["hand_attention"]())
    heads = next(g for g in graph.groups if g.kind == "heads")
    assert heads.prunable and heads.full_size == 2
    (q_rows,) = _members(heads, "q.weight", 0)
    assert q_rows.channels.tolist() == [p // 4 for p in q_rows.positions.tolist()]  # row h*dh+e is head h
    (out_cols,) = _members(heads, "out.weight", 1)
    assert out_cols.channels.tolist() == [p // 4 for p in range(8)]
    model, args = FAMILIES["hand_attention"]()
    graph = amgp_fx.analyze(model, args)
    amgp_fx.shrink_(graph, {heads.id: [1]})
    assert model.q.weight.shape == (4, 8) and model.out.weight.shape == (8, 4)
    assert graph.module(*args).shape == (4,)


def test_torch_multihead_attention_heads_are_frozen_not_guessed():
    """nn.MultiheadAttention folds heads into the batch (bsz * num_heads): heads stay frozen."""
    graph = amgp_fx.analyze(*FAMILIES["torch_mha"]())
    in_proj_rows = [g for g in graph.groups if any(m.tensor == "mha.in_proj_weight" and m.dim == 0 for m in g.members)
                    and g.kind in ("heads", "head_dim", "reshape")]
    assert in_proj_rows and not any(g.prunable for g in in_proj_rows)
    assert any("symbolic" in (g.reason or "") for g in in_proj_rows)


def test_layer_norm_groups_are_flagged_not_mask_equivalent():
    graph = amgp_fx.analyze(*FAMILIES["norms"]())
    ln_group = next(g for g in graph.groups if g.name == "b.weight[0]")
    bn_group = next(g for g in graph.groups if g.name == "a.weight[0]")
    assert not ln_group.mask_equivalent and any("layer norm" in n for n in ln_group.notes)
    assert bn_group.mask_equivalent
    assert {("bn.running_mean", 0), ("bn.running_var", 0), ("bn.weight", 0)} <= {(m.tensor, m.dim) for m in bn_group.members}


def test_split_sizes_are_rewritten_after_a_shrink():
    model, args = FAMILIES["split"]()
    graph = amgp_fx.analyze(model, args)
    group = next(g for g in graph.groups if g.name == "wide.weight[0]")
    amgp_fx.shrink_(graph, {group.id: [0, 1, 2, 8, 9, 10]})  # 3 of 7 in the first split, 3 of 5 after
    assert model.wide.weight.shape == (6, 6) and model.tail.weight.shape == (3, 3)
    assert graph.module(*args).shape == (4, 3)


def test_model_inputs_and_outputs_are_frozen():
    graph = amgp_fx.analyze(*FAMILIES["mlp"]())
    reasons = {g.name: g.reason for g in graph.groups if not g.prunable}
    assert "input" in reasons["net.0.weight[1]"]
    assert "output" in reasons["net.5.weight[0]"] or "single channel" in reasons["net.5.weight[0]"]


def test_group_table_has_one_row_per_group():
    graph = amgp_fx.analyze(*FAMILIES["mlp"]())
    rows = graph.table()
    assert [r["id"] for r in rows] == [g.id for g in graph.groups]
    assert all(r["reason"] for r in rows if not r["prunable"])


def test_new_op_families_have_rules():
    """__and__, in-place tanh_/unsqueeze_, softmax.int, numpy_T, glu, gru and lstm: no unknown op."""
    for family in ("mask_and", "in_place", "softmax_transpose", "glu", "gru_lstm", "lstm_bidirectional"):
        graph = amgp_fx.analyze(*FAMILIES[family]())
        assert not graph.unknown_ops, (family, [u.target for u in graph.unknown_ops])


def test_mask_and_in_place_keep_the_hidden_layer_one_group():
    for family in ("mask_and", "in_place"):
        model, args = FAMILIES[family]()
        graph = amgp_fx.analyze(model, args)
        group = graph.group("a.weight[0]")
        assert group.prunable and {("a.bias", 0), ("b.weight", 1)} <= {(m.tensor, m.dim) for m in group.members}
        amgp_fx.shrink_(graph, {group.id: [0, 3, 5]})
        assert model.b.weight.shape == (1, 3) and graph.module(*args).shape == (4,)


def test_numpy_t_couples_the_parameter_columns_with_the_softmax_units():
    """h @ proj.T: proj's columns are the softmax's channels and its rows the next layer's inputs."""
    graph = amgp_fx.analyze(*FAMILIES["softmax_transpose"]())
    hidden = graph.group("a.weight[0]")
    assert ("proj", 1) in {(m.tensor, m.dim) for m in hidden.members}
    assert not hidden.mask_equivalent and any("softmax" in n for n in hidden.notes)
    assert ("b.weight", 1) in {(m.tensor, m.dim) for m in graph.group("proj[0]").members}


def test_glu_halves_are_one_channel():
    model, args = FAMILIES["glu"]()
    graph = amgp_fx.analyze(model, args)
    group = graph.group("a.weight[0]")
    (rows,) = _members(group, "a.weight", 0)
    assert group.full_size == 8 and rows.channels.tolist() == [p % 8 for p in rows.positions.tolist()]
    amgp_fx.shrink_(graph, {group.id: [1, 6]})
    assert model.a.weight.shape == (4, 6) and model.b.weight.shape == (1, 2)
    torch.testing.assert_close(model.a.bias, FAMILIES["glu"]()[0].a.bias[[1, 6, 9, 14]])


ISSUE13_FAMILIES = ("mask_and", "in_place", "softmax_transpose", "glu", "gru_lstm", "lstm_bidirectional")


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("family", ISSUE13_FAMILIES)
def test_new_op_families_shrink_every_group_and_export_with_ort_parity(family, tmp_path):
    """Every prunable group of the op families that got a rule shrinks at once, the model keeps its
    output shape, and the shrunk model exports to ONNX with ONNX Runtime parity."""
    from amgp_fx.export import export_onnx

    model, args = FAMILIES[family]()
    graph = amgp_fx.analyze(model, args)
    reference, before = graph.module(*args).shape, sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(0)
    amgp_fx.shrink_(graph, {g.id: random_keep(g, 0.5, generator) for g in graph.prunable_groups()})
    assert graph.module(*args).shape == reference
    assert sum(p.numel() for p in model.parameters()) < before
    report = export_onnx(graph.module.eval(), args, tmp_path / f"{family}.onnx")
    assert report.max_abs_diff is not None and report.max_abs_diff <= report.atol

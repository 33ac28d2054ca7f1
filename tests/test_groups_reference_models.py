"""Groups of the reference models: mask oracle on every model, and hand-derived members for
DeepFM, DLRM and DCN-v2 (which columns of which layer belong to which embedding dimension)."""
import pytest
import torch

import amgp_fx
from amgp_fx import models
from amgp_fx.testing import assert_mask_oracle, assert_round_trip


def _factory(name):
    def factory():
        torch.manual_seed(0)
        model = models.build_model(name, "small")
        return model, model.example_inputs(4)
    return factory


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_reference_model_mask_oracle_and_round_trip(name):
    model, args = _factory(name)()
    graph = amgp_fx.analyze(model, args)
    assert not graph.unknown_ops, [u.target for u in graph.unknown_ops]
    prunable = graph.prunable_groups(("hidden", "heads"))
    assert prunable, f"{name}: no prunable hidden units or heads"
    checked = assert_mask_oracle(_factory(name))
    assert set(g.id for g in prunable if g.mask_equivalent) <= set(checked)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    graph.module(*args).float().sum().backward()
    optimizer.step()
    assert_round_trip(graph, args, optimizer)


def _embedding_group(graph):
    (group,) = [g for g in graph.groups if g.kind == "embedding" and g.prunable]
    return group


def _member(group, tensor, dim):
    (member,) = [m for m in group.members if m.tensor == tensor and m.dim == dim]
    return member


def test_deepfm_embedding_dims_map_to_deep_columns():
    model = models.build_model("deepfm", "small")
    graph = amgp_fx.analyze(model, model.example_inputs(4))
    group = _embedding_group(graph)
    dims, fields, dense = model.embedding_dim, model.num_fields, 4
    assert group.full_size == dims
    deep = _member(group, "deep.0.weight", 1)
    # deep input = cat([dense, embedded.reshape(B, F * D)]): column dense + f*D + d is dim d
    assert deep.positions.tolist() == [dense + f * dims + d for f in range(fields) for d in range(dims)]
    assert deep.channels.tolist() == [d for _ in range(fields) for d in range(dims)]
    assert _member(group, "embedding.weight", 1).channels.tolist() == list(range(dims))


def test_dlrm_embedding_dim_is_shared_by_every_table_bottom_output_and_top_input():
    model = models.build_model("dlrm", "small")
    graph = amgp_fx.analyze(model, model.example_inputs(4))
    group = _embedding_group(graph)
    dims = model.embeddings[0].weight.shape[1]
    assert group.full_size == dims
    for i in range(len(model.embeddings)):
        assert _member(group, f"embeddings.{i}.weight", 1).channels.tolist() == list(range(dims))
    last_bottom = [n for n, _ in model.bottom_mlp.named_parameters() if n.endswith("weight")][-1]
    assert _member(group, f"bottom_mlp.{last_bottom}", 0).channels.tolist() == list(range(dims))
    # top MLP input = cat([x, products]): its first D columns are the bottom output's dims
    top = _member(group, "top_mlp.0.0.weight", 1)
    assert top.positions.tolist() == list(range(dims)) and top.channels.tolist() == list(range(dims))
    # the interaction products themselves are positions of fields, never pruned
    field_groups = [g for g in graph.groups if any(m.tensor == "top_mlp.0.0.weight" and m.dim == 1 for m in g.members)
                    and g is not group]
    assert field_groups and not any(g.prunable for g in field_groups)


def test_dcn_v2_cross_layers_follow_the_embedding_columns():
    model = models.build_model("dcn_v2", "small")
    graph = amgp_fx.analyze(model, model.example_inputs(4))
    group = _embedding_group(graph)
    dims, fields, dense = 8, 4, 4
    expected_positions = [dense + f * dims + d for f in range(fields) for d in range(dims)]
    expected_channels = [d for _ in range(fields) for d in range(dims)]
    for tensor, dim in (("cross.layers.0.weight", 0), ("cross.layers.0.weight", 1), ("cross.layers.0.bias", 0),
                        ("deep.0.weight", 1), ("head.weight", 1)):
        member = _member(group, tensor, dim)
        assert member.positions.tolist() == expected_positions, tensor
        assert member.channels.tolist() == expected_channels, tensor
    # the cross layer's dense columns touch the model input: frozen
    dense_group = next(g for g in graph.groups if any(m.tensor == "cross.layers.0.weight" and m.dim == 0 and
                                                      m.positions.tolist() == list(range(dense)) for m in g.members))
    assert not dense_group.prunable and "input" in dense_group.reason


def test_analysis_is_fast_on_the_default_dlrm():
    import time

    model = models.build_model("dlrm", "default")
    traced = amgp_fx.trace(model, model.example_inputs(4))
    start = time.perf_counter()
    graph = amgp_fx.analyze(model, None, traced=traced)
    elapsed = time.perf_counter() - start
    assert graph.prunable_groups(("hidden",))
    assert elapsed < 5.0  # generous bound for slow CI; docs/benchmarks.md has the measured figure

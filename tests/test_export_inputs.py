"""ONNX export of models whose inputs are pytrees (a dict of tensors, a torchrec-like KeyedJaggedTensor)
and of capsule multi-interest models (issue 13, items 7 and 8). Oracles: ONNX Runtime's outputs against
the PyTorch model's own outputs, fed from inputs built independently (other batch sizes, other dict key
orders), and the model's own failure at batch 1."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import torch.utils._pytree as pytree

import amgp_fx
from amgp_fx.bench import benchmark_onnx, make_ort_session, ort_feeds
from amgp_fx.export import ExportError, export_onnx
from amgp_fx.input_tree import METADATA_KEY, feed_order, flatten_args
from amgp_fx.surgery import shrink_
from amgp_fx.testing import assert_mask_oracle, assert_round_trip, random_keep
from tests.fixtures import input_style_models as styles
from tests.fixtures import torchrec_like
from tests.fixtures.capsule_models import capsule_factory, capsule_inputs


def ort_outputs(path, inputs) -> list[np.ndarray]:
    session = make_ort_session(path, "cpu")
    metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return session.run(None, ort_feeds(session, inputs, metadata))


def torch_outputs(model, inputs) -> list[np.ndarray]:
    with torch.no_grad():
        out = model.eval()(*inputs)
    return [t.numpy() for t in pytree.tree_leaves(out)]


def assert_same(actual, expected):
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)


def shuffled(features: dict) -> dict:
    return {key: features[key] for key in reversed(list(features))}


# -- item 8: pytree inputs ------------------------------------------------------------------------

def test_dict_inputs_export_as_named_inputs_and_feed_by_path(tmp_path):
    torch.manual_seed(0)
    model = styles.FuxiDictDNN()
    report = export_onnx(model, styles.fuxictr_inputs(8), tmp_path / "fuxi.onnx")
    keys = list(styles.fuxictr_inputs(2)[0])
    assert report.input_names == tuple(f"inputs.{k}" for k in keys)
    assert report.input_paths == tuple(f"[0][{k!r}]" for k in keys)
    assert report.max_abs_diff <= report.atol and 1 in report.parity_batch_sizes
    spec = pytree.treespec_loads(report.input_tree)  # the recorded tree rebuilds the arguments
    rebuilt = pytree.tree_unflatten(list(range(len(keys))), spec)
    assert list(rebuilt[0]) == keys
    recorded = json.loads({p.key: p.value for p in onnx.load(report.path).metadata_props}[METADATA_KEY])
    assert recorded["paths"] == list(report.input_paths)
    other = (shuffled(styles.fuxictr_inputs(5, seed=3)[0]),)  # another batch, another key order
    assert_same(ort_outputs(report.path, other), torch_outputs(model, other))


def test_keyed_jagged_tensor_inputs_export_and_run_at_other_batches(tmp_path):
    torch.manual_seed(0)
    model = torchrec_like.torchrec_dlrm()
    report = export_onnx(model, torchrec_like.torchrec_inputs(8), tmp_path / "dlrm.onnx")
    assert report.input_names == ("dense_features", "sparse_features.values", "sparse_features.lengths")
    assert report.input_paths == ("[0]", "[1]._values", "[1]._lengths")
    assert report.max_abs_diff is not None and report.max_abs_diff <= report.atol
    for batch in (3, 11):
        inputs = torchrec_like.torchrec_inputs(batch, seed=batch)
        assert_same(ort_outputs(report.path, inputs), torch_outputs(model, inputs))


def test_pruned_keyed_jagged_model_exports_with_parity(tmp_path):
    torch.manual_seed(0)
    model, inputs = torchrec_like.torchrec_dlrm(), torchrec_like.torchrec_inputs(8)
    graph = amgp_fx.analyze(model, inputs)
    group = graph.prunable_groups()[0]
    shrink_(graph, {group.id: random_keep(group, 0.5, torch.Generator().manual_seed(0))})
    report = export_onnx(graph.module, inputs, tmp_path / "pruned.onnx")
    assert report.max_abs_diff <= report.atol
    other = torchrec_like.torchrec_inputs(5, seed=9)
    assert_same(ort_outputs(report.path, other), torch_outputs(graph.module, other))


def _fuxi_factory(batch_size=8):
    torch.manual_seed(0)
    return styles.FuxiDictDNN(), styles.fuxictr_inputs(batch_size)


def _dlrm_factory(batch_size=8):
    torch.manual_seed(0)
    return torchrec_like.torchrec_dlrm(), torchrec_like.torchrec_inputs(batch_size)


PYTREE_MODELS = {  # factory, inputs at another batch in another layout
    "dict": (_fuxi_factory, lambda: (shuffled(styles.fuxictr_inputs(5, seed=3)[0]),)),
    "keyed_jagged": (_dlrm_factory, lambda: torchrec_like.torchrec_inputs(5, seed=9)),
}


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", sorted(PYTREE_MODELS))
def test_pytree_input_models_pass_every_oracle(name, tmp_path):
    """Dict and KeyedJaggedTensor inputs: every group shrinks with the same output shapes, removing
    equals zeroing, grow restores exactly, and the shrunk model exports with ORT parity."""
    factory, other = PYTREE_MODELS[name]
    model, inputs = factory()
    graph = amgp_fx.analyze(model, inputs)
    assert graph.prunable_groups()
    assert assert_mask_oracle(factory)
    reference = [o.shape for o in pytree.tree_leaves(graph.module(*inputs))]
    assert_round_trip(graph, inputs, torch.optim.Adam(model.parameters()))
    keep = {g.id: random_keep(g, 0.5, torch.Generator().manual_seed(0)) for g in graph.prunable_groups()}
    shrink_(graph, keep)
    assert [o.shape for o in pytree.tree_leaves(graph.module(*inputs))] == reference
    report = export_onnx(graph.module, inputs, tmp_path / f"{name}.onnx")
    assert report.max_abs_diff <= report.atol
    assert_same(ort_outputs(report.path, other()), torch_outputs(graph.module, other()))


@pytest.mark.parametrize("request_", [{"ratio": 0.5}, {"flops_target": 0.6}])
def test_prune_records_the_flops_batch_of_dict_inputs(request_):
    """prune_ read the batch as ``inputs[0].shape[0]``: AttributeError on a dict of features."""
    from amgp_fx.pruning_plan import prune_

    model, inputs = _fuxi_factory(batch_size=6)
    graph = amgp_fx.analyze(model, inputs)
    plan, _ = prune_(graph, **request_, multiple=1)
    assert plan.stats["flops_batch"] == 6 and plan.stats["flops_after"] < plan.stats["flops_before"]
    assert [o.shape for o in pytree.tree_leaves(graph.module(*inputs))] == [(6, 1)]


def test_benchmark_feeds_pytree_inputs_from_the_recorded_paths(tmp_path):
    torch.manual_seed(0)
    path = export_onnx(styles.FuxiDictDNN(), styles.fuxictr_inputs(8), tmp_path / "fuxi.onnx").path
    for io_binding in (True, False):
        records = benchmark_onnx(path, lambda b: (shuffled(styles.fuxictr_inputs(b)[0]),), [2, 16],
                                 provider="cpu", io_binding=io_binding, warmup=1, iters=2)
        assert [r.batch_size for r in records] == [2, 16]


def test_feed_order_names_a_missing_input():
    flat = flatten_args(({"a": torch.zeros(2), "b": torch.zeros(2)},), ["x"])
    metadata = {METADATA_KEY: json.dumps({"names": list(flat.names), "paths": list(flat.paths), "tree": ""})}
    b = torch.ones(2)
    assert feed_order(["x.b"], ({"b": b},), metadata)[0] is b  # by recorded path, extra names absent
    with pytest.raises(ValueError, match=r"no \[0\]\['b'\]"):
        feed_order(["x.a", "x.b"], ({"a": torch.zeros(2)},), metadata)


def test_input_names_must_match_the_tensor_count(tmp_path):
    with pytest.raises(ExportError, match="one name per tensor"):
        export_onnx(styles.FuxiDictDNN(), styles.fuxictr_inputs(4), tmp_path / "x.onnx", input_names=["a"])


# -- item 7: capsule multi-interest models ----------------------------------------------------------

def test_capsule_model_cannot_run_at_batch_1_so_parity_uses_the_smallest_batch_that_runs(tmp_path):
    model, inputs = capsule_factory()
    with pytest.raises(RuntimeError):
        model(*capsule_inputs(1))  # the model's own torch.squeeze() drops the batch dim at B = 1
    smallest = next(b for b in range(1, 8) if _runs(model, capsule_inputs(b)))
    report = export_onnx(model, inputs, tmp_path / "capsule.onnx")
    assert report.parity_batch_sizes == (8, 11, smallest) and report.max_abs_diff <= report.atol
    assert any(s.startswith("batch 1:") for s in report.parity_skipped)
    other = capsule_inputs(5, seed=4)
    assert_same(ort_outputs(report.path, other), torch_outputs(model, other))


def _runs(model, inputs) -> bool:
    try:
        with torch.no_grad():
            model.eval()(*inputs)
        return True
    except RuntimeError:
        return False


def test_without_the_squeeze_pass_the_load_error_names_the_op(tmp_path):
    model, inputs = capsule_factory()
    with pytest.raises(ExportError, match=r"could not load the exported model at ONNX op Squeeze \(node .*\)"):
        export_onnx(model, inputs, tmp_path / "capsule.onnx", passes=())
    assert not (tmp_path / "capsule.onnx").exists()


def test_pruned_capsule_model_exports_with_parity(tmp_path):
    model, inputs = capsule_factory()
    graph = amgp_fx.analyze(model, inputs)
    keep = {g.id: random_keep(g, 0.5, torch.Generator().manual_seed(1)) for g in graph.prunable_groups()}
    shrink_(graph, keep)
    report = export_onnx(graph.module, inputs, tmp_path / "pruned.onnx")
    assert report.max_abs_diff <= report.atol
    other = capsule_inputs(6, seed=2)
    assert_same(ort_outputs(report.path, other), torch_outputs(graph.module, other))


def test_capsule_model_shrinks_with_the_same_shapes_and_passes_the_oracles():
    """Item 7's model beyond export: every group shrinks with the same output shape, removing equals
    zeroing for every mask-equivalent group, and grow restores outputs and Adam state exactly."""
    model, inputs = capsule_factory()
    graph = amgp_fx.analyze(model, inputs)
    assert graph.prunable_groups() and not graph.unknown_ops
    assert assert_mask_oracle(capsule_factory)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    graph.module(*inputs).pow(2).sum().backward()
    optimizer.step()
    assert_round_trip(graph, inputs, optimizer)
    reference, before = graph.module(*inputs).shape, sum(p.numel() for p in model.parameters())
    shrink_(graph, {g.id: random_keep(g, 0.5, torch.Generator().manual_seed(2)) for g in graph.prunable_groups()})
    assert graph.module(*inputs).shape == reference and sum(p.numel() for p in model.parameters()) < before

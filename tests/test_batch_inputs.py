"""Input maps (amgp_fx.batch_inputs): parsing, the default mapping, jagged (KeyedJaggedTensor-like)
inputs, the inverse used for data shapes, and the training API and AMGP hook fed through them."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import amgp_fx
from amgp_fx.amgp import AmgpHook
from amgp_fx.batch_inputs import FlatInputs, InputMapError, Source, bind_inputs, input_paths, parse_input_map
from amgp_fx.config import TrainConfig
from amgp_fx.data.batch import Batch
from amgp_fx.model_inputs import (arrange_by_paths, format_input_spec, make_inputs, parse_input_spec, resize_batch,
                                   spec_of)
from amgp_fx.schedule import AmgpConfig, AmgpSchedule
from amgp_fx.train import train
from tests.fixtures import own_models, torchrec_like


def _batch(rows: int = 6, dense: int = 13, sparse: int = 5) -> Batch:
    generator = torch.Generator().manual_seed(0)
    return Batch(torch.randn(rows, dense, generator=generator),
                 torch.randint(0, 20, (rows, sparse), generator=generator), torch.zeros(rows))


def test_default_mapping_feeds_positional_and_dict_models_the_same_columns():
    batch = _batch()
    positional = bind_inputs(own_models.positional_batch(4))
    assert positional.describe() == "0=dense[0:13]; 1=sparse[0:5]" and positional.is_default_positional()
    dense, sparse = positional(batch)
    assert torch.equal(dense, batch.dense) and torch.equal(sparse, batch.sparse)
    by_key = bind_inputs(own_models.dict_batch(4))
    assert by_key.describe() == "dense=dense[0:13]; user=sparse[0]; item=sparse[1]; context=sparse[2:5]"
    assert not by_key.is_default_positional() and (by_key.num_dense, by_key.num_sparse) == (13, 5)
    (features,) = by_key(batch)
    assert torch.equal(features["user"], batch.sparse[:, 0]) and torch.equal(features["context"], batch.sparse[:, 2:5])
    pos_model, dict_model = own_models.build_positional(), own_models.build_dict()
    assert torch.allclose(pos_model(*positional(batch)), dict_model(*by_key(batch)))


def test_explicit_map_columns_dtypes_and_full_paths():
    example = ({"ids": (torch.zeros(4, dtype=torch.int32), torch.zeros(4, 2, dtype=torch.int32)),
                "x": torch.zeros(4, 2, dtype=torch.float64)},)
    assert input_paths(example) == ["ids.0", "ids.1", "x"]
    bound = bind_inputs(example, "0.ids.0=sparse[4]; ids.1=sparse[0,2]; x=dense[3:5]")
    batch = _batch()
    (out,) = bound(batch)
    assert out["ids"][0].dtype == torch.int32 and torch.equal(out["ids"][0].long(), batch.sparse[:, 4])
    assert torch.equal(out["ids"][1].long(), batch.sparse[:, [0, 2]])
    assert out["x"].dtype == torch.float64 and torch.allclose(out["x"].float(), batch.dense[:, 3:5])
    assert (bound.num_dense, bound.num_sparse) == (5, 5)
    assert bind_inputs(example, '{"ids.0": "sparse[4]", "ids.1": "sparse[0:2]", "x": "dense"}').describe() == \
        "ids.0=sparse[4]; ids.1=sparse[0:2]; x=dense[0:2]"


@pytest.mark.parametrize("text, message", [
    ("user", "has no '='"),
    ("user=labels", "is not one of dense, sparse, label"),
    ("user=sparse[a]", "not a non-negative integer"),
    ("user=sparse[3:1]", "is empty"),
    ("user=sum(sparse[0:2])", "unknown function"),
    ("user=sparse[0]; user=sparse[1]", "mapped twice"),
    ("", "maps nothing"),
])
def test_bad_map_text_names_the_problem(text, message):
    with pytest.raises(InputMapError, match=message):
        parse_input_map(text)


@pytest.mark.parametrize("text, message", [
    ("dense=dense; user=sparse[0]; item=sparse[1]", r"leaves out the model's input\(s\) 'context'"),
    ("dense=dense; user=sparse[0]; item=sparse[1]; context=sparse[2:5]; price=dense[0]", "names 'price'"),
    ("dense=dense[0:4]; user=sparse[0]; item=sparse[1]; context=sparse[2:5]", "13 values per row.*gives 4"),
])
def test_map_that_does_not_fit_lists_the_model_inputs(text, message):
    with pytest.raises(InputMapError, match=message) as error:
        bind_inputs(own_models.dict_batch(4), text)
    assert "dense float32[4, 13]" in str(error.value) or "gives 4" in str(error.value)


def test_rows_of_inverts_the_map():
    example = own_models.dict_batch(4)
    bound = bind_inputs(example)
    dense, sparse, rows = bound.rows_of(example)
    assert rows == 4 and torch.equal(dense, example[0]["dense"]) and torch.equal(sparse[:, 1], example[0]["item"])
    (again,) = bound(Batch(dense, sparse, torch.zeros(rows)))
    assert all(torch.equal(again[key], example[0][key]) for key in example[0])


def test_jagged_keyed_inputs_train_through_the_api():
    """A KeyedJaggedTensor-like pytree node: values key by key, lengths all ones."""
    model = torchrec_like.torchrec_dlrm()
    example = torchrec_like.torchrec_inputs(4)
    keys = example[1].keys()
    fields = f"sparse[0:{len(keys)}]"
    text = f"0=dense[0:3]; 1._values=values({fields}); 1._lengths=lengths({fields})"
    bound = bind_inputs(example, text)
    batch = _batch(dense=3, sparse=len(keys))
    dense, kjt = bound(batch)
    assert kjt.keys() == keys and torch.equal(kjt.lengths(), torch.ones(len(keys) * 6, dtype=kjt.lengths().dtype))
    assert torch.equal(kjt.values()[:6], batch.sparse[:, 0]) and torch.equal(kjt.values()[6:12], batch.sparse[:, 1])
    rows = _batch(rows=200, dense=3, sparse=len(keys))
    rows = Batch(rows.dense, rows.sparse % 5, (torch.rand(200) > 0.5).float())
    result = train(model, rows, rows[:50], TrainConfig(batch_size=50, steps=4), example_inputs=example,
                   input_map=text, progress=False)
    assert result.step == 4 and 0.0 <= result.metrics["auc"] <= 1.0


def test_amgp_hook_forward_uses_the_default_map_of_a_dict_model():
    model = own_models.build_dict()
    example = own_models.dict_batch(8)
    graph = amgp_fx.analyze(model, example)
    hook = AmgpHook(graph, AmgpConfig(AmgpSchedule(10, warmup_steps=2, cycles=1, pruned_steps=4)))
    batch = _batch(rows=8)
    expected = own_models.build_positional()(batch.dense, batch.sparse)
    assert torch.allclose(hook.forward(graph.module, batch), expected, atol=1e-6)
    hook2 = AmgpHook(graph, AmgpConfig(AmgpSchedule(10, warmup_steps=2, cycles=1, pruned_steps=4)))
    hook2.input_map = "dense=dense; user=sparse[1]; item=sparse[0]; context=sparse[2:5]"
    swapped = Batch(batch.dense, batch.sparse[:, [1, 0, 2, 3, 4]], batch.label)
    assert torch.allclose(hook2.forward(graph.module, swapped), expected, atol=1e-6)


def test_flat_inputs_call_the_model_with_its_pytree():
    model = own_models.build_dict()
    example = own_models.dict_batch(4)
    flat = FlatInputs(model, example)
    assert torch.equal(flat(*FlatInputs.leaves(example)), model(*example))


def test_input_specs_with_paths_round_trip_and_resize():
    specs = parse_input_spec("dense=float32[B,13]; user=int64[B]:0..100; ids.0=int64[B,2]:0..5")
    assert parse_input_spec(format_input_spec(specs)) == specs
    args = arrange_by_paths([("dense", torch.zeros(3, 2)), ("ids.0", torch.ones(3)), ("ids.1", torch.ones(3))])
    assert isinstance(args[0]["ids"], tuple) and len(args[0]["ids"]) == 2
    resized = resize_batch(own_models.dict_batch(4), 7)
    assert resized[0]["context"].shape == (7, 3) and torch.equal(resized[0]["user"][4:], resized[0]["user"][:3])
    assert format_input_spec(spec_of(own_models.dict_batch(4))).startswith("dense=float32[B,13];user=int64[B]:")
    with pytest.raises(Exception, match="name every input"):
        parse_input_spec("dense=float32[B,13]; int64[B]")


@given(st.lists(st.integers(0, 30), min_size=1, max_size=6, unique=True))
def test_source_format_parses_back(columns):
    for source in (Source("sparse", tuple(columns)), Source("dense", tuple(sorted(columns))),
                   Source("sparse", (columns[0],), single=True), Source("sparse", tuple(columns), jagged="values")):
        text = source.format()
        assert parse_input_map(f"x={text}")["x"].format() == text


def test_the_input_line_of_a_batch_makes_inputs_every_table_takes():
    """``analyze`` prints ``spec_of(saved batch)``; pasted into ``--input-shape`` it must give ids that fit
    every column's table. A (B, 2) id tensor into tables of 10 and 1000 rows: the overall range seen
    (0..~1000) would index table 0 out of range; the printed range stops at the smaller column's ids."""

    class TwoTables(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.small, self.large = torch.nn.Embedding(10, 4), torch.nn.Embedding(1000, 4)

        def forward(self, ids):
            return (self.small(ids[:, 0]) * self.large(ids[:, 1])).sum(-1)

    generator = torch.Generator().manual_seed(0)
    saved = torch.stack([torch.randint(0, 10, (64,), generator=generator),
                         torch.randint(0, 1000, (64,), generator=generator)], dim=1)
    assert int(saved.max()) >= 10  # the overall range would not fit the small table
    text = format_input_spec(spec_of((saved,)))
    (spec,) = parse_input_spec(text)
    assert spec.low == 0 and spec.high <= 10, text
    (ids,) = make_inputs(parse_input_spec(text), 512, seed=3)
    assert TwoTables()(ids).shape == (512,)
    offsets = saved + torch.tensor([0, 10])  # one concatenated table, ids offset per column: still in range
    (spec,) = spec_of((offsets,))
    assert spec.low == 0 and spec.high <= 10

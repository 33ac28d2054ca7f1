"""Table sizes of a user's model come from its embedding tables (eager or a GraphModule), matched
to the sparse columns that feed them, not from the ids of the example batch."""
from __future__ import annotations

import torch
from torch import nn

from amgp_fx.cli.data import data_shape
from amgp_fx.data.model_tables import model_table_sizes
from amgp_fx.model_io import LoadedModel, load_model, save_pt2

SIZES = [13, 40, 7, 25]


class Permuted(nn.Module):
    """Tables registered in another order than the columns, and looked up out of order."""

    def __init__(self) -> None:
        super().__init__()
        self.tables = nn.ModuleDict({"d": nn.Embedding(SIZES[3], 4), "b": nn.EmbeddingBag(SIZES[1], 4, mode="sum"),
                                     "a": nn.Embedding(SIZES[0], 4), "c": nn.Embedding(SIZES[2], 4)})
        self.top = nn.Linear(4 * 4 + 3, 1)

    def forward(self, dense, sparse):
        d = self.tables["d"](sparse[:, 3])
        a = self.tables["a"](sparse[:, 0])
        b = self.tables["b"](sparse[:, 1:2])
        c = self.tables["c"](sparse[:, 2])
        return self.top(torch.cat([a, b, c, d, dense], dim=1)).squeeze(1)


class OneTable(nn.Module):
    """One table for all fields, indexed by ids + per-field offsets."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("offsets", torch.tensor([0] + list(torch.tensor(SIZES).cumsum(0)[:-1])))
        self.table = nn.Embedding(sum(SIZES), 4)
        self.top = nn.Linear(4 * 4 + 3, 1)

    def forward(self, dense, sparse):
        return self.top(torch.cat([self.table(sparse + self.offsets).flatten(1), dense], dim=1)).squeeze(1)


class Hashing(nn.Module):
    """Ids are hashed inside the model: no lookup receives a column, so there is no answer."""

    def __init__(self) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(5, 2) for _ in range(3))

    def forward(self, dense, sparse):
        return sum(t((sparse[:, i] * 7 + 3) % 5).sum(1) for i, t in enumerate(self.tables)) + dense.sum(1)


def example(rows: int = 8, high: int = 3, fields: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(rows, 3), torch.randint(0, high, (rows, fields))


def test_eager_tables_are_matched_to_their_columns():
    torch.manual_seed(0)
    assert model_table_sizes(Permuted(), example()) == SIZES
    assert model_table_sizes(OneTable(), example()) == SIZES


def test_graph_module_tables_are_read_from_the_embedding_nodes(tmp_path):
    torch.manual_seed(0)
    for model in (Permuted(), OneTable()):
        save_pt2(model, example(), tmp_path / "m.pt2")
        loaded = load_model(tmp_path / "m.pt2")
        assert isinstance(loaded.module, torch.fx.GraphModule) and not hasattr(loaded.module, "table_sizes")
        assert model_table_sizes(loaded.module, loaded.example_inputs) == SIZES


def test_no_answer_when_the_lookups_cannot_be_matched():
    assert model_table_sizes(Hashing(), example(fields=3)) is None
    assert model_table_sizes(Permuted(), (torch.zeros(2, 3), torch.zeros(2, 4))) is None  # float "ids"


def test_data_shape_takes_the_tables_not_the_ids_of_the_example_batch(tmp_path):
    torch.manual_seed(0)
    inputs = example(high=3)  # ids 0..2 would suggest tables of 3 rows
    shape = data_shape(LoadedModel(Permuted(), inputs, "permuted"))
    assert shape == {"num_dense": 3, "table_sizes": SIZES, "num_tasks": 1}
    save_pt2(Permuted(), inputs, tmp_path / "m.pt2")
    assert data_shape(load_model(tmp_path / "m.pt2"))["table_sizes"] == SIZES
    fallback = data_shape(LoadedModel(Hashing(), example(high=3, fields=3), "hashing"))["table_sizes"]
    assert fallback == [int(c) + 1 for c in example(high=3, fields=3)[1].max(0).values]  # the old estimate

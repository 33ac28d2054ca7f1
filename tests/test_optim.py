"""Row-wise Adagrad: sparse and dense gradients give the same update, which matches the formula."""

import pytest
import torch

from amgp_fx.config import TrainConfig
from amgp_fx.optim import RowWiseAdagrad
from amgp_fx.train import build_optimizers


def _steps(sparse: bool, ids_per_step: list[list[int]], lr: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    table = torch.nn.Embedding(6, 3, sparse=sparse)
    weights = torch.randn(3)
    optimizer = RowWiseAdagrad(table.parameters(), lr=lr)
    for ids in ids_per_step:
        optimizer.zero_grad()
        (table(torch.tensor(ids)) * weights).sum().backward()
        optimizer.step()
    return table.weight.detach().clone(), optimizer.state[table.weight]["sum"].clone()


def test_sparse_update_equals_dense_update_with_repeated_ids():
    steps = [[1, 1, 4], [0, 4, 4, 4], [5]]
    sparse_weight, sparse_sum = _steps(True, steps)
    dense_weight, dense_sum = _steps(False, steps)
    torch.testing.assert_close(sparse_weight, dense_weight)
    torch.testing.assert_close(sparse_sum, dense_sum)


def _tables(sparse: bool) -> torch.nn.ModuleList:
    torch.manual_seed(1)
    return torch.nn.ModuleList([torch.nn.Embedding(7, 3, sparse=sparse), torch.nn.Embedding(4, 3, sparse=sparse),
                                torch.nn.Embedding(5, 2, sparse=sparse), torch.nn.Embedding(6, 3, sparse=sparse)])


def _train_tables(tables, steps, optimizer):
    for ids in steps:
        optimizer.zero_grad()
        loss = sum((table(torch.tensor(i)) * (k + 1)).sum() for k, (table, i) in enumerate(zip(tables, ids)) if i)
        loss.backward()
        optimizer.step()


def test_several_tables_update_together_like_each_alone():
    """Tables of one width share one batched update; row ids overlap across tables, some get no rows."""
    steps = [([0, 6, 6], [0, 3], [4, 4], []), ([6], [], [0], [5, 5, 0]), ([1, 1, 1], [3, 3], [], [2])]
    sparse, dense = _tables(True), _tables(False)
    _train_tables(sparse, steps, sparse_optimizer := RowWiseAdagrad(sparse.parameters(), lr=0.3))
    _train_tables(dense, steps, dense_optimizer := RowWiseAdagrad(dense.parameters(), lr=0.3))
    for a, b in zip(sparse.parameters(), dense.parameters()):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(sparse_optimizer.state[a]["sum"], dense_optimizer.state[b]["sum"])


def test_state_dict_round_trip_continues_identically():
    steps = [([0, 6], [1], [2], [3])] * 2
    first, second = _tables(True), _tables(True)
    _train_tables(first, steps, first_optimizer := RowWiseAdagrad(first.parameters(), lr=0.2))
    second.load_state_dict(first.state_dict())
    second_optimizer = RowWiseAdagrad(second.parameters(), lr=0.2)
    second_optimizer.load_state_dict(first_optimizer.state_dict())
    more = [([5, 0], [2, 2], [1], [0])]
    _train_tables(first, more, first_optimizer)
    _train_tables(second, more, second_optimizer)
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)
        assert torch.equal(first_optimizer.state[a]["sum"], second_optimizer.state[b]["sum"])


def test_update_matches_the_rowwise_formula():
    torch.manual_seed(0)
    table = torch.nn.Embedding(5, 4, sparse=True)
    before = table.weight.detach().clone()
    optimizer = RowWiseAdagrad(table.parameters(), lr=0.5, eps=1e-8)
    ids = torch.tensor([2, 2, 3])
    upstream = torch.randn(3, 4)
    (table(ids) * upstream).sum().backward()
    optimizer.step()
    expected = before.clone()
    for row, grad in ((2, upstream[0] + upstream[1]), (3, upstream[2])):
        accumulated = grad.pow(2).mean()
        expected[row] -= 0.5 * grad / (accumulated.sqrt() + 1e-8)
    torch.testing.assert_close(table.weight.detach(), expected)
    untouched = [0, 1, 4]
    assert torch.equal(table.weight.detach()[untouched], before[untouched])
    assert optimizer.state[table.weight]["sum"][untouched].eq(0).all()


def test_zero_eps_leaves_no_nan_in_unused_slots():
    table = torch.nn.Embedding(4, 2, sparse=True)
    optimizer = RowWiseAdagrad(table.parameters(), lr=0.1, eps=0.0)
    table(torch.tensor([3, 3, 3])).sum().backward()  # one distinct row: two unused slots point at row 0
    optimizer.step()
    assert torch.isfinite(table.weight).all()


def test_rejects_non_matrix_parameters_and_bad_lr():
    with pytest.raises(ValueError, match="2-D"):
        RowWiseAdagrad([torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="lr"):
        RowWiseAdagrad([torch.nn.Parameter(torch.zeros(3, 2))], lr=0.0)


@pytest.mark.parametrize("name, kind", [("rowwise_adagrad", RowWiseAdagrad), ("sgd", torch.optim.SGD),
                                        ("sparse_adam", torch.optim.SparseAdam), ("adagrad", torch.optim.Adagrad)])
def test_train_config_picks_the_sparse_optimizer(name, kind):
    model = torch.nn.ModuleDict({"table": torch.nn.Embedding(10, 4, sparse=True), "mlp": torch.nn.Linear(4, 1)})
    optimizers = build_optimizers(model, TrainConfig(optimizer="adam", sparse_optimizer=name))
    assert optimizers.names == ["dense", "sparse"]
    assert isinstance(optimizers.optimizers[0], torch.optim.Adam)
    assert type(optimizers.optimizers[1]) is kind
    assert TrainConfig.from_dict(TrainConfig(sparse_optimizer=name).to_dict()).sparse_optimizer.value == name


def test_unknown_sparse_optimizer_is_named_in_the_error():
    with pytest.raises(ValueError, match="sparse_optimizer must be one of"):
        TrainConfig(sparse_optimizer="lamb")

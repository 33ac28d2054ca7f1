"""The reusable conformance suite works on a model it has never seen, and the oracle catches a
broken surgery."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import amgp_fx
from amgp_fx.testing import GroupConformance, masked_copy


class GatedTower(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.gate, self.out = nn.Linear(5, 10), nn.Linear(5, 10), nn.Linear(10, 1)

    def forward(self, x):
        return self.out(torch.relu(self.a(x)) * torch.sigmoid(self.gate(x))).squeeze(-1)


def _factory():
    torch.manual_seed(0)
    return GatedTower(), (torch.randn(4, 5),)


class TestGatedTower(GroupConformance):
    factory = staticmethod(_factory)


def test_mask_oracle_detects_a_wrong_member():
    model, args = _factory()
    graph = amgp_fx.analyze(model, args)
    group = graph.group("a.weight[0]")
    assert {m.tensor for m in group.members} >= {"a.weight", "gate.weight", "out.weight"}
    # zero only the gate rows, forgetting the value rows and the consumer: outputs must differ
    partial = type(group)(group.id, group.name, group.kind, group.full_size,
                          members=[m for m in group.members if m.tensor.startswith("gate.")])
    masked = masked_copy(model, partial, np.arange(5)).eval()
    amgp_fx.shrink_(graph, {group.id: [5, 6, 7, 8, 9]})
    with pytest.raises(AssertionError):
        torch.testing.assert_close(graph.module.eval()(*args), masked(*args))

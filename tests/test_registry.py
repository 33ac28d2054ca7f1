"""Rule registry: unknown ops freeze what they touch, users register rules without global effects."""
import pytest
import torch
import torch.nn as nn

import amgp_fx
from amgp_fx.groups.model import Role


@torch.library.custom_op("amgp_test::scaled_swish", mutates_args=())
def scaled_swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x) * 1.5


@scaled_swish.register_fake
def _(x):
    return torch.empty_like(x)


class CustomActivationMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(5, 12), nn.Linear(12, 1)

    def forward(self, x):
        return self.b(torch.ops.amgp_test.scaled_swish(self.a(x)))


def _model():
    torch.manual_seed(0)
    return CustomActivationMLP(), (torch.randn(4, 5),)


def test_unknown_op_freezes_its_dims_and_is_reported():
    graph = amgp_fx.analyze(*_model())
    hidden = graph.group("a.weight[0]")
    assert not hidden.prunable and "has no coupling rule" in hidden.reason
    assert [u.target for u in graph.unknown_ops] == ["amgp_test.scaled_swish.default"]


def test_user_rule_makes_the_group_prunable_without_touching_the_default():
    rules = amgp_fx.default_registry()

    @rules.register(torch.ops.amgp_test.scaled_swish.default, family="pointwise")
    def scaled_swish_rule(ctx):
        """Element-wise: output index i is input index i."""
        return ctx.label(ctx.arg(0))

    graph = amgp_fx.analyze(*_model(), rules=rules)
    assert graph.group("a.weight[0]").prunable
    assert torch.ops.amgp_test.scaled_swish.default not in amgp_fx.default_registry()
    assert not amgp_fx.analyze(*_model()).group("a.weight[0]").prunable


def test_rules_are_keyed_by_overload_and_refuse_duplicates():
    rules = amgp_fx.default_registry()
    with pytest.raises(TypeError, match="OpOverload"):
        rules.register(torch.ops.aten.add, family="pointwise")
    with pytest.raises(ValueError, match="already registered"):
        rules.register(torch.ops.aten.relu.default, family="pointwise")(lambda ctx: None)


def test_every_op_in_the_reference_models_has_a_rule():
    from amgp_fx import models

    registry = amgp_fx.default_registry()
    for name in models.MODEL_NAMES:
        model = models.build_model(name, "small")
        graph = amgp_fx.analyze(model, model.example_inputs(4))
        assert not graph.unknown_ops, (name, [u.target for u in graph.unknown_ops])
        targets = {n.target for n in graph.module.graph.nodes if n.op == "call_function"
                   and isinstance(n.target, torch._ops.OpOverload)}
        missing = {t for t in targets if t not in registry and t is not torch.ops.aten.sym_size.int}
        assert not missing, (name, missing)


def test_roles_of_linear_members():
    graph = amgp_fx.analyze(*_model())
    roles = {(m.tensor, m.dim): m.role for g in graph.groups for m in g.members}
    assert roles[("a.weight", 0)] is Role.PRODUCER and roles[("a.weight", 1)] is Role.CONSUMER
    assert roles[("a.bias", 0)] is Role.BIAS and roles[("b.weight", 1)] is Role.CONSUMER


def test_a_failing_rule_freezes_instead_of_crashing():
    rules = amgp_fx.default_registry()

    @rules.register(torch.ops.aten.relu.default, family="pointwise", replace=True)
    def broken(ctx):
        raise RuntimeError("cannot handle this")

    @rules.register(torch.ops.aten.tanh.default, family="pointwise", replace=True)
    def wrong_rank(ctx):
        return ctx.label(ctx.arg(0))[:-1]

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 1))
    graph = amgp_fx.analyze(model, (torch.randn(3, 4),), rules=rules)
    assert not graph.group("0.weight[0]").prunable and "cannot handle this" in graph.group("0.weight[0]").reason
    assert not graph.group("2.weight[0]").prunable and "labels for 2 dims" in graph.group("2.weight[0]").reason

"""Recurrent layers (``aten.gru.input``, ``aten.lstm.input``): the hidden units are one group.

Each cell (layer, direction) has ``w_ih`` (G*H, I), ``w_hh`` (G*H, H) and biases (G*H,), with G
gate blocks (GRU 3, LSTM 4). Row ``g*H + j`` of every block belongs to hidden unit j, so a row is
the product (gate g, unit j) and the gates are frozen: removing unit j removes its G rows together,
its column of ``w_hh``, its entry of the initial and final states, and (bidirectional) its two
positions in the output. Every layer and direction shares one hidden size, so one group.
Removing a unit equals zeroing its slices when its initial state is zero (the traced default):
a zeroed unit's gates sit at sigmoid(0) and its candidate at tanh(0) = 0, so it stays 0.
"""
from __future__ import annotations

import numpy as np
import torch

from amgp_fx.groups.context import RuleContext
from amgp_fx.groups.model import Role
from amgp_fx.groups.registry import builtin

aten = torch.ops.aten


def _recurrent(ctx: RuleContext, gates: int, states: list):
    """Couple one ``gru``/``lstm`` call; ``states`` are the initial-state nodes (h0, and c0 for LSTM)."""
    x, params = ctx.arg(0), list(ctx.arg(2))
    has_biases, layers, bidirectional = ctx.arg(3), ctx.arg(4), ctx.arg(7)
    directions = 2 if bidirectional else 1
    per_cell = 4 if has_biases else 2
    xl = ctx.label(x)
    state_labels = [ctx.label(s) for s in states]
    if len(params) != layers * directions * per_cell:  # LSTM proj_size adds w_hr per cell
        reason = f"{ctx.node.name}: recurrent layer with projections (proj_size) is not pruned"
        for lab in [xl, *state_labels, *(ctx.label(p) for p in params)]:
            ctx.freeze(lab, reason)
        return [ctx.fresh_tensor(v, reason) for v in ctx.out]
    hidden_size = ctx.shape(params[1])[1]
    hidden = ctx.fresh(hidden_size, grouping=True, kind="hidden", what="[hidden]")
    gate_reason = f"{ctx.node.name}: gate blocks of a recurrent layer are not removed"
    layer_input = xl[-1]
    for layer in range(layers):
        for direction in range(directions):
            cell = (layer * directions + direction) * per_cell
            w_ih, w_hh = params[cell], params[cell + 1]
            rows = ctx.atoms.new_products([ctx.fresh(gates, frozen=gate_reason, what="[gates]"), hidden],
                                          f"{ctx.node.name}:gate_rows")
            ctx.couple(ctx.label(w_ih)[0], rows)
            ctx.couple(ctx.label(w_ih)[1], layer_input)
            ctx.couple(ctx.label(w_hh)[0], rows)
            ctx.couple(ctx.label(w_hh)[1], hidden)
            ctx.role(w_ih, 0, Role.PRODUCER)
            ctx.role(w_hh, 0, Role.PRODUCER)
            ctx.role(w_ih, 1, Role.CONSUMER)
            ctx.role(w_hh, 1, Role.CONSUMER)
            if has_biases:
                for bias in params[cell + 2: cell + 4]:
                    ctx.couple(ctx.label(bias)[0], rows)
                    ctx.role(bias, 0, Role.BIAS)
        layer_input = np.concatenate([hidden] * directions)
    out_states = []
    traced_outputs = ctx.out if isinstance(ctx.out, (list, tuple)) else ()
    for index, lab in enumerate(state_labels):
        ctx.freeze(lab[0], f"{ctx.node.name}: the state's first dim indexes layers and directions")
        ctx.couple(lab[-1], hidden)
        labels = lab[:-1] + (hidden,)
        traced = traced_outputs[index + 1] if index + 1 < len(traced_outputs) else None
        if _has_spurious_step_dim(traced, len(labels)):
            # torch < 2.13 records LSTM's h_n and c_n as (layers * directions, 1, B, H) while they run as
            # (layers * directions, B, H) (pytorch/pytorch#151200): label the recorded shape
            labels = labels[:1] + (ctx.fresh(1, frozen=f"{ctx.node.name}: recorded step dim", what="[step]"),) \
                + labels[1:]
        out_states.append(labels)
    return [xl[:-1] + (layer_input,), *out_states]


def _has_spurious_step_dim(value, rank: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == rank + 1 and value.shape[1] == 1


@builtin(aten.gru.input, family="recurrent")
def aten_gru(ctx: RuleContext):
    """``gru.input(Tensor input, Tensor hx, Tensor[] params, bool has_biases, int num_layers, float dropout,
    bool train, bool bidirectional, bool batch_first) -> (output, h_n)``."""
    return _recurrent(ctx, 3, [ctx.arg(1)])


@builtin(aten.lstm.input, family="recurrent")
def aten_lstm(ctx: RuleContext):
    """``lstm.input(Tensor input, Tensor[] hx, Tensor[] params, bool has_biases, int num_layers, float dropout,
    bool train, bool bidirectional, bool batch_first) -> (output, h_n, c_n)``."""
    return _recurrent(ctx, 4, list(ctx.arg(1)))

"""GradMax growth (Evci et al. 2022): regrown units get incoming weights along the directions in which
the loss gradient on their (zero) outgoing weights is largest.

Why: a unit regrown with zero outgoing weights learns them from its gradient, and with random (or
step-0) incoming weights that gradient is small and unaligned with what the model still gets wrong.
For a group produced by one plain linear op P (input x, C channels in) and read by plain linear ops
C_k (output gradient d_k), a new unit with incoming weights w gets on its outgoing weights in C_k the
gradient E[d_k act(w.x)] ~ E[d_k x^T] w = M_k w (the paper's linear approximation of the
activation). The sum over k of |M_k w|^2 is largest along the top eigenvectors of G = sum_k M_k^T M_k,
so the regrown units take them in order (as many as G has directions with a gradient; the others keep
what ``surgery.grow_`` gave them), each scaled to the mean norm of the kept units' incoming
weights, signed so that more of the batch switches it on, with a zero bias. The outgoing weights stay
zero: the growth is function-preserving (``preserve_growth``), and the first steps after it move the
regrown units' outgoing weights as fast as the data allows.

Only groups whose channels come out of exactly one plain linear op (one weight row per channel) and
go into plain linear ops are re-initialised; others keep what ``surgery.grow_`` gave them.

Dim letters: N rows (batch x positions), I inputs of the producer, O outputs of a consumer, C channels.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import fx

from amgp_fx.activations import plain_consumer_nodes
from amgp_fx.groups.analyze import DependencyGraph
from amgp_fx.groups.model import Group, Role
from amgp_fx.rescale import member_views

__all__ = ["GradientProbe", "record_linear_gradients", "gradmax_incoming_"]

RANK_TOLERANCE = 1e-9  # eigenvalues below this share of the largest carry no gradient: those units keep their values

# (inputs of the graph module, loss of its output): the batch GradMax measures its gradients on
GradientProbe = tuple[tuple, Callable[[Any], torch.Tensor]]


class _Recorder(fx.Interpreter):
    """Keeps the input (detached) and the output (in the autograd graph) of every plain linear node."""

    def __init__(self, module: fx.GraphModule, watched: Mapping[fx.Node, tuple]) -> None:
        super().__init__(module)
        self.watched = watched
        self.inputs: dict[fx.Node, torch.Tensor] = {}
        self.outputs: dict[fx.Node, torch.Tensor] = {}

    def run_node(self, node: fx.Node) -> Any:
        result = super().run_node(node)
        if node in self.watched and self.watched[node][2] == -1:  # linear ops (input channels last)
            args, _ = self.fetch_args_kwargs_from_env(node)
            self.inputs[node] = args[0].detach()
            if isinstance(result, torch.Tensor) and result.requires_grad:
                self.outputs[node] = result
        return result


def record_linear_gradients(graph: DependencyGraph, probe: GradientProbe) -> dict[str, list[tuple]]:
    """weight FQN -> [(input (N, I), gradient of the loss at the output (N, O))] for every plain linear
    node of ``graph.module`` on the probe's batch (eval mode; parameters' ``.grad`` untouched)."""
    inputs, loss_of = probe
    module = graph.module
    watched = plain_consumer_nodes(module)
    recorder = _Recorder(module, watched)
    was_training = module.training
    module.eval()
    try:
        with torch.enable_grad():
            loss = loss_of(recorder.run(*inputs))
            nodes = list(recorder.outputs)
            grads = torch.autograd.grad(loss, [recorder.outputs[n] for n in nodes], allow_unused=True)
    finally:
        module.train(was_training)
    result: dict[str, list[tuple]] = {}
    for node, grad in zip(nodes, grads):
        if grad is None:
            continue
        x = recorder.inputs[node]
        result.setdefault(watched[node][0], []).append((x.reshape(-1, x.shape[-1]).double(),
                                                        grad.detach().reshape(-1, grad.shape[-1]).double()))
    return result


def _linear_members(graph: DependencyGraph, group: Group, role: Role, recorded: Mapping[str, list]) -> list:
    dim = 0 if role is Role.PRODUCER else 1
    return [(member, tensor, index, channel) for member, tensor, index, channel in member_views(graph, group, role)
            if member.dim == dim and member.tensor in recorded and tensor.dim() == 2]


@torch.no_grad()
def gradmax_incoming_(graph: DependencyGraph, group: Group, regrown: np.ndarray,
                      recorded: Mapping[str, list[tuple]],
                      reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> bool:
    """Set the incoming weights (and bias) of the present, just regrown channels ``regrown`` (full-size
    ids) of ``group`` by GradMax from ``record_linear_gradients``; returns whether it could (one plain
    linear producer, at least one plain linear consumer). ``reduce`` averages G and the producer's
    input mean over data-parallel ranks, so that every rank picks the same directions."""
    producers = _linear_members(graph, group, Role.PRODUCER, recorded)
    consumers = _linear_members(graph, group, Role.CONSUMER, recorded)
    if len(producers) != 1 or not consumers or len(recorded[producers[0][0].tensor]) != 1:
        return False
    member, weight, index, channel = producers[0]
    if len(torch.unique(channel)) != len(channel):
        return False
    (x, _), = recorded[member.tensor]
    gram = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    for consumer, *_ in consumers:
        for _, d in recorded[consumer.tensor]:
            if d.shape[0] != x.shape[0]:
                return False  # the consumer reads other rows (another batch layout): no pairing with x
            m = d.T @ x / x.shape[0]  # (O, I)
            gram += m.T @ m
    mean_x = x.mean(0)
    if reduce is not None:
        gram, mean_x = reduce(gram), reduce(mean_x)
    values, vectors = torch.linalg.eigh(gram)  # ascending eigenvalues
    rank = int((values > RANK_TOLERANCE * values.max().clamp_min(1e-300)).sum())
    position = {int(c): int(i) for i, c in zip(index.tolist(), channel.tolist())}
    regrown_ids = set(np.asarray(regrown).tolist())
    new = [(c, position[c]) for c in regrown_ids & position.keys()]
    new = sorted(new)[:rank]
    kept_rows = [i for c, i in position.items() if c not in regrown_ids]
    if not new or not kept_rows:
        return False
    directions = vectors[:, -len(new):].flip(1).T  # (count, I), the largest eigenvalue first
    signs = torch.where(directions @ mean_x < 0, -1.0, 1.0).to(directions.dtype)
    scale = weight[kept_rows].double().norm(dim=1).mean()
    rows = torch.tensor([row for _, row in new], device=weight.device)
    weight.index_copy_(0, rows, (directions * signs[:, None] * scale).to(weight.device, weight.dtype))
    chosen_channels = torch.tensor([c for c, _ in new])
    for _, bias, bias_index, bias_channel in member_views(graph, group, Role.BIAS):
        chosen = bias_index[torch.isin(bias_channel, chosen_channels)]
        bias.index_fill_(0, chosen.to(bias.device), 0.0)
    return True


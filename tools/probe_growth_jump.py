"""Does a lossless growth stay harmless in the steps after it? Held-out loss around a growth, by width.

Issue 12: on the GPU, DLRM's AUC fell from 0.787 to 0.724 within 13 steps of a growth that changed
no output. The suspect is Adam: regrown units come back with zero moments while the tensor's step
count (which drives the bias correction) is late, so their first updates are ~lr-sized sign steps
that all push the next layer the same way, a push that grows with the number of regrown units.
This probe isolates that: a ReLU MLP learns a fixed random teacher with Adam at half width, grows
back function-preservingly (``grow_(init="fresh")``: random in, zero out), and keeps training; it
records the held-out loss before and after, per width and per optimizer-state policy of the
regrown units ("reset": zeros, what a unit removed at step 0 gets back; "mean": the kept units'
second moments).

Example:
    python tools/probe_growth_jump.py --widths 64 256 1024 --seeds 1 --out /tmp/growth_jump.json   # CPU, ~5 min
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import amgp_fx  # noqa: E402
from amgp_fx.fileio import atomic_write_json  # noqa: E402


class Mlp(nn.Module):
    def __init__(self, inputs: int, width: int, depth: int):
        super().__init__()
        layers, size = [], inputs
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        self.net = nn.Sequential(*layers, nn.Linear(size, 1))

    def forward(self, x):
        return self.net(x)


def regrown_masks(graph, record) -> dict[torch.Tensor, torch.Tensor]:
    """Parameter -> bool mask of its entries that a growth of ``record`` brought back."""
    params = dict(graph.module.named_parameters())
    masks = {}
    for surgery in record.tensors:
        if surgery.name in params:
            param = params[surgery.name]
            mask = torch.zeros(param.shape, dtype=torch.bool)
            for dim, _, removed, _ in surgery.steps:
                mask.index_fill_(dim, removed, True)
            masks[param] = mask
    return masks


def ramp_regrown_updates(optimizer, masks, steps: int):
    """For ``steps`` optimizer steps, each regrown entry moves by k/steps of its update (k = 1, 2, ...):
    a learning-rate warm-up of the regrown units alone; the kept ones train at the full rate."""
    state = {"k": 0, "old": {}}

    def before(opt, args, kwargs):
        state["old"] = {p: p.detach().clone() for p in masks}

    def after(opt, args, kwargs):
        state["k"] += 1
        share = state["k"] / steps
        with torch.no_grad():
            for p, mask in masks.items():
                old = state["old"][p]
                p.copy_(torch.where(mask, old + share * (p - old), p))
        if state["k"] >= steps:
            handles[0].remove()
            handles[1].remove()

    handles = [optimizer.register_step_pre_hook(before), optimizer.register_step_post_hook(after)]


def run(width: int, policy: str, args, seed: int, rewarm: int = 0, unit_rewarm: int = 0) -> dict:
    """Held-out loss at every step from ``args.grow_at - 5`` to the end, for one width and policy."""
    torch.manual_seed(seed)
    teacher = Mlp(args.inputs, 256, 2)
    held_out = torch.randn(8192, args.inputs)
    with torch.no_grad():
        target_held_out = teacher(held_out)
    model = Mlp(args.inputs, width, args.depth)
    graph = amgp_fx.analyze(model, (torch.randn(8, args.inputs),))
    groups = graph.prunable_groups(("hidden",))
    record = amgp_fx.shrink_(graph, {g.id: list(range(0, g.size, 2)) for g in groups})
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    losses = {}
    for step in range(args.steps):
        if step == args.grow_at:
            with torch.no_grad():
                before = nn.functional.mse_loss(graph.module(held_out), target_held_out).item()
            amgp_fx.grow_(graph, record, optimizer, init="fresh", optimizer_state=policy)
            if unit_rewarm:
                ramp_regrown_updates(optimizer, regrown_masks(graph, record), unit_rewarm)
            with torch.no_grad():
                after = nn.functional.mse_loss(graph.module(held_out), target_held_out).item()
        x = torch.randn(args.batch_size, args.inputs)
        with torch.no_grad():
            y = teacher(x)
        if rewarm and args.grow_at <= step < args.grow_at + rewarm:  # the rate rises from lr/rewarm back to lr
            for group in optimizer.param_groups:
                group["lr"] = args.lr * (step - args.grow_at + 1) / rewarm
        optimizer.zero_grad()
        nn.functional.mse_loss(graph.module(x), y).backward()
        optimizer.step()
        if step >= args.grow_at - 5:
            with torch.no_grad():
                losses[step + 1] = nn.functional.mse_loss(graph.module(held_out), target_held_out).item()
    after_steps = [losses[s] for s in range(args.grow_at + 1, min(args.grow_at + 31, args.steps + 1))]
    return {"width": width, "policy": policy, "rewarm": rewarm, "unit_rewarm": unit_rewarm, "seed": seed, "loss_before_growth": before, "loss_at_growth": after,
            "worst_in_30_steps": max(after_steps), "jump": max(after_steps) / before - 1.0,
            "final": losses[args.steps], "curve": losses}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", nargs="+", type=int, default=[64, 256, 1024])
    parser.add_argument("--policies", nargs="+", default=["reset", "mean"], choices=["reset", "mean", "restore"])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--rewarm", nargs="+", type=int, default=[0],
                        help="after the growth, the rate rises linearly back over this many steps (0: off)")
    parser.add_argument("--unit-rewarm", nargs="+", type=int, default=[0],
                        help="after the growth, only the regrown entries' updates ramp up over this many steps")
    parser.add_argument("--inputs", type=int, default=32)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--grow-at", type=int, default=150)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if not 0 < args.grow_at < args.steps:
        parser.error("--grow-at must be inside (0, --steps)")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for width in args.widths:
        for policy in args.policies:
            for rewarm, unit, seed in ((r, u, s) for r in args.rewarm for u in args.unit_rewarm
                                       for s in range(args.seeds)):
                result = run(width, policy, args, seed, rewarm, unit)
                results.append(result)
                print(f"width {width:5d} {policy:7s} rewarm {rewarm:3d} unit-rewarm {unit:3d} seed {seed}: loss {result['loss_before_growth']:.5f} -> "
                      f"{result['loss_at_growth']:.5f} at the growth, worst {result['worst_in_30_steps']:.5f} "
                      f"in 30 steps ({result['jump']:+.1%}), final {result['final']:.5f}", flush=True)
    atomic_write_json(args.out, {"command": "python tools/probe_growth_jump.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "results": results})
    return results


if __name__ == "__main__":
    main()

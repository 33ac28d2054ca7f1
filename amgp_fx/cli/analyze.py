"""``amgp-compress analyze``: list the model's groups of channels (what can be pruned, and why not)."""
from __future__ import annotations

import argparse
from pathlib import Path

from amgp_fx.cli.common import load
from amgp_fx.cli.output import render_table, write_json

__all__ = ["command"]


def command(args: argparse.Namespace) -> int:
    from amgp_fx.groups.analyze import analyze as analyze_model

    loaded = load(args)
    graph = analyze_model(loaded.module, loaded.example_inputs)
    rows = graph.table(prunable_only=args.prunable_only)
    print(render_table([[r["id"], r["name"], r["kind"], f"{r['size']}", "yes" if r["prunable"] else "no",
                   r["reason"][:70]] for r in rows], ["group", "name", "kind", "size", "prunable", "why not"]))
    prunable = graph.prunable_groups()
    print(f"{len(graph.groups)} groups, {len(prunable)} prunable ({sum(g.full_size for g in prunable)} channels); "
          f"ops without a rule: {len(graph.unknown_ops)}")
    if args.json:
        write_json(Path(args.json), {"version": 1, "model": loaded.description, "groups": graph.table(),
                                      "unknown_ops": sorted({u.target for u in graph.unknown_ops})})
        if not args.quiet:
            print(f"wrote {Path(args.json).resolve()}")
    return 0

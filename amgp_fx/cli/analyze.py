"""``amgp-compress analyze``: list the model's groups of channels (what can be pruned, and why not)."""
from __future__ import annotations

import argparse
from pathlib import Path

from amgp_fx.cli.common import input_line, load
from amgp_fx.cli.output import Progress, render_table, write_json

__all__ = ["command"]


def _member_rows(graph, groups) -> list[list]:
    """Per group, every member tensor dim: the segment it holds, role, the group's channels in it, its
    size; the last column is the group's segment count (the analyze table shows groups with several)."""
    from amgp_fx.segments import group_segments, member_sizes

    shapes = {name: tuple(t.shape) for name, t in [*graph.module.named_parameters(), *graph.module.named_buffers()]}
    rows = []
    for group in groups:
        segments = group_segments(group)
        for member, size in zip(group.members, member_sizes(group, shapes, {})):
            held = set(member.channels[member.channels >= 0].tolist())
            owners = [s.owner for s in segments if held.intersection(s.channels.tolist())]
            segment = owners[0] if len(owners) == 1 else f"{len(owners)} segments"
            rows.append([group.id, segment, size.tensor, size.dim, size.role, size.channels, size.before,
                         len(segments)])
    return rows


def command(args: argparse.Namespace) -> int:
    from amgp_fx.groups.analyze import analyze as analyze_model

    progress = Progress(2, args.quiet)  # tracing a large model takes seconds: say so on stderr
    progress.stage("loading the model")
    loaded = load(args)
    progress.done(loaded.description)
    progress.stage("tracing and grouping the channels")
    graph = analyze_model(loaded.module, loaded.example_inputs)
    progress.done(f"{len(graph.groups)} groups")
    rows = graph.table(prunable_only=args.prunable_only)
    print(render_table([[r["id"], r["name"], r["kind"], f"{r['size']}", "yes" if r["prunable"] else "no",
                   r["reason"][:70]] for r in rows], ["group", "name", "kind", "size", "prunable", "why not"]))
    prunable = graph.prunable_groups()
    print(f"{len(graph.groups)} groups, {len(prunable)} prunable ({sum(g.full_size for g in prunable)} channels); "
          f"ops without a rule: {len(graph.unknown_ops)}")
    print(input_line(loaded))
    members = _member_rows(graph, [g for g in graph.groups if not args.prunable_only or g.prunable])
    spanning = [row for row in members if row[-1] > 1]
    if spanning:
        print("groups spanning several tensors (pruned per segment by the balanced policy):")
        print(render_table([row[:-1] for row in spanning],
                           ["group", "segment of", "tensor", "dim", "role", "channels", "size"]))
    if args.json:
        groups = graph.table()
        by_group: dict[str, list] = {}
        for row in members:
            by_group.setdefault(row[0], []).append(dict(zip(("segment", "tensor", "dim", "role", "channels", "size"),
                                                            row[1:-1])))
        for entry in groups:
            entry["member_tensors"] = by_group.get(entry["id"], [])
        write_json(Path(args.json), {"version": 1, "model": loaded.description, "groups": groups,
                                      "unknown_ops": sorted({u.target for u in graph.unknown_ops})})
        if not args.quiet:
            print(f"wrote {Path(args.json).resolve()}")
    return 0

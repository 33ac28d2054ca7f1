"""``amgp-compress prune``: one-shot structured pruning to a ratio or a FLOPs target; saves the model and the plan."""
from __future__ import annotations

import argparse

from amgp_fx.cli.common import (check_source, load, member_rows, model_metadata, plan_rows, prune_graph, prune_request,
                                save_model, stats_line)
from amgp_fx.cli.output import OutputDir, Progress, render_table, report_written, write_json

__all__ = ["command"]


def command(args: argparse.Namespace) -> int:
    from amgp_fx.groups.analyze import analyze as analyze_model

    request = prune_request(args)
    check_source(args)
    progress = Progress(3, args.quiet)
    with OutputDir(args.output_dir) as out:
        progress.stage("loading and analysing the model")
        loaded = load(args)
        graph = analyze_model(loaded.module, loaded.example_inputs)
        progress.done(f"{len(graph.prunable_groups())} prunable groups")
        progress.stage("pruning")
        plan = prune_graph(graph, request, args.apply_plan)
        progress.done(stats_line(plan.stats))
        progress.stage("saving")
        save_model(out, "pruned", graph.module, loaded.example_inputs, model_metadata(loaded, plan),
                   loaded.static_batch)
        plan.save(out.file("plan.json"))
        columns = ("id", "name", "kind", "before", "after")
        write_json(out.file("prune_report.json"), {"version": 1, "model": loaded.description, **plan.stats, "groups": [
            {**dict(zip(columns, row, strict=True)), "policy": g.policy, "members": list(g.members)}
            for row, g in zip(plan_rows(plan), plan.groups, strict=True)]})
        progress.done()
    print(render_table(plan_rows(plan), ["group", "name", "kind", "before", "after"]))
    if any(g.members for g in plan.groups):
        print(render_table(member_rows(plan), ["group", "tensor", "dim", "role", "before", "after"]))
    report_written(out, args.quiet)
    return 0

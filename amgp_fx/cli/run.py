"""``amgp-compress run``: the whole pipeline on one model, reports in one folder.

Load or build the model, train it (dense or AMGP) on synthetic data, Criteo TSV or the user's own
file, export and time the dense model, prune it one-shot to a ratio or FLOPs target, fine-tune,
export and time the compact model, and write both models, the plan, the metrics, the ONNX files
and the reports into one folder. The dense model is exported and timed before pruning because
pruning slices the tensors it shares with the compact model.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from amgp_fx.cli.bench import bench_variant, save_latency
from amgp_fx.cli.common import (export_model, load, metrics_text, model_label, model_metadata, plan_rows, prune_graph,
                                prune_request, runtime_devices, save_model, stats_line)
from amgp_fx.cli.data import data_shape, load_data
from amgp_fx.cli.output import OutputDir, Progress, render_table, write_json
from amgp_fx.cli.train import (bind_model_inputs, check_switch_flags, positional_view, saved_map, static_rows,
                               train_model, train_summary)
from amgp_fx.cli.values import parse_batch_sizes
from amgp_fx.errors import UsageError

__all__ = ["command", "run_report"]


def run_report(summary: dict, plan, latency_table: str) -> str:
    rows = plan_rows(plan)
    quality = [[stage, metrics_text(summary[key]["eval"]), summary[key]["steps"]]
               for stage, key in (("dense", "dense_training"), ("compact", "compact_training")) if key in summary]
    return "\n".join([
        "# amgp-compress run", "", f"Model: {summary['model']}", "",
        "## Pruning", "", stats_line(plan.stats), "", render_table(rows, ["group", "name", "kind", "before", "after"]),
        "", "## Quality (held-out 10% of the data)", "",
        render_table(quality, ["model", "metrics", "training steps"]) if quality else "no training",
        "", "## Latency", "", latency_table, "",
        "Files: dense.pt2/.safetensors, compact.pt2/.safetensors (+ plan.json), dense.onnx, compact.onnx, "
        "latency.json, groups.json, summary.json.", ""])


def command(args: argparse.Namespace) -> int:
    from amgp_fx.groups.analyze import analyze
    from amgp_fx.pruning_plan import count_parameters

    request = prune_request(args)
    parse_batch_sizes(args.batch_sizes)
    if args.steps < 0 or args.finetune_steps < 0:
        raise UsageError("--steps and --finetune-steps must be >= 0", "Pass 0 to skip training")
    check_switch_flags(args)
    progress = Progress(7, args.quiet)
    started = time.perf_counter()
    summary: dict[str, Any] = {"version": 1}
    with OutputDir(args.output_dir) as out:
        progress.stage("loading the model")
        torch.manual_seed(args.seed)
        loaded = load(args, default_model="dlrm")
        module, inputs = loaded.module, loaded.example_inputs
        summary["model"] = loaded.description
        progress.done(f"{loaded.description}, {count_parameters(module):,} parameters")
        training = bool(args.steps or args.finetune_steps)
        args.train_device = runtime_devices(args.device)[1] if training else "cpu"  # resolved once, for both trainings
        where = "" if args.train_device == "cpu" else f" on {args.train_device}"
        progress.stage(f"training {'with AMGP' if args.amgp else 'dense'} for {args.steps} steps{where}")
        summary["train_device"] = args.train_device
        static = loaded.static_batch
        bound = bind_model_inputs(loaded, args) if training else None
        shape = data_shape(positional_view(loaded, bound)) if training else None
        data = static_rows(load_data(args, shape), static) if training else None
        if args.steps:
            module, result = train_model(module, data, args, args.steps, amgp=args.amgp, inputs=inputs, bound=bound,
                                         static_batch=static)
            summary["dense_training"] = train_summary(result)
            progress.done(f"eval {metrics_text(result.metrics)}")
        else:
            progress.done("skipped")
        metadata = {**model_metadata(loaded, input_map=saved_map(bound) if bound else None),
                    **({"data": shape} if shape else {})}
        progress.stage("saving, exporting and timing the dense model")
        save_model(out, "dense", module, inputs, metadata, static)
        dense_export = export_model(module, inputs, out.file("dense.onnx"), args, static)
        records = bench_variant(out.file("dense.onnx"), module, inputs, model_label(loaded), "dense", args,
                                ("ort", "torch-eager"), static)
        progress.done(f"parity {dense_export.max_abs_diff:.1e}" if dense_export.max_abs_diff is not None else "")
        progress.stage("analysing and pruning")
        graph = analyze(module, inputs)
        write_json(out.file("groups.json"), {"version": 1, "groups": graph.table()})
        plan = prune_graph(graph, request, None)
        progress.done(stats_line(plan.stats))
        progress.stage(f"fine-tuning the compact model for {args.finetune_steps} steps")
        compact = graph.module
        if args.finetune_steps:
            compact, result = train_model(compact, data, args, args.finetune_steps, amgp=False, inputs=inputs,
                                          bound=bound, static_batch=static)
            summary["compact_training"] = train_summary(result)
            progress.done(f"eval {metrics_text(result.metrics)}")
        else:
            progress.done("skipped")
        progress.stage("saving, exporting and timing the compact model")
        save_model(out, "compact", compact, inputs, {**metadata, "plan": plan.to_dict()}, static)
        plan.save(out.file("plan.json"))
        compact_export = export_model(compact, inputs, out.file("compact.onnx"), args, static)
        records += bench_variant(out.file("compact.onnx"), compact, inputs, model_label(loaded), "compact", args,
                                 ("ort", "torch-eager"), static)
        progress.done()
        progress.stage("writing reports")
        table = save_latency(out, records, "dense")
        summary.update(pruning=plan.stats, plan_groups=len(plan.groups), exports={
            "dense": dense_export.to_dict(), "compact": compact_export.to_dict()},
            seconds=time.perf_counter() - started)
        write_json(out.file("summary.json"), summary)
        out.file("report.md").write_text(run_report(summary, plan, table), encoding="utf-8")
        progress.done()
    if not args.quiet:
        print(table)
        print(f"done in {time.perf_counter() - started:.0f} s; {len(out.written)} files in {out.path.resolve()}:")
        print("  " + "  ".join(p.name for p in out.written))
        print(f"  start with {out.path / 'report.md'}")
    return 0

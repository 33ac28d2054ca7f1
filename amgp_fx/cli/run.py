"""``amgp-compress run``: the whole pipeline on one model, reports in one folder.

Load or build the model, train it (dense or AMGP) on synthetic data, Criteo TSV or the user's own
file, export and time the full-size model, prune it one-shot to a ratio or FLOPs target, fine-tune,
export and time the compact model, and write both models, the plan, the metrics, the ONNX files,
the plots and the reports into one folder. report.md is the page to read first: what was done, the
numbers with what they mean, and the plots. The full-size model is exported and timed before
pruning because pruning slices the tensors it shares with the compact model.

The full-size model is called by how it was trained: "full-size (AMGP-trained)", never "dense",
after AMGP (its files keep the names ``dense.*``). Fractions are written as every report writes
them (:mod:`amgp_fx.report_format`): ``0.65x`` of the full-size (dense) model.
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
from amgp_fx.cli.plots import PLOT_HINT, plotting_available, save_curve, save_latency_plot
from amgp_fx.cli.train import (bind_model_inputs, check_switch_flags, positional_view, saved_map, static_rows,
                               train_model, train_summary)
from amgp_fx.cli.values import parse_batch_sizes
from amgp_fx.errors import UsageError
from amgp_fx.report_format import flops_text, of_dense, ratio

__all__ = ["command", "full_size_label", "run_report"]

FULL, COMPACT = "full-size", "compact"  # the latency variants and the names the report uses
FILES = {  # what each output file is, for the report's file list (only those written are listed)
    "report.md": "this report", "summary.json": "every number of this report, machine-readable",
    "train_curve.png": "training curve: width and FLOPs per step (AMGP), loss and held-out AUC over steps",
    "latency.png": "p50 latency against batch size, both models", "latency.json": "latency records",
    "latency.md": "latency table", "dense.pt2": "full-size model (torch.export program)",
    "dense.safetensors": "full-size model weights", "dense.onnx": "full-size model, ONNX",
    "compact.pt2": "compact model (torch.export program)",
    "compact.safetensors": "compact model weights (with the plan)",
    "compact.onnx": "compact model, ONNX", "plan.json": "pruning plan: the channels kept in each group",
    "groups.json": "the full-size model's groups of channels (what could be pruned)",
}


def full_size_label(training: dict | None) -> str:
    """What to call the model before pruning: by how it was trained, never "dense" after AMGP."""
    amgp = (training or {}).get("amgp")
    if amgp is None or amgp.get("method") == "dense":  # --amgp-recipe dense: the dense baseline
        return f"{FULL} (dense-trained)" if training else f"{FULL} (untrained here)"
    method = "AMGP" if amgp.get("method") == "amgp" else "prune-only"
    return f"{FULL} ({method}-trained)" if amgp.get("final") == "full" else f"{method}-trained (ends compact)"


def _recipe_text(name: str) -> str:
    """``amgp-half: 60% of the steps with 50% of the prunable units removed, in 3 cycles``."""
    from amgp_fx.schedule import RECIPES

    recipe = RECIPES.get(name, {})
    fractions = recipe.get("fractions", {})
    if fractions.get("method", "amgp") != "amgp":
        return f"{name} ({fractions.get('method')} baseline)"
    return (f"{name}: {fractions.get('pruned', 0):.0%} of the steps with {recipe.get('ratio', 0):.0%} of the "
            f"prunable units removed, in {fractions.get('cycles', 1)} cycle(s), each pruned phase followed by "
            "growing them back")


def _what_was_done(summary: dict, args: argparse.Namespace) -> list[str]:
    """The opening paragraph: model, data, training, pruning, timing."""
    data, training, tuning = summary.get("data") or {}, summary.get("training"), summary.get("fine_tuning")
    lines = [f"- **Model**: {summary['model']} ({summary['parameters']:,} parameters).",
             f"- **Data**: {data.get('source', '-')}; {data.get('train_rows', 0):,} rows to train on and "
             f"{data.get('held_out_rows', 0):,} held-out rows, never trained on, to score on."
             if data else "- **Data**: none (no training steps)."]
    if training:
        how = f"with AMGP, recipe {_recipe_text(training['amgp']['recipe'])}" if training.get("amgp") else "dense"
        lines.append(f"- **Training**: {training['steps']} steps, {how}, batch {args.train_batch}, "
                     f"on {summary.get('train_device', 'cpu')}. Result: the **{summary['labels'][FULL]}** model.")
    else:
        lines.append("- **Training**: none (--steps 0): the model as loaded.")
    target = f"to {args.flops_target} of its forward FLOPs" if args.flops_target else f"ratio {args.ratio}"
    lines.append(f"- **Pruning**: one-shot structured pruning of the {summary['labels'][FULL]} model ({target}, "
                 f"criterion {args.criterion}) into the **{COMPACT}** model"
                 + (f", then {tuning['steps']} fine-tuning steps." if tuning else ", not fine-tuned."))
    lines.append(f"- **Timing**: both models exported to ONNX and timed with ONNX Runtime and PyTorch eager at "
                 f"batch sizes {args.batch_sizes} ({args.iters} timed calls each after {args.warmup} warm-up calls).")
    return lines


def _models_table(summary: dict) -> str:
    """One row per model: size, FLOPs, held-out quality."""
    stats, batch = summary["pruning"], summary.get("flops_batch")
    rows = []
    for name, key, suffix in ((FULL, "training", "before"), (COMPACT, "fine_tuning", "after")):
        metrics = (summary.get(key) or {}).get("eval") or {}
        rows.append([summary["labels"][name], f"{stats.get(f'params_{suffix}', 0):,}",
                     of_dense(ratio(stats.get(f"params_{suffix}"), stats.get("params_before"))),
                     flops_text(stats.get(f"flops_{suffix}")),
                     of_dense(ratio(stats.get(f"flops_{suffix}"), stats.get("flops_before"))),
                     f"{metrics['auc']:.4f}" if "auc" in metrics else "not evaluated",
                     f"{metrics['logloss']:.4f}" if "logloss" in metrics else "-",
                     "dense.*" if name == FULL else "compact.*"])
    per = f" (batch {batch})" if batch else ""
    return render_table(rows, ["model", "parameters", "vs full-size", f"forward FLOPs{per}", "vs full-size",
                               "held-out AUC", "held-out logloss", "files"])


def _training_section(summary: dict) -> list[str]:
    """AMGP's training FLOPs as a fraction of dense, and the training curve."""
    lines = []
    amgp = (summary.get("training") or {}).get("amgp")
    if amgp:
        fraction = amgp.get("flops_vs_full_width")
        lines += [f"**Training FLOPs: {of_dense(fraction)} of dense.** AMGP's {amgp['steps']} training steps cost "
                  f"{flops_text(amgp['train_flops'])}; the same steps at full width (dense training) would cost "
                  f"{flops_text(amgp['full_width_train_flops'])}. The model ends at "
                  f"{'full size' if amgp['final'] == 'full' else 'its pruned size'} (width {amgp['width_final']:.2f}).",
                  ""]
    elif summary.get("training"):
        lines += ["Dense training: every step at full width (1.00x of dense training FLOPs).", ""]
    plot = summary["plots"].get("training curve")
    if plot:
        lines += [f"![training curve]({plot})", "",
                  f"[{plot}]({plot}): " + ("model width and FLOPs per step (AMGP), " if amgp else "")
                  + "training loss and held-out AUC over the steps"
                  + (" (fine-tuning of the compact model after them)" if summary.get("fine_tuning") else "") + "."]
    elif summary.get("training") or summary.get("fine_tuning"):
        lines.append(f"No training curve: {summary['plots_missing']}.")
    else:
        lines.append("No training (--steps 0 --finetune-steps 0), so no training curve.")
    return lines


def _latency_headline(records: list) -> list[str]:
    """Per runtime, at the largest batch: both p50s and the compact one as a fraction."""
    from amgp_fx.latency_report import samples_per_s

    lines = []
    for runtime in dict.fromkeys(r.runtime for r in records):
        mine = [r for r in records if r.runtime == runtime]
        batch = max(r.batch_size for r in mine)
        full = next((r for r in mine if r.variant == FULL and r.batch_size == batch), None)
        compact = next((r for r in mine if r.variant == COMPACT and r.batch_size == batch), None)
        if full is None or compact is None:
            continue
        lines.append(f"- {runtime}, batch {batch}: p50 {full.p50_ms:.3f} ms full-size, {compact.p50_ms:.3f} ms "
                     f"compact (**{of_dense(compact.p50_ms / full.p50_ms)}** of full-size); "
                     f"{samples_per_s(full):,.0f} vs {samples_per_s(compact):,.0f} samples/s.")
    return lines


def _latency_section(summary: dict, records: list, table: str) -> list[str]:
    plot = summary["plots"].get("latency")
    return [*_latency_headline(records), "", table, "",
            f"![latency against batch size]({plot})" if plot else f"No latency plot: {summary['plots_missing']}.", ""]


MEANING = [
    "- **held-out AUC**: how well the model ranks the held-out rows (0.5 = chance, 1 = perfect); higher is better.",
    "- **held-out logloss**: binary cross-entropy on the held-out rows; lower is better.",
    "- **0.65x**: a fraction of the full-size (dense) model's value: below 1 is less (fewer FLOPs, lower latency).",
    "- **training FLOPs**: forward, backward and optimizer FLOPs of every training step, counted on the model "
    "at the width the step ran; dense = the same steps at full width.",
    "- **forward FLOPs**: one forward pass of the model on a batch, counted (not estimated from parameters).",
    "- **p50 / p90 / p99**: median, 90th and 99th percentile latency of one call; p50 is the headline and "
    "samples/s is batch / p50, so one slow call moves neither.",
]


def run_report(summary: dict, plan, records: list, latency_table: str, args: argparse.Namespace) -> str:
    """report.md: what was done, the numbers with what they mean, the plots, the files."""
    files = [f"- [{name}]({name}): {FILES.get(name, '')}" for name in summary["files"]]
    return "\n".join([
        f"# amgp-compress run: {summary['labels'][FULL]} -> {COMPACT}", "", "## What was done", "",
        *_what_was_done(summary, args), "", "## Models", "", _models_table(summary), "", "## Training", "",
        *_training_section(summary), "", "## Latency", "", *_latency_section(summary, records, latency_table),
        "## Pruning", "", stats_line(plan.stats), "",
        render_table(plan_rows(plan), ["group", "name", "kind", "before", "after"]), "",
        "## What the numbers mean", "", *MEANING, "", "## Files", "", *files, ""])


def _curve_records(history: list, label: str, offset: int) -> list[dict]:
    """Training records for the curve: one label per training, steps shifted to follow each other."""
    return [{**r, "label": label, "step": r.get("step", 0) + offset,
             **({"start": r["start"] + offset, "end": r["end"] + offset} if "start" in r else {})}
            for r in history if r.get("kind") in ("amgp_phase", "train", "eval")]


def _write_reports(out: OutputDir, summary: dict, plan, records: list, curve: list, args) -> str:
    """latency.json/.md, the PNGs, summary.json and report.md; returns the latency table."""
    table = save_latency(out, records, FULL)
    title = summary["labels"][FULL]
    plots = {"training curve": save_curve(out, "train_curve.png", curve, f"{summary['model']}: training"),
             "latency": save_latency_plot(out, records, title=f"{title} vs {COMPACT}: p50 latency")}
    summary["plots"] = {k: v for k, v in plots.items() if v}
    if not plotting_available():
        summary["plots_missing"] = PLOT_HINT
    staged = out.file("summary.json").parent
    names = {p.name for p in staged.iterdir() if p.is_file()} | {"summary.json", "report.md"}
    summary["files"] = [name for name in FILES if name in names]
    write_json(out.file("summary.json"), summary)
    out.file("report.md").write_text(run_report(summary, plan, records, table, args), encoding="utf-8")
    return table


def command(args: argparse.Namespace) -> int:
    from amgp_fx.groups.analyze import analyze
    from amgp_fx.model_inputs import batch_size_of
    from amgp_fx.pruning_plan import count_parameters

    request = prune_request(args)
    parse_batch_sizes(args.batch_sizes)
    if args.steps < 0 or args.finetune_steps < 0:
        raise UsageError("--steps and --finetune-steps must be >= 0", "Pass 0 to skip training")
    check_switch_flags(args)
    progress = Progress(7, args.quiet)
    started = time.perf_counter()
    summary: dict[str, Any] = {"version": 2}
    curve: list[dict] = []
    with OutputDir(args.output_dir) as out:
        progress.stage("loading the model")
        torch.manual_seed(args.seed)
        loaded = load(args, default_model="dlrm")
        module, inputs = loaded.module, loaded.example_inputs
        summary.update(model=loaded.description, parameters=count_parameters(module))
        progress.done(f"{loaded.description}, {summary['parameters']:,} parameters")
        training = bool(args.steps or args.finetune_steps)
        args.train_device = runtime_devices(args.device)[1] if training else "cpu"  # resolved once, for both trainings
        where = "" if args.train_device == "cpu" else f" on {args.train_device}"
        progress.stage(f"training {'with AMGP' if args.amgp else 'dense'} for {args.steps} steps{where}")
        summary["train_device"] = args.train_device
        static = loaded.static_batch
        bound = bind_model_inputs(loaded, args) if training else None
        shape = data_shape(positional_view(loaded, bound)) if training else None
        data = static_rows(load_data(args, shape), static) if training else None
        if data is not None:
            summary["data"] = {"source": "synthetic Criteo-like data shaped for the model" if args.data == "synthetic"
                               else str(args.data), "train_rows": data[0].num_rows, "held_out_rows": data[1].num_rows}
        if args.steps:
            module, result = train_model(module, data, args, args.steps, amgp=args.amgp, inputs=inputs, bound=bound,
                                         static_batch=static, progress=progress)
            summary["training"] = train_summary(result)
            if "amgp" in summary["training"]:
                summary["amgp"] = summary["training"]["amgp"]  # the training FLOPs AMGP saved, easy to find
            curve += _curve_records(result.history, "training", 0)
            saved = summary["training"].get("amgp", {}).get("flops_vs_full_width")
            progress.done(f"eval {metrics_text(result.metrics)}"
                          + (f", training FLOPs {of_dense(saved)} of dense" if saved is not None else ""))
        else:
            progress.done("skipped")
        summary["labels"] = {FULL: full_size_label(summary.get("training")), COMPACT: COMPACT}
        metadata = {**model_metadata(loaded, input_map=saved_map(bound) if bound else None),
                    **({"data": shape} if shape else {})}
        progress.stage(f"saving, exporting and timing the {summary['labels'][FULL]} model")
        save_model(out, "dense", module, inputs, metadata, static)
        dense_export = export_model(module, inputs, out.file("dense.onnx"), args, static, progress=progress)
        progress.part("timing")
        records = bench_variant(out.file("dense.onnx"), module, inputs, model_label(loaded), FULL, args,
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
                                          bound=bound, static_batch=static, progress=progress)
            summary["fine_tuning"] = train_summary(result)
            curve += _curve_records(result.history, "fine-tuning (compact)", args.steps)
            progress.done(f"eval {metrics_text(result.metrics)}")
        else:
            progress.done("skipped")
        progress.stage("saving, exporting and timing the compact model")
        save_model(out, "compact", compact, inputs, {**metadata, "plan": plan.to_dict()}, static)
        plan.save(out.file("plan.json"))
        compact_export = export_model(compact, inputs, out.file("compact.onnx"), args, static, progress=progress)
        progress.part("timing")
        records += bench_variant(out.file("compact.onnx"), compact, inputs, model_label(loaded), COMPACT, args,
                                 ("ort", "torch-eager"), static)
        progress.done()
        progress.stage("writing reports")
        summary.update(pruning=plan.stats, flops_batch=plan.stats.get("flops_batch") or batch_size_of(inputs),
                       plan_groups=len(plan.groups),
                       exports={FULL: {**dense_export.to_dict(), "path": "dense.onnx"},  # where it ends up
                                COMPACT: {**compact_export.to_dict(), "path": "compact.onnx"}},
                       seconds=time.perf_counter() - started)
        table = _write_reports(out, summary, plan, records, curve, args)
        progress.done()
    if not args.quiet:
        _print_summary(out, summary, table, started)
    return 0


def _print_summary(out: OutputDir, summary: dict, table: str, started: float) -> None:
    """The run's results on stdout: the latency table, the plots, the files, and where to start."""
    print(table)
    amgp = summary.get("amgp")
    if amgp and amgp.get("flops_vs_full_width") is not None:
        print(f"training FLOPs (AMGP): {of_dense(amgp['flops_vs_full_width'])} of dense")
    for name, file in summary["plots"].items():
        print(f"{name}: {out.path / file}")
    if summary.get("plots_missing"):
        print(f"plots: {summary['plots_missing']}")
    print(f"done in {time.perf_counter() - started:.0f} s; {len(out.written)} files in {out.path.resolve()}:")
    print("  " + "  ".join(p.name for p in out.written))
    print(f"  start with {out.path / 'report.md'}")

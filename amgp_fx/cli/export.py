"""``amgp-compress export``: export to ONNX, run onnx.checker and the ONNX Runtime parity check.

An export can take many seconds (tracing, translation, the checker, the parity run): each stage is
shown on stderr as it begins (``-q`` silences it).
"""
from __future__ import annotations

import argparse

from amgp_fx.cli.common import check_source, export_model, load
from amgp_fx.cli.output import OutputDir, Progress, report_written, write_json

__all__ = ["command"]


def command(args: argparse.Namespace) -> int:
    check_source(args)
    progress = Progress(2, args.quiet)
    with OutputDir(args.output_dir) as out:
        progress.stage("loading the model")
        loaded = load(args)
        progress.done(loaded.description)
        progress.stage("exporting to ONNX")
        report = export_model(loaded.module, loaded.example_inputs, out.file("model.onnx"), args, loaded.static_batch,
                              progress=progress)
        write_json(out.file("export_report.json"), report.to_dict())
        progress.done(f"{report.onnx_bytes:,} bytes")
    if not args.quiet:
        diff = "skipped" if report.max_abs_diff is None else f"max |ort - torch| {report.max_abs_diff:.2e}"
        batch = f"static batch {loaded.static_batch}" if loaded.static_batch else \
            ("static batch" if args.static_batch else "dynamic batch")
        print(f"ONNX opset {report.opset}, {batch}, {report.onnx_bytes:,} bytes, parity {diff}")
    report_written(out, args.quiet)
    return 0

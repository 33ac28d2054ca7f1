"""``amgp-compress export``: export to ONNX, run onnx.checker and the ONNX Runtime parity check."""
from __future__ import annotations

import argparse

from amgp_fx.cli.common import check_source, export_model, load
from amgp_fx.cli.output import OutputDir, report_written, write_json

__all__ = ["command"]


def command(args: argparse.Namespace) -> int:
    check_source(args)
    with OutputDir(args.output_dir) as out:
        loaded = load(args)
        report = export_model(loaded.module, loaded.example_inputs, out.file("model.onnx"), args, loaded.static_batch)
        write_json(out.file("export_report.json"), report.to_dict())
    if not args.quiet:
        diff = "skipped" if report.max_abs_diff is None else f"max |ort - torch| {report.max_abs_diff:.2e}"
        batch = f"static batch {loaded.static_batch}" if loaded.static_batch else \
            ("static batch" if args.static_batch else "dynamic batch")
        print(f"ONNX opset {report.opset}, {batch}, {report.onnx_bytes:,} bytes, parity {diff}")
    report_written(out, args.quiet)
    return 0

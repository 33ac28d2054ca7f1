"""``amgp-compress prune``: one-shot structured pruning to a ratio, a FLOPs target or a latency target (predicted
by :mod:`amgp_fx.latency_model` on --device-constants, or on constants calibrated here); saves the model and the
plan."""
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
    latency = request.get("latency_target") is not None and not args.apply_plan
    calibrating = latency and request.get("latency_constants") is None
    progress = Progress(3 + calibrating, args.quiet)
    with OutputDir(args.output_dir) as out:
        progress.stage("loading and analysing the model")
        loaded = load(args)
        graph = analyze_model(loaded.module, loaded.example_inputs)
        progress.done(f"{len(graph.prunable_groups())} prunable groups")
        if latency:
            request["latency_batch"] = _latency_batch(request.get("latency_batch"), loaded.static_batch)
            request["latency_batch_fixed"] = loaded.static_batch is not None
        if calibrating:
            device = _model_device(loaded.module)
            progress.stage(f"calibrating the time model on {device} (no --device-constants: GEMM, copy, gather "
                           "and per-node speeds measured here)")
            request["latency_constants"] = _calibrate(device)
            progress.done(_constants_text(request["latency_constants"]))
        progress.stage("pruning" + (f" to a predicted latency at batch {request['latency_batch']} (each candidate "
                                    "is exported to ONNX)" if latency else ""))
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


def _latency_batch(requested: int | None, static_batch: int | None) -> int:
    """The batch the latency is predicted at: --latency-batch, the model's static batch, or the default."""
    from amgp_fx.errors import UsageError
    from amgp_fx.pruning_plan import DEFAULT_LATENCY_BATCH

    if static_batch is not None:
        if requested is not None and requested != static_batch:
            raise UsageError(f"--latency-batch {requested} differs from the model's static batch {static_batch}",
                             "Leave --latency-batch out, or save the model with a dynamic batch")
        return static_batch
    return DEFAULT_LATENCY_BATCH if requested is None else requested


def _model_device(module) -> str:
    from amgp_fx.devices import module_device

    device = module_device(module)
    return str(device) if device.type == "cuda" else "cpu"


def _calibrate(device: str):
    """DeviceConstants measured on ``device``, with ONNX Runtime's per-node cost on the matching provider
    (a CPU gets the light settings tools/bench_onnx.py uses there: seconds, not minutes)."""
    from amgp_fx.latency_model import QUICK_CPU_CALIBRATION, calibrate

    if device.startswith("cuda"):
        from amgp_fx.bench import cuda_provider_available

        return calibrate(device, ort_provider="cuda" if cuda_provider_available() else None)
    return calibrate("cpu", ort_provider="cpu", **QUICK_CPU_CALIBRATION)


def _constants_text(constants) -> str:
    rates = ", ".join(f"{name} {rate / 1e9:.3g} GFLOP/s" for name, rate in constants.gemm_flops_per_s.items())
    return (f"GEMM {rates}, copy {constants.bandwidth_bytes_per_s / 1e9:.3g} GB/s, gather "
            f"{constants.gather_bandwidth_bytes_per_s / 1e9:.3g} GB/s, launch {constants.launch_s * 1e6:.2g} us")

"""Benchmarks on the CPU with tiny iteration counts: sane records, reports, and the GPU script's CPU path."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from amgp_fx.bench import LatencyRecord, benchmark_onnx, benchmark_torch, count_forward_flops, make_ort_session
from amgp_fx.export import export_onnx
from amgp_fx.latency_report import format_table, load_records, plot_latency, save_records, speedups

ROOT = Path(__file__).resolve().parents[1]


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 1))


def mlp_inputs(batch: int) -> tuple[torch.Tensor]:
    return (torch.randn(batch, 13),)


def check_sane(records, runtime: str, batch_sizes) -> None:
    assert [r.batch_size for r in records] == list(batch_sizes)
    for r in records:
        assert r.runtime == runtime
        assert 0 < r.p50_ms <= r.p90_ms <= r.p99_ms < 10_000
        assert r.samples_per_s > 0 and r.device and r.command


def test_count_forward_flops_matches_formula():
    model = mlp()
    assert count_forward_flops(model, mlp_inputs(8)) == 2 * 8 * (13 * 32 + 32 * 1)


@pytest.fixture(scope="module")
def mlp_onnx(tmp_path_factory):
    return export_onnx(mlp(), mlp_inputs(4), tmp_path_factory.mktemp("onnx") / "mlp.onnx").path


@pytest.mark.parametrize("io_binding", [True, False])
def test_benchmark_onnx_cpu(mlp_onnx, io_binding):
    records = benchmark_onnx(mlp_onnx, mlp_inputs, [1, 16], provider="cpu", io_binding=io_binding, warmup=1,
                             iters=5, model="mlp", variant="dense", flops={1: 100, 16: 1600})
    check_sane(records, "ort-cpu", [1, 16])
    assert [r.flops for r in records] == [100, 1600]


def test_benchmark_onnx_cuda_falls_back_to_cpu(mlp_onnx, caplog):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    records = benchmark_onnx(mlp_onnx, mlp_inputs, [8], provider="cuda", warmup=1, iters=3)
    check_sane(records, "ort-cpu", [8])
    assert "benchmarking on the CPU provider" in caplog.text
    assert benchmark_onnx(mlp_onnx, mlp_inputs, [8], provider="cuda", cuda_graph=True, iters=1) == []


def test_fixed_batch_sessions(mlp_onnx):
    # the CUDA-graph path: one session per batch size with the symbolic batch dim fixed
    records = benchmark_onnx({4: mlp_onnx, 8: mlp_onnx}, mlp_inputs, [4, 8], provider="cpu", warmup=1, iters=3)
    check_sane(records, "ort-cpu", [4, 8])
    session = make_ort_session(mlp_onnx, fixed_dims={"batch": 4})
    assert session.run(None, {"input": mlp_inputs(4)[0].numpy()})[0].shape == (4, 1)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, {"input": mlp_inputs(5)[0].numpy()})


def test_benchmark_torch_eager_cpu():
    records = benchmark_torch(mlp(), mlp_inputs, [2, 8], device="cpu", warmup=1, iters=5, model_name="mlp")
    check_sane(records, "torch-eager", [2, 8])
    assert records[1].flops == 2 * 8 * (13 * 32 + 32)
    with pytest.raises(ValueError, match="mode must be"):
        benchmark_torch(mlp(), mlp_inputs, [2], mode="jit")


def test_records_table_json_and_plot(tmp_path):
    dense = LatencyRecord("dlrm", "dense", "ort-cpu", 8, 2.0, 2.5, 3.0, 4000.0, 1000, "cpu", "cmd")
    half = LatencyRecord("dlrm", "width-scaled-0.5", "ort-cpu", 8, 1.6, 2.0, 2.1, 5000.0, 400, "cpu", "cmd")
    assert speedups([dense, half])[1] == pytest.approx((1.25, 2.5))
    table = format_table([dense, half])
    assert "0.80x" in table and "0.40x" in table and "p50 vs dense" in table  # fractions of dense
    skewed = dataclasses.replace(dense, samples_per_s=3000.0)  # e.g. a mean dragged down by one slow call
    assert "4,000" in format_table([skewed]) and "3,000" not in format_table([skewed])  # batch / p50
    path = save_records([dense, half], tmp_path / "out" / "latency.json", {"note": "test"})
    assert load_records(path) == [dense, half]
    assert json.loads(path.read_text())["version"] == 1
    png = plot_latency([dense, half], tmp_path / "latency.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="runtime must be one of"):
        LatencyRecord("m", "v", "tensorrt", 1, 1, 1, 1, 1, None, "cpu", "")


def load_tool():
    spec = importlib.util.spec_from_file_location("bench_onnx_tool", ROOT / "tools" / "bench_onnx.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_script_cpu_smoke(tmp_path, capsys):
    """The GPU script's CPU path, tiny: dense, pruned and embedding-plan variants in fp32 and fp16, the
    time model's predictions, the summary table and its splice into a docs page."""
    from amgp_fx.latency_model import DeviceConstants

    tool = load_tool()
    out = tmp_path / "latency.json"
    constants = tmp_path / "constants.json"  # fixed, so the predictions are deterministic (GEMM-bound)
    constants.write_text(json.dumps(DeviceConstants("fixed", {"float32": 1e8, "float16": 2e8}, 1e10, 1e10,
                                                    1e-9).to_dict()))
    status = tool.main(["--configs", "dlrm:small", "--batch-sizes", "4", "16", "--iters", "2", "--warmup", "1",
                        "--runtimes", "ort-cpu", "torch-eager", "--pruned-ratios", "0.5", "--no-fused-embeddings",
                        "--precisions", "fp32", "fp16", "--constants", str(constants), "--out", str(out)])
    assert status == 0
    records = load_records(out)
    variants = ("dense", "amgp-pruned-0.5", "amgp-emb-0.5")
    expected = {(f"{v}{suffix}", runtime) for v in variants for suffix in ("", "-fp16")
                for runtime in ("ort-cpu", "torch-eager")}
    assert {(r.variant, r.runtime) for r in records} == expected and len(records) == 24
    assert all(r.flops for r in records)
    pruned = {r.batch_size: r.flops for r in records if r.variant == "amgp-pruned-0.5"}
    dense = {r.batch_size: r.flops for r in records if r.variant == "dense"}
    assert all(pruned[b] < dense[b] for b in dense)
    metadata = json.loads(out.read_text())["metadata"]
    assert metadata["failures"] == [] and "TensorRT" in metadata["tensorrt"]
    assert metadata["device_constants"]["launch_s"] == 1e-9
    fp16 = [p for p in metadata["precision_reports"] if p["precision"] == "fp16"]
    assert len(fp16) == 3 and all(p["max_abs_diff"] <= p["atol"] for p in fp16)
    predicted = {(p["variant"], p["batch_size"]): p for p in metadata["predictions"]}
    assert predicted[("dense", 16)]["gemm_flops"] == dense[16]  # the time model counts the same FLOPs
    assert predicted[("dense-fp16", 16)]["bytes"] < predicted[("dense", 16)]["bytes"]
    rows = [r for r in metadata["summary"] if r["variant"] == "amgp-pruned-0.5" and r["runtime"] == "ort-cpu"]
    assert len(rows) == 4 and all(r["share_of_predicted"] == pytest.approx(r["speedup"] / r["predicted_speedup"])
                                  for r in rows)
    assert all(1.0 < r["predicted_speedup"] < r["flops_ratio"] for r in rows)
    table = out.with_suffix(".md").read_text()
    assert "share of predicted" in table and "| fp16 |" in table and "best ORT vs eager" in table
    assert out.with_suffix(".png").exists()
    assert "share of predicted" in capsys.readouterr().out
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# B\n\nbefore\n{tool.DOCS_START}\nold table\n{tool.DOCS_END}\nafter\n")
    assert tool.main(["--from-json", str(out), "--docs", str(docs)]) == 0
    spliced = docs.read_text()
    assert "old table" not in spliced and "share of predicted" in spliced
    assert spliced.startswith("# B\n\nbefore\n") and spliced.endswith(f"{tool.DOCS_END}\nafter\n")
    assert tool.width_scaled_overrides("dlrm", "default", 0.5, keep_last=True)["bottom_mlp"] == (256, 128, 32, 16)


def test_bench_script_pair_gather_variant_is_the_flat_gather_export(tmp_path):
    """--pair-gather adds an ONNX-only dense variant whose interaction is one Gather (no GatherND), with parity."""
    import onnx

    tool = load_tool()
    out = tmp_path / "latency.json"
    status = tool.main(["--configs", "dlrm:small", "--batch-sizes", "4", "--iters", "2", "--warmup", "1",
                        "--runtimes", "ort-cpu", "torch-eager", "--pruned-ratios", "--no-embedding-variants",
                        "--no-fused-embeddings", "--pair-gather", "--precisions", "fp32",
                        "--constants", _fixed_constants(tmp_path), "--workdir", str(tmp_path / "onnx"),
                        "--out", str(out)])
    assert status == 0
    assert {(r.variant, r.runtime) for r in load_records(out)} == {
        ("dense", "ort-cpu"), ("dense", "torch-eager"), ("dense-pair-gather", "ort-cpu")}
    ops = {path.stem: {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
           for path in (tmp_path / "onnx").glob("*.onnx")}
    assert "GatherND" in ops["dlrm-small-dense"] and "GatherND" not in ops["dlrm-small-dense-pair-gather"]
    parity = json.loads(out.read_text())["metadata"]["precision_reports"]
    assert any(p["variant"] == "dense-pair-gather" and p["max_abs_diff"] <= p["atol"] for p in parity)


def _fixed_constants(tmp_path) -> str:
    from amgp_fx.latency_model import DeviceConstants

    path = tmp_path / "constants.json"
    path.write_text(json.dumps(DeviceConstants("fixed", {"float32": 1e8, "float16": 2e8}, 1e10, 1e10, 1e-9).to_dict()))
    return str(path)


def test_bench_script_holds_its_time_budget(tmp_path):
    """Exports and conversions count against --time-budget-s too, and a step starts only when the time
    that work of its kind took so far still fits: the run ends near the budget with the most important
    steps timed, the rest listed as skipped for time."""
    import time

    tool = load_tool()
    out = tmp_path / "latency.json"
    budget = 8.0
    started = time.monotonic()
    status = tool.main(["--configs", "dlrm:small", "dcn_v2:small", "--batch-sizes", "4", "16", "--iters", "2",
                        "--warmup", "1", "--runtimes", "ort-cpu", "torch-eager", "--precisions", "fp32", "fp16",
                        "--constants", _fixed_constants(tmp_path), "--time-budget-s", str(budget), "--out", str(out)])
    seconds = time.monotonic() - started
    assert status == 0 and seconds < budget + 10  # one piece of work may overrun its estimate, then the writes
    payload = json.loads(out.read_text())
    assert payload["metadata"]["complete"] and payload["records"]
    assert any("skipped for time" in failure for failure in payload["metadata"]["failures"])
    timed = {(r["model"], r["variant"]) for r in payload["records"]}
    assert ("dlrm:small", "dense") in timed  # the most important step ran


def test_bench_script_killed_run_keeps_what_it_measured(tmp_path, monkeypatch):
    """A run killed from outside (here at its third export) has already written everything it finished,
    and --from-json rebuilds the table and the plot from that file."""
    tool = load_tool()
    out = tmp_path / "latency.json"
    real_export, calls, left_behind = tool.export_onnx, [], {}

    def killed_at_third_export(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            left_behind["json"] = out.read_text() if out.exists() else None  # what a SIGKILL would leave
            raise KeyboardInterrupt
        return real_export(*args, **kwargs)

    monkeypatch.setattr(tool, "export_onnx", killed_at_third_export)
    with pytest.raises(KeyboardInterrupt):
        tool.main(["--configs", "dlrm:small", "--batch-sizes", "4", "16", "--iters", "2", "--warmup", "1",
                   "--runtimes", "ort-cpu", "torch-eager", "--pruned-ratios", "0.5", "--precisions", "fp32", "fp16",
                   "--constants", _fixed_constants(tmp_path), "--out", str(out)])
    assert left_behind["json"] is not None
    partial = tmp_path / "partial.json"
    partial.write_text(left_behind["json"])
    payload = json.loads(left_behind["json"])
    assert not payload["metadata"]["complete"]
    runtimes = {(r["variant"], r["runtime"]) for r in payload["records"]}
    assert {("dense", "ort-cpu"), ("amgp-pruned-0.5", "ort-cpu"), ("amgp-pruned-0.5", "torch-eager")} <= runtimes
    assert {p["variant"] for p in payload["metadata"]["precision_reports"]} >= {"dense", "amgp-pruned-0.5"}
    table, plot = tmp_path / "partial.md", tmp_path / "partial.png"
    assert tool.main(["--from-json", str(partial), "--table", str(table), "--plot", str(plot)]) == 0
    assert "| amgp-pruned-0.5 |" in table.read_text() and plot.stat().st_size > 0


def test_budget_estimates_from_work_done():
    """Unseen work starts; seen work of a kind is estimated by its longest run, scaled across configs."""
    tool = load_tool()
    now = [0.0]
    budget = tool.Budget(10.0, clock=lambda: now[0])
    budget.sizes.update({"small:a": 1.0, "big:b": 4.0})
    assert budget.fits([("export", "small:a")])  # nothing seen yet
    with budget.timed("export", "small:a"):
        now[0] += 2.5
    assert budget.estimate("export", "small:a") == 2.5 and budget.estimate("export", "big:b") == 4 * 2.5
    assert budget.estimate("time-ort-cpu", "small:a") == 2.5  # an unseen kind: the longest work seen
    assert budget.fits([("export", "small:a")]) and not budget.fits([("export", "big:b")])


def test_bench_script_step_order():
    """Most important steps first: fp32 dense/pruned on every runtime, then other precisions, extras last."""
    tool = load_tool()
    make = lambda label, core, onnx_only=False: tool.Variant("m:p", label, None, None, {}, core=core,  # noqa: E731
                                                             onnx_only=onnx_only, onnx={"fp32": 1, "fp16": 1})
    variants = [make("dense", True), make("amgp-pruned-0.5", True), make("dense-fused-emb", False, True)]
    steps = [(v.label, p, r) for v, p, r in tool.step_order(variants, ["fp32", "fp16"],
                                                            ["ort-cuda", "torch-eager", "torch-compile"])]
    assert steps[:6] == [("dense", "fp32", "ort-cuda"), ("amgp-pruned-0.5", "fp32", "ort-cuda"),
                         ("dense", "fp32", "torch-eager"), ("amgp-pruned-0.5", "fp32", "torch-eager"),
                         ("dense", "fp32", "torch-compile"), ("amgp-pruned-0.5", "fp32", "torch-compile")]
    assert steps[6] == ("dense", "fp16", "ort-cuda")
    assert ("dense-fused-emb", "fp32", "torch-eager") not in steps  # ONNX only
    assert steps.index(("dense-fused-emb", "fp32", "ort-cuda")) > steps.index(("amgp-pruned-0.5", "fp16",
                                                                               "torch-eager"))
    assert steps[-1][2] == "ort-cuda" and steps[-1][1] == "fp16"


def test_cuda_session_options(monkeypatch, mlp_onnx):
    """The CUDA branch of make_ort_session, checked without a GPU: provider options and overrides."""
    import onnxruntime

    created = {}

    class FakeSession:
        def __init__(self, path, options, providers):
            created.update(path=path, options=options, providers=providers)

        def get_providers(self):
            return [created["providers"][0][0], "CPUExecutionProvider"]

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: providers)
    monkeypatch.setattr(onnxruntime, "InferenceSession", FakeSession)
    make_ort_session(mlp_onnx, "cuda", cuda_graph=True, fixed_dims={"batch": 256})
    assert created["providers"][0] == ("CUDAExecutionProvider",
                                       {"device_id": "0", "use_tf32": "0", "enable_cuda_graph": "1"})
    make_ort_session(mlp_onnx, "cuda", use_tf32=True)
    assert created["providers"][0][1] == {"device_id": "0", "use_tf32": "1"}
    make_ort_session(mlp_onnx, "cuda", tunable_ops=True)
    assert created["providers"][0][1] == {"device_id": "0", "use_tf32": "0", "tunable_op_enable": "1",
                                          "tunable_op_tuning_enable": "1"}
    make_ort_session(mlp_onnx, "cuda", profile_prefix="/tmp/x/ort")
    assert created["options"].enable_profiling and created["options"].profile_file_prefix == "/tmp/x/ort"


def test_ort_optimisation_level_and_tf32_switch(mlp_onnx):
    import onnxruntime

    from amgp_fx.bench import OPT_LEVELS, tf32_matmuls

    assert set(OPT_LEVELS) == {"disable", "basic", "extended", "all"}
    session = make_ort_session(mlp_onnx, "cpu", opt_level="disable")
    assert session.get_session_options().graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert make_ort_session(mlp_onnx, "cpu").get_session_options().graph_optimization_level == \
        onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    with pytest.raises(ValueError, match="opt_level must be one of"):
        make_ort_session(mlp_onnx, "cpu", opt_level="max")
    records = benchmark_onnx(mlp_onnx, mlp_inputs, [4], provider="cpu", opt_level="basic", warmup=1, iters=2)
    check_sane(records, "ort-cpu", [4])
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with tf32_matmuls(not before[0]):
        assert torch.backends.cuda.matmul.allow_tf32 is (not before[0])
        assert torch.backends.cudnn.allow_tf32 is (not before[0])
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def export_mlp(path: Path, width: int) -> str:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(13, width), nn.ReLU(), nn.Linear(width, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    return export_onnx(model, mlp_inputs(4), path).path


def test_cli_bench_labels_each_onnx_file_and_compares_with_the_first(tmp_path, capsys):
    """Issue 14 item 8: two files of one stem were both labelled 'model' and the dense file showed as
    a fraction of itself; each row is now labelled by its own file, speedups are against the first."""
    from amgp_fx.cli import main

    dense = export_mlp(tmp_path / "dense" / "model.onnx", 256)
    compact = export_mlp(tmp_path / "compact" / "model.onnx", 8)
    out = tmp_path / "out"
    assert main(["bench", "--onnx", dense, "--onnx", compact, "--batch-sizes", "16", "--iters", "3",
                 "--device", "cpu", "-o", str(out)]) == 0
    records = load_records(out / "latency.json")
    assert [r.variant for r in records] == ["dense/model", "compact/model"]
    assert len({r.model for r in records}) == 1  # one model column: rows compare with each other
    table = (out / "latency.md").read_text()
    dense_row = next(line for line in table.splitlines() if "| dense/model" in line)
    assert "1.00x" in dense_row  # the baseline is itself, once
    assert speedups(records, "dense/model")[0][0] == 1.0 and 1 in speedups(records, "dense/model")
    from amgp_fx.cli.bench import _labels

    assert _labels(["x/a.onnx", "y/b.onnx"]) == ["a", "b"]


def test_cli_bench_serving_flags(tmp_path, capsys):
    from amgp_fx.cli import main

    model = export_mlp(tmp_path / "m.onnx", 32)
    out = tmp_path / "fp16"
    assert main(["bench", "--onnx", model, "--precision", "fp16", "--ort-opt-level", "extended", "--batch-sizes",
                 "8", "--iters", "2", "--device", "cpu", "-o", str(out)]) == 0
    (record,) = load_records(out / "latency.json")
    assert record.variant == "model-fp16" and record.runtime == "ort-cpu"
    (report,) = json.loads((out / "precision.json").read_text())
    assert report["precision"] == "fp16" and report["max_abs_diff"] <= report["atol"]
    assert report["reference"].startswith("fp32 ONNX Runtime")  # no torch model was given
    capsys.readouterr()
    if not torch.cuda.is_available():  # CUDA graphs on the CPU provider: refused, exit 2, one line
        assert main(["bench", "--onnx", model, "--cuda-graphs", "--device", "cpu", "-o", str(tmp_path / "g")]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("amgp-compress: error: --cuda-graphs needs ONNX Runtime's CUDA provider")
        assert "Drop --cuda-graphs" in error and len(error.splitlines()) == 1
    assert main(["bench", "--onnx", model, "--precision", "bf16", "--device", "cpu", "-o", str(tmp_path / "b")]) == 10
    assert "bf16 is exported from the PyTorch model" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run tools/gpu_check.sh)")
def test_cli_bench_cuda_graphs_and_fp16_on_the_gpu(tmp_path):
    """--cuda-graphs with --precision fp16 on ORT's CUDA provider: ort-cuda-graph rows labelled -fp16."""
    from amgp_fx.bench import cuda_provider_available
    from amgp_fx.cli import main

    if not cuda_provider_available():
        pytest.skip("onnxruntime-gpu (CUDA provider) not installed")
    model = export_mlp(tmp_path / "m.onnx", 64)
    out = tmp_path / "out"
    assert main(["bench", "--onnx", model, "--device", "cuda", "--cuda-graphs", "--precision", "fp16",
                 "--batch-sizes", "64,256", "--iters", "3", "-o", str(out)]) == 0
    records = load_records(out / "latency.json")
    assert {(r.runtime, r.variant) for r in records} == {("ort-cuda-graph", "model-fp16")}
    assert json.loads((out / "precision.json").read_text())[0]["provider"] == "cuda"

"""tools/profile_onnx.py: ORT's per-node time by op type and torch's per-op time, for one model and batch."""
import json

import pytest
from tool_loader import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("profile_onnx")


def test_node_times_leave_out_the_warm_up_runs_and_sum_by_op_type(tool):
    def run(ts):
        return {"name": "model_run", "cat": "Session", "ts": ts, "dur": 100}

    def node(name, op, ts, dur):
        return {"name": f"{name}_kernel_time", "cat": "Node", "ts": ts, "dur": dur, "args": {"op_name": op}}

    trace = [run(0), node("mm", "MatMul", 10, 50), node("g", "Gather", 70, 5),  # warm-up run
             run(200), node("mm", "MatMul", 210, 30), node("g", "Gather", 250, 4),
             {"name": "mm_fence_before", "cat": "Node", "ts": 209, "dur": 1, "args": {"op_name": "MatMul"}},
             run(400), node("mm", "MatMul", 410, 20), node("g2", "Gather", 450, 6)]
    by_op, nodes, runs = tool.node_times_by_op(trace, skip_runs=1)
    assert runs == 2
    assert by_op == {"MatMul": 50, "Gather": 10}
    assert nodes[0] == ("mm", "MatMul", 50) and {n[0] for n in nodes} == {"mm", "g", "g2"}


def test_profiles_a_small_dlrm_on_the_cpu(tool, tmp_path):
    out = tmp_path / "profile.json"
    result = tool.main(["--config", "dlrm:small", "--batch-size", "64", "--device", "cpu", "--iters", "3",
                        "--warmup", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["ort"]["ms_by_op_type"] == pytest.approx(result["ort"]["ms_by_op_type"])
    ops = saved["ort"]["ms_by_op_type"]
    assert any(op in ops for op in ("MatMul", "Gemm", "FusedMatMul", "FusedGemm"))  # the MLPs ran
    assert all(ms > 0 for ms in ops.values())
    assert saved["ort"]["node_ms"] == pytest.approx(sum(ops.values()))
    assert sum(n["ms"] for n in saved["ort"]["top_nodes"]) <= saved["ort"]["node_ms"] * (1 + 1e-9)
    names = [k["name"] for k in saved["torch"]["top"]]
    assert any("addmm" in n or "linear" in n or "mm" in n for n in names)
    assert "| op type | ms per run |" in out.with_suffix(".md").read_text()


def test_unknown_variant_is_refused(tool, tmp_path):
    with pytest.raises(SystemExit, match="unknown variant"):
        tool.main(["--config", "dlrm:small", "--variant", "sparse", "--out", str(tmp_path / "p.json")])


def test_pair_gather_profile_has_no_gather_nd(tool, tmp_path):
    plain = tool.main(["--config", "dlrm:small", "--batch-size", "32", "--device", "cpu", "--iters", "2",
                       "--warmup", "1", "--out", str(tmp_path / "plain.json")])
    pairs = tool.main(["--config", "dlrm:small", "--batch-size", "32", "--device", "cpu", "--iters", "2",
                       "--warmup", "1", "--pair-gather", "--out", str(tmp_path / "pairs.json")])
    assert "GatherND" in plain["ort"]["ms_by_op_type"] and "GatherND" not in pairs["ort"]["ms_by_op_type"]
    assert pairs["pair_gather"] and not plain["pair_gather"]

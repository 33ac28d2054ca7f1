"""Every GPU path on a real GPU: the CLI's subcommands on ``cuda`` (and ``auto``, the default) and the
Python API with the model and its optimizer state on the GPU.

Marked ``gpu``: skipped where torch sees no CUDA device (CI), run by ``tools/gpu_check.sh`` on the
GPU machine. CPU-side example inputs meeting a GPU model is the bug class these tests exist for, so
the API tests feed CPU inputs wherever the public functions accept them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import amgp_fx
from amgp_fx import models
from amgp_fx.amgp import AmgpHook
from amgp_fx.bench import benchmark_torch, count_forward_flops
from amgp_fx.config import SyntheticConfig, TrainConfig
from amgp_fx.data import SyntheticCriteo
from amgp_fx.model_io import load_model, save_pt2, save_state_dict
from amgp_fx.schedule import AmgpConfig, AmgpSchedule
from amgp_fx.testing import masked_copy, random_keep
from amgp_fx.train import train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run tools/gpu_check.sh)")]

REPO = Path(__file__).resolve().parents[1]
FAST_TRAIN = ["--steps", "20", "--rows", "4000", "--train-batch", "128"]
FAST_BENCH = ["--batch-sizes", "1,64", "--iters", "3", "--warmup", "1"]
SD_FACTORY = ["--factory", "amgp_fx.models.dlrm:build", "--factory-kwargs", '{"preset": "small"}']


def ort_cuda_available() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "amgp_fx.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gpu-cli")
    torch.manual_seed(0)
    model = models.build_model("dlrm")
    save_pt2(model, model.example_inputs(8), folder / "dense.pt2")
    save_state_dict(model, folder / "dense.safetensors")
    return folder


COMMANDS = {
    "run-default": ["run", "--amgp", "-o", "run-default"],  # the README's first command, unchanged
    "run-cuda": ["run", "dense.pt2", *FAST_TRAIN, "--amgp", "--finetune-steps", "5", "--device", "cuda", *FAST_BENCH,
                 "-o", "run-cuda"],
    "train-dense": ["train", "dense.pt2", *FAST_TRAIN, "--device", "cuda", "-o", "train-dense"],
    "train-amgp": ["train", "dense.safetensors", *SD_FACTORY, *FAST_TRAIN, "--amgp", "--device", "auto",
                   "-o", "train-amgp"],
    "prune": ["prune", "dense.pt2", "--flops-target", "0.5", "-o", "prune"],
    "export": ["export", "dense.pt2", "-o", "export"],
    "bench": ["bench", "dense.pt2", "--device", "cuda", "--runtimes", "ort,torch-eager", *FAST_BENCH, "-o", "bench"],
    "bench-sd": ["bench", "dense.safetensors", *SD_FACTORY, "--runtimes", "torch-eager,torch-compile", *FAST_BENCH,
                 "-o", "bench-sd"],
}


@pytest.fixture(scope="module")
def results(workspace):
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run_cli, args, workspace) for name, args in COMMANDS.items()}
        yield {name: future.result() for name, future in futures.items()}


def succeeded(results, name: str) -> subprocess.CompletedProcess:
    result = results[name]
    assert result.returncode == 0, f"{name} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


@pytest.mark.parametrize("name", ["run-default", "run-cuda"])
def test_run_trains_on_the_gpu_and_times_both_models(results, workspace, name):
    result = succeeded(results, name)
    out = workspace / name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_device"].startswith("cuda")
    assert " on cuda" in result.stderr  # the training stage's progress line
    assert 0.5 < summary["training"]["eval"]["auc"] <= 1.0
    records = json.loads((out / "latency.json").read_text())["records"]
    eager = [r for r in records if r["runtime"] == "torch-eager"]
    assert eager and all(torch.cuda.get_device_name() in r["device"] for r in eager)
    assert all(r["flops"] and r["flops"] > 0 for r in eager)
    assert {r["variant"] for r in records} == {"full-size", "compact"}
    # the saved models are CPU models: they load anywhere
    state = load_model(out / "compact.pt2")
    assert all(p.device.type == "cpu" for p in state.module.parameters())


@pytest.mark.parametrize("name", ["train-dense", "train-amgp"])
def test_train_on_cuda_saves_a_cpu_model(results, workspace, name):
    succeeded(results, name)
    summary = json.loads((workspace / name / "train_summary.json").read_text())
    assert summary["device"].startswith("cuda")
    assert summary["steps"] == 20 and 0.5 < summary["eval"]["auc"] <= 1.0
    loaded = load_model(workspace / name / "trained.pt2")
    assert all(p.device.type == "cpu" for p in loaded.module.parameters())


@pytest.mark.parametrize("name", ["prune", "export"])
def test_cpu_subcommands_work_with_a_gpu_present(results, name):
    succeeded(results, name)


def test_bench_times_torch_on_the_gpu_and_ort_on_its_cuda_provider_when_installed(results, workspace):
    succeeded(results, "bench")
    records = json.loads((workspace / "bench" / "latency.json").read_text())["records"]
    by_runtime = {r["runtime"]: r for r in records}
    assert torch.cuda.get_device_name() in by_runtime["torch-eager"]["device"]
    if ort_cuda_available():  # --device cuda: ONNX Runtime's CUDA execution provider
        assert torch.cuda.get_device_name() in by_runtime["ort-cuda"]["device"]
    else:
        assert "ort-cpu" in by_runtime
    succeeded(results, "bench-sd")
    records = json.loads((workspace / "bench-sd" / "latency.json").read_text())["records"]
    assert {r["runtime"] for r in records} == {"torch-eager", "torch-compile"}


# -- the Python API on the GPU ------------------------------------------------------------------------------
def _dlrm_on_gpu(seed: int = 0):
    """The small DLRM on the GPU, with dense embedding gradients (plain Adam takes no sparse ones)."""
    torch.manual_seed(seed)
    model = models.build_model("dlrm")
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            module.sparse = False
    model.cuda()
    return model, tuple(x.cuda() for x in model.example_inputs(16))


def test_shrink_on_the_gpu_equals_the_masked_model_and_grow_restores_adam_state():
    model, inputs = _dlrm_on_gpu()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(*inputs).sum().backward()
    optimizer.step()
    graph = amgp_fx.analyze(model, inputs)
    before = graph.module(*inputs).detach().clone()
    state_before = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    keep = {g.id: random_keep(g, 0.5, torch.Generator().manual_seed(1)) for g in graph.prunable_groups()}
    group = graph.prunable_groups()[0]
    expected = masked_copy(model, group, np.setdiff1d(np.arange(group.full_size), keep[group.id]))(*inputs)
    record = amgp_fx.shrink_(graph, {group.id: keep[group.id]}, optimizer)
    assert all(p.device.type == "cuda" for p in model.parameters())
    torch.testing.assert_close(graph.module(*inputs), expected, atol=1e-5, rtol=1e-4)
    amgp_fx.grow_(graph, record, optimizer, init="restore")
    torch.testing.assert_close(graph.module(*inputs), before, atol=0, rtol=0)
    for parameter, state in optimizer.state.items():
        for key, value in state.items():
            torch.testing.assert_close(value, state_before[id(parameter)][key], atol=0, rtol=0)


def test_amgp_training_on_the_gpu_follows_its_schedule_and_ends_full_size():
    model, inputs = _dlrm_on_gpu()
    shapes = {name: p.shape for name, p in model.named_parameters()}
    graph = amgp_fx.analyze(model, inputs)
    config = AmgpConfig(AmgpSchedule(total_steps=30, warmup_steps=5, cycles=2, pruned_steps=8, dense_steps=4),
                        ratio=0.5)
    hook = AmgpHook(graph, config)
    data = SyntheticCriteo(SyntheticConfig.from_preset("small"))
    result = train(model, data.rows(0, 4096), data.rows(100_000, 101_024),
                   TrainConfig(batch_size=128, steps=30, lr=1e-2, log_every=10, device="cuda"),
                   hooks=[hook], forward=hook.forward, progress=False)
    assert result.step == 30 and 0.5 < result.metrics["auc"] <= 1.0
    assert {name: p.shape for name, p in model.named_parameters()} == shapes
    assert all(p.device.type == "cuda" for p in model.parameters())


def test_flops_and_torch_latency_of_a_gpu_model_from_cpu_inputs():
    model, gpu_inputs = _dlrm_on_gpu()
    cpu_inputs = model.example_inputs(64)
    flops = count_forward_flops(model, cpu_inputs)
    assert flops == count_forward_flops(model.cpu(), cpu_inputs) > 0
    model.cuda()
    records = benchmark_torch(model, model.example_inputs, [1, 64], device="cuda", warmup=1, iters=3)
    assert [r.batch_size for r in records] == [1, 64]
    assert records[1].flops == flops and all(r.p50_ms > 0 for r in records)


@pytest.mark.parametrize("grow_init", ["gradmax", "split"])
def test_gradmax_and_split_growth_on_the_gpu_leave_the_loss_as_it_was(grow_init):
    """GradMax (gradient probe, eigenvectors) and Net2WiderNet (copies with their sources' Adam state) build new
    tensors at the growth: on a GPU model they must land on its device, and the growth must stay
    function-preserving there (the CPU oracles of tests/test_gradmax.py and tests/test_net2wider.py)."""
    data = SyntheticCriteo(SyntheticConfig.from_preset("small"))
    rows, probe = data.rows(0, 2048), data.rows(50_000, 50_512)
    torch.manual_seed(0)
    model = models.build_model("dcn_v2", "small", deep_mlp=(64, 40), dropout=0.0).cuda()
    graph = amgp_fx.analyze(model, tuple(x.cuda() for x in model.example_inputs(4)))
    config = AmgpConfig.from_recipe_name("amgp-grow-late-rewarm", total_steps=30, grow_init=grow_init)
    hook = AmgpHook(graph, config, probe=probe)
    train(model, rows, None, TrainConfig(optimizer="adam", lr=1e-2, batch_size=64, steps=30, device="cuda"),
          hooks=[hook], forward=hook.forward, progress=False)
    (grow,) = [s for s in hook.surgeries if s["action"] == "grow"]
    assert grow["loss_after"] == pytest.approx(grow["loss_before"], abs=1e-4)
    assert all(g.size == g.full_size for g in hook.groups)
    assert all(p.device.type == "cuda" for p in model.parameters())

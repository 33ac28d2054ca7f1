"""Data-parallel (DDP) training throughput, dense and AMGP, on 1 vs N GPUs (issue 7).

The script launches torchrun itself, once per world size in --nprocs, and merges the results:

    python tools/bench_ddp.py --nprocs 1,2 --out docs/results/ddp_throughput.json
    python tools/bench_ddp.py --nprocs 1,2 --model dlrm --preset mlperf --batch 65536

or runs inside a torchrun you start (one world size, rank 0 writes --out):

    python -m torch.distributed.run --standalone --nproc_per_node 2 tools/bench_ddp.py --out ddp2.json

CPU smoke check (gloo, the small DLRM, well under a minute):

    python tools/bench_ddp.py --device cpu --tiny --nprocs 1,2 --out /tmp/ddp_tiny.json

What is measured, per (world size, mode), with `amgp_fx.train.train` as the CLI runs it:
- samples_per_s: global rows per second over the steps after --warmup-steps (every step is
  CUDA-synchronised at its start and end, so its time is the GPU's; this costs a few microseconds);
- step_s_median and, for AMGP, samples/s of the full-width and of the pruned steps (switch
  steps left out);
- phase-switch overhead, per shrink/grow: surgery seconds (``AmgpHook``'s ``amgp_surgery``
  records, CUDA-synchronised) plus the DDP wrapper rebuild (``ddp_build`` records; none on one
  process, which trains without DDP), and the excess of the switch step over the median step of
  the width it switches to (surgery, rebuild, and DDP's bucket re-assignment on the next steps'
  first backward all land there).

``speedup`` is samples/s on N processes over samples/s on 1, per mode (ideal: N). The global
batch (--batch) is the same for every world size, so each GPU gets --batch / N rows.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import amgp_fx  # noqa: E402
from amgp_fx import models  # noqa: E402
from amgp_fx import distributed  # noqa: E402
from amgp_fx.amgp import AmgpHook  # noqa: E402
from amgp_fx.config import SyntheticConfig, TrainConfig  # noqa: E402
from amgp_fx.data import SyntheticCriteo  # noqa: E402
from amgp_fx.schedule import AmgpConfig  # noqa: E402
from amgp_fx.train import train  # noqa: E402

MODES = ("dense", "amgp")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nprocs", default=None,
                        help="comma-separated world sizes to launch with torchrun, e.g. 1,2 (default: this "
                             "process's world size, 1 outside torchrun)")
    parser.add_argument("--model", default="dlrm", choices=sorted(models.MODEL_NAMES))
    parser.add_argument("--preset", default=None, help="model preset (default: default; tiny: small)")
    parser.add_argument("--data-preset", default=None, help="SyntheticConfig preset (default: default; tiny: small)")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default 16384; tiny 256)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 200; tiny 30)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="untimed first steps (default 10; tiny 3)")
    parser.add_argument("--rows", type=int, default=None, help="synthetic rows, reused by epoch (default 1M; tiny 8k)")
    parser.add_argument("--modes", default="dense,amgp", help="comma-separated: dense, amgp")
    parser.add_argument("--recipe", default="amgp-half", help="AMGP recipe (amgp_fx.schedule.RECIPES)")
    parser.add_argument("--ratio", type=float, default=0.5, help="share of hidden units removed when pruned")
    parser.add_argument("--optimizer", default="adam", choices=["sgd", "adam", "adamw", "adagrad"])
    parser.add_argument("--sparse-optimizer", default="rowwise_adagrad",
                        choices=["sgd", "adagrad", "sparse_adam", "rowwise_adagrad"])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available; tiny: cpu)")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke sizes: small DLRM, batch 256, 30 steps")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per process (default on the CPU: 1, so that 1 and N processes use "
                             "one core each)")
    parser.add_argument("--no-tf32", dest="tf32", action="store_false", help="disable TF32 matmuls on the GPU")
    parser.add_argument("--out", default="docs/results/ddp_throughput.json")
    args = parser.parse_args(argv)
    tiny = args.tiny
    defaults = dict(preset="small" if tiny else "default", data_preset="small" if tiny else "default",
                    batch=256 if tiny else 16384, steps=30 if tiny else 200, warmup_steps=3 if tiny else 10,
                    rows=8192 if tiny else 1_000_000,
                    device="cpu" if tiny else ("cuda" if torch.cuda.is_available() else "cpu"))
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.mode_list if m not in MODES]
    if unknown or not args.mode_list:
        parser.error(f"unknown mode {unknown}; choose from {MODES}")
    if args.warmup_steps >= args.steps:
        parser.error(f"--warmup-steps {args.warmup_steps} leaves no timed step of --steps {args.steps}")
    return args


# -- one measurement ----------------------------------------------------------------------------------------
class StepTimer:
    """Per-step wall-clock (synchronised) and the width the step ran at."""

    def __init__(self, device: torch.device, hook: AmgpHook | None) -> None:
        self.device, self.hook = device, hook
        self.seconds: list[float] = []
        self.widths: list[float] = []
        self._began = 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def on_step_start(self, ctx) -> None:
        self._began = self._now()

    def on_step_end(self, ctx) -> None:
        self.seconds.append(self._now() - self._began)
        self.widths.append(self.hook.width() if self.hook is not None else 1.0)


def measure(mode: str, args: argparse.Namespace, rows, env: distributed.DistEnv) -> dict:
    """Train ``args.steps`` steps of ``mode`` and summarise the timings (on rank 0)."""
    torch.manual_seed(0)
    spec = SyntheticCriteo(SyntheticConfig.from_preset(args.data_preset)).spec
    model = models.build_model(args.model, args.preset, **spec.model_kwargs()).to(env.device)
    hook, forward = None, None
    if mode == "amgp":
        inputs = tuple(t.to(env.device) for t in model.example_inputs(8))
        graph = amgp_fx.analyze(model, inputs)
        hook = AmgpHook(graph, AmgpConfig.from_recipe_name(args.recipe, total_steps=args.steps, ratio=args.ratio))
        forward = hook.forward
    timer = StepTimer(env.device, hook)
    hooks = [timer] + ([hook] if hook is not None else [])
    config = TrainConfig(optimizer=args.optimizer, lr=args.lr, sparse_optimizer=args.sparse_optimizer,
                         batch_size=args.batch, steps=args.steps, log_every=0, device=str(env.device),
                         data_on_device=env.device.type == "cuda", seed=0)
    result = train(model, rows, None, config, hooks=hooks, forward=forward, progress=False)
    return summarise(mode, args, env, timer, hook, result.history)


def _rate(batch: int, seconds: list[float]) -> float | None:
    return batch * len(seconds) / sum(seconds) if seconds else None


def summarise(mode, args, env, timer: StepTimer, hook, history) -> dict:
    warm = args.warmup_steps
    timed = timer.seconds[warm:]
    record = {"world_size": env.world_size, "mode": mode, "global_batch": args.batch,
              "rows_per_rank": args.batch // env.world_size, "steps": args.steps, "timed_steps": len(timed),
              "samples_per_s": _rate(args.batch, timed), "step_s_median": statistics.median(timed)}
    if hook is None:
        return record
    surgeries = {s["step"]: s for s in hook.surgeries}
    switch_steps = sorted(surgeries)
    builds = {r["step"]: r["seconds"] for r in history if r.get("kind") == "ddp_build"}
    steady = [i for i in range(warm, args.steps) if i not in surgeries]
    full = [timer.seconds[i] for i in steady if timer.widths[i] >= 1.0]
    pruned = [timer.seconds[i] for i in steady if timer.widths[i] < 1.0]
    median_at = {True: statistics.median(full) if full else None, False: statistics.median(pruned) if pruned else None}
    switches = []
    for step in switch_steps:
        if step >= args.steps:  # the final grow after the last step has no step of its own
            continue
        surgery = sum(s["seconds"] for s in hook.surgeries if s["step"] == step)
        build = builds.get(step, 0.0)
        reference = median_at[timer.widths[step] >= 1.0]
        switches.append({"step": step, "actions": [s["action"] for s in hook.surgeries if s["step"] == step],
                         "surgery_s": surgery, "ddp_build_s": build, "overhead_s": surgery + build,
                         "step_s": timer.seconds[step],
                         "step_excess_s": timer.seconds[step] - reference if reference is not None else None})
    record.update(
        full_samples_per_s=_rate(args.batch, full), pruned_samples_per_s=_rate(args.batch, pruned),
        initial_ddp_build_s=builds.get(0), switches=switches,
        switch_overhead_s_mean=statistics.mean(s["overhead_s"] for s in switches) if switches else None,
        switch_step_excess_s_mean=statistics.mean(s["step_excess_s"] for s in switches
                                                  if s["step_excess_s"] is not None) if switches else None,
        widths=sorted(set(timer.widths)))
    return record


def run_worker(args: argparse.Namespace) -> int:
    """One world size: every rank trains, rank 0 writes the records."""
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    env = distributed.init_from_env(args.device)
    try:
        if args.batch % env.world_size:
            raise SystemExit(f"--batch {args.batch} does not split over {env.world_size} processes; "
                             f"pass a batch divisible by {env.world_size}")
        began = time.perf_counter()
        rows = SyntheticCriteo(SyntheticConfig.from_preset(args.data_preset)).rows(0, args.rows)
        data_s = time.perf_counter() - began
        records = []
        for mode in args.mode_list:
            record = measure(mode, args, rows, env)
            record["data_s"] = data_s
            records.append(record)
            if env.is_main:
                print(json.dumps({k: v for k, v in record.items() if k != "switches"}), flush=True)
        if env.is_main:
            write(args.out, {"records": records, **environment(args, env)})
    finally:
        distributed.shutdown()
    return 0


# -- launching and merging ----------------------------------------------------------------------------------
def environment(args, env) -> dict:
    cuda = args.device.startswith("cuda") and torch.cuda.is_available()
    device = torch.cuda.get_device_name(env.device) if cuda else (platform.processor() or "cpu")
    return {"torch": torch.__version__, "device": device, "backend": env.backend, "model": args.model,
            "preset": args.preset,
            "data_preset": args.data_preset, "recipe": args.recipe, "optimizer": args.optimizer,
            "sparse_optimizer": args.sparse_optimizer, "command": "python " + shlex.join(sys.argv)}


def write(path: str, value) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")


def _without(argv: list[str], option: str) -> list[str]:
    """``argv`` less ``option VALUE`` and ``option=VALUE``."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == option:
            skip = True
        elif not token.startswith(option + "="):
            kept.append(token)
    return kept


def launch(args: argparse.Namespace, argv: list[str]) -> int:
    """Run this script under torchrun for each world size of --nprocs; merge into --out."""
    sizes = [int(n) for n in args.nprocs.split(",") if n.strip()]
    records, meta = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for size in sizes:
            out = Path(scratch) / f"world{size}.json"
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(size),
                       str(Path(__file__).resolve()), *_without(_without(argv, "--nprocs"), "--out"), "--out", str(out)]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                                               if p)}
            if args.device == "cpu":
                env.setdefault("OMP_NUM_THREADS", str(args.threads or 1))
            print(f"world size {size}: {shlex.join(command)}", flush=True)
            if subprocess.run(command, env=env).returncode != 0:
                print(f"world size {size} failed; results so far are in {args.out}", file=sys.stderr)
                break
            result = json.loads(out.read_text())
            records += result.pop("records")
            meta = result
            write(args.out, merge(records, meta, argv))
    write(args.out, merge(records, meta, argv))
    print(json.dumps(merge(records, meta, argv)["speedup"], indent=1))
    return 0 if {r["world_size"] for r in records} == set(sizes) else 1


def merge(records: list[dict], meta: dict, argv: list[str]) -> dict:
    base = {r["mode"]: r["samples_per_s"] for r in records if r["world_size"] == 1}
    speedup = {mode: {str(r["world_size"]): r["samples_per_s"] / base[mode] for r in records
                      if r["mode"] == mode and base.get(mode)} for mode in base}
    return {**meta, "command": "python " + shlex.join([sys.argv[0], *argv]), "speedup": speedup, "records": records}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.nprocs and not distributed.launched_by_torchrun():
        return launch(args, argv)
    return run_worker(args)


if __name__ == "__main__":
    sys.exit(main())

"""The argument parser of ``amgp-compress`` (no torch: bad arguments fail in a fraction of a second)."""
from __future__ import annotations

import argparse

from amgp_fx.cli.values import (DEFAULT_OUTPUT, MODEL_NAMES, PROG, _non_negative_float, _positive_float,
                                _positive_int, _seed)
from amgp_fx.errors import UsageError
from amgp_fx.schedule import DEFAULT_RECIPE, RECIPES, SELECTIONS  # no torch: the parser stays light

__all__ = ["EPILOGS", "HELP", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line, exit code 2) instead of printing usage and exiting."""

    def error(self, message: str):  # noqa: D401 - argparse hook
        raise UsageError(message, f"Run '{self.prog} --help' for usage")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="show info logs and tracebacks of errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only results and errors, no progress")


def _model_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_argument_group("model (a .pt2 file, a state dict plus --factory/--model, or --model alone)")
    group.add_argument("model_file", nargs="?", metavar="MODEL",
                       help=".pt2 (torch.export program, recommended), .safetensors or .pt state dict (needs "
                            "--factory or --model), or a pickled .pt module (needs --trust-pickle)")
    group.add_argument("--model", dest="model_name", choices=MODEL_NAMES,
                       help="a built-in reference model (fresh weights, or the state dict's)")
    group.add_argument("--preset", default="small", help="preset of --model (default: %(default)s)")
    group.add_argument("--factory", metavar="MODULE:FN",
                       help="callable that builds the model: package.module:function or path/to/file.py:function")
    group.add_argument("--factory-kwargs", metavar="JSON", help="keyword arguments of --factory as a JSON object")
    group.add_argument("--plan", metavar="PLAN.json", help="pruning plan of a pruned state dict (default: the "
                       "plan stored in a .safetensors file written by amgp-compress)")
    group.add_argument("--trust-pickle", action="store_true",
                       help="allow pickled files; DANGER: loading a pickle can execute arbitrary code")
    inputs = parser.add_argument_group("example inputs (default: the model's example_inputs(B), or the batch "
                                       "saved in the .pt2)")
    inputs.add_argument("--input-shape", metavar="SPEC",
                        help="e.g. 'float32[B,13];int64[B,26]:0..1000' (one per input, B = batch, ids in [0,1000)); "
                             "a dict input names its keys: 'dense=float32[B,13];user=int64[B]:0..100'")
    inputs.add_argument("--example-inputs", metavar="FILE", help="a saved batch: .pt (a tensor, a tuple of "
                        "inputs or a dict; loaded weights_only) or .safetensors (tensor names = input paths)")
    inputs.add_argument("--input-map", metavar="MAP",
                        help="which data columns each model input gets when training, e.g. 'dense=dense; "
                             "user=sparse[0]; item=sparse[1]; context=sparse[2:5]' (default: float inputs take "
                             "the dense columns in order, integer inputs the sparse ones; docs/cli.md#input-maps)")
    inputs.add_argument("--batch-size", type=_positive_int, default=8,
                        help="batch size of generated example inputs (default: %(default)s)")
    parser.set_defaults(model_required=required)


def _output_dir(parser: argparse.ArgumentParser, default: str = DEFAULT_OUTPUT) -> None:
    parser.add_argument("-o", "--output-dir", default=default,
                        help="folder for the output files (default: %(default)s); files appear only if the "
                             "command succeeds")
    parser.add_argument("--force", action="store_true",
                        help="overwrite the results of an earlier command in the output folder (without it, such "
                             "a folder is refused)")


def _prune_options(parser: argparse.ArgumentParser, default_ratio: float | None = None,
                   latency: bool = False) -> None:
    group = parser.add_argument_group("pruning")
    target = group.add_mutually_exclusive_group()
    target.add_argument("--ratio", default=default_ratio, metavar="R",
                        help="fraction of channels removed from each prunable group, in (0, 1)"
                             + (" (default: %(default)s)" if default_ratio else ""))
    target.add_argument("--flops-target", metavar="F",
                        help="keep at most this fraction of the dense model's forward FLOPs, in (0, 1)")
    if latency:
        target.add_argument("--latency-target", metavar="F",
                            help="keep at most this fraction of the dense model's predicted latency (the ONNX "
                                 "time model, docs/onnx.md#the-time-model-amgp_fxlatency_model), in (0, 1)")
        group.add_argument("--device-constants", metavar="FILE.json",
                           help="with --latency-target: the device's measured speeds (a DeviceConstants JSON, as "
                                "tools/bench_onnx.py --constants reads, or its results file); default: calibrate "
                                "on the model's device (seconds on a CPU)")
        group.add_argument("--latency-batch", type=_positive_int, metavar="N",
                           help="with --latency-target: rows per call the latency is predicted at (default: "
                                "16384, or the model's static batch)")
    group.add_argument("--group-ratio", action="append", default=[], metavar="GROUP=R",
                       help="per-group ratio overriding --ratio (repeatable; ids/names from 'analyze')")
    group.add_argument("--groups", metavar="IDS", help="prune only these groups (comma-separated ids or names)")
    group.add_argument("--kinds", metavar="KINDS", help="prune only these kinds, e.g. hidden,embedding")
    group.add_argument("--multiple", type=_positive_int, default=8,
                       help="round kept widths to a multiple of this, never to 0 (default: %(default)s; 1: off)")
    group.add_argument("--max-layer-ratio", default="0.9", metavar="C",
                       help="per-layer cap: no group loses more than this fraction (default: %(default)s)")
    group.add_argument("--criterion", default="l2", choices=("l2", "l1", "taylor", "random"),
                       help="channel importance (default: %(default)s)")
    group.add_argument("--policy", default="auto", choices=("auto", "balanced", "global"),
                       help="which channels of a group spanning several tensors (concatenated tables and towers) "
                            "go: balanced = the same share of each, global = the group's top-k; auto (default): "
                            "balanced for embedding and concatenated groups")
    group.add_argument("--allow-empty-members", action="store_true",
                       help="allow a member tensor to lose all its channels of a group (drops whole features); "
                            "off by default")


def _bench_options(parser: argparse.ArgumentParser, batch_sizes: str, iters: int) -> None:
    group = parser.add_argument_group("benchmark")
    group.add_argument("--batch-sizes", default=batch_sizes, help="comma-separated (default: %(default)s)")
    group.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                       help="auto: CUDA when a GPU (and onnxruntime-gpu) is there, else CPU")
    group.add_argument("--warmup", type=_positive_int, default=3, help="untimed calls per batch size")
    group.add_argument("--iters", type=_positive_int, default=iters, help="timed calls per batch size")


def _serving_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("serving settings (docs/onnx.md#serving-settings)")
    group.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                       help="numeric format of ONNX Runtime and torch, parity-checked against fp32 torch "
                            "(default: fp32; bf16 needs the CUDA provider)")
    group.add_argument("--cuda-graphs", action="store_true",
                       help="ONNX Runtime CUDA EP replays a CUDA graph per batch size (IOBinding, fixed batch; "
                            "CUDA provider only)")
    group.add_argument("--ort-opt-level", default="all", choices=("disable", "basic", "extended", "all"),
                       help="ONNX Runtime graph optimisation level (default: %(default)s, ORT's own)")
    group.add_argument("--tf32", action="store_true",
                       help="TF32 fp32 matmuls in both ONNX Runtime (use_tf32) and torch (default: off in both)")


def _export_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ONNX export")
    group.add_argument("--opset", type=_positive_int, default=18, help="ONNX opset (default: %(default)s)")
    group.add_argument("--static-batch", action="store_true", help="bake the batch size in (for CUDA graphs)")
    group.add_argument("--no-parity", action="store_true", help="skip the ONNX Runtime vs PyTorch comparison")
    group.add_argument("--atol", type=_non_negative_float,
                       help="parity tolerance (default 1e-4 absolute, 1e-3 relative)")
    group.add_argument("--rtol", type=_non_negative_float)
    group.add_argument("--no-passes", action="store_true", help="skip the FX rewrites (EmbeddingBag, fusion)")


def _train_options(parser: argparse.ArgumentParser, steps: int) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--data", default="synthetic",
                       help="'synthetic' (Criteo-like data shaped for the model), a Criteo TSV file, or your own "
                            "CSV/TSV/Parquet file (.gz CSV too) described by --columns or "
                            "--label/--dense/--categorical")
    group.add_argument("--columns", metavar="SPEC", help="column spec of --data: a .json or .toml file naming the "
                       "label, dense and categorical columns (docs/data.md); the lists below replace its entries")
    group.add_argument("--label", metavar="COLS", help="label column(s) of --data, comma-separated (several: one task "
                       "each); values 0 or 1")
    group.add_argument("--dense", metavar="COLS", help="dense (numeric) columns of --data, comma-separated, in the "
                       "model's order; a missing value is 0 unless the spec sets dense_default")
    group.add_argument("--categorical", metavar="COLS", help="categorical columns of --data, comma-separated, one per "
                       "embedding table in the model's order")
    group.add_argument("--encoding", choices=("hash", "vocab"), default=None,
                       help="categorical values -> ids: hash (keyed, stable; default) or vocab (built from the file, "
                            "unseen values -> id 0)")
    group.add_argument("--rows", type=_positive_int, default=20_000,
                       help="rows to use: synthetic rows generated, or the first rows of the file")
    group.add_argument("--skip-malformed", action="store_true",
                       help="skip (and count) malformed rows of a data file instead of stopping")
    group.add_argument("--steps", type=int, default=steps, help="training steps (default: %(default)s)")
    group.add_argument("--train-batch", type=_positive_int, default=256, help="training batch size")
    group.add_argument("--lr", type=_positive_float, default=None,
                       help="learning rate, > 0 (default: the optimizer's preset)")
    group.add_argument("--amgp", action="store_true", help="train with alternate growth and pruning")
    group.add_argument("--amgp-recipe", default=DEFAULT_RECIPE, choices=sorted(RECIPES),
                       help="AMGP schedule with --amgp (default: %(default)s: the first 60%% of the steps at half "
                            "width, then one function-preserving growth to full size, the rate re-warmed after it; "
                            "amgp-grow-late: the same growth with a ramp and no re-warm; amgp-half: 3 cycles of "
                            "pruning and regrowth)")
    group.add_argument("--preserve-growth", action="store_true",
                       help="with --amgp: function-preserving growth (regrown units enter with zero outgoing weights, "
                            "so the outputs stay what they were just before the growth)")
    group.add_argument("--grow-ramp", type=float, default=None, metavar="SHARE",
                       help="with --preserve-growth: ramp the regrown units back in over this share of a pruned phase")
    group.add_argument("--fade", type=float, default=None, metavar="SHARE",
                       help="with --amgp: fade the units out over this share of a pruned phase before each shrink "
                            "(the shrink itself then changes no output)")
    group.add_argument("--rewarm", type=float, default=None, metavar="SHARE",
                       help="with --amgp: after each growth, re-warm the learning rate from near zero over this share "
                            "of a pruned phase, so the regrown units' first optimizer steps do not swamp wide layers "
                            "(default: the recipe's; 0.1 in the default recipe, 0 turns it off)")
    group.add_argument("--grow-init", choices=("restore", "fresh", "split", "gradmax"), default=None,
                       help="with --amgp: how regrown units start (default: the recipe's, restore: their saved values; "
                            "fresh: new random incoming weights; split: copies of kept units sharing their outgoing "
                            "weights; gradmax: incoming weights along the batch's largest gradient directions, with a "
                            "function-preserving growth). Measured in docs/benchmarks.md: none beats restore")
    group.add_argument("--selection", choices=SELECTIONS, default=None,
                       help="with --amgp: which units sit out a pruned phase (default: the recipe's, score)")
    group.add_argument("--fold-bias", action="store_true",
                       help="with --amgp: at each shrink, add the removed units' mean output (on the step's batch) "
                            "to the next layer's bias, so the shrunk model's output at the mean input is unchanged "
                            "(FLAP); layers without a bias are left alone; needs a recipe that shrinks a trained model "
                            "(not amgp-grow-late, whose one shrink is at step 0)")
    group.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"), default="constant",
                       help="learning-rate schedule after the warm-up (default: %(default)s)")
    group.add_argument("--lr-warmup", type=float, default=0.0, metavar="SHARE",
                       help="linear warm-up of the learning rate over this share of the steps (default: 0)")
    group.add_argument("--seed", type=_seed, default=0, help="random seed, 0 to 2**32-1 (default: %(default)s)")


EPILOGS = {
    "analyze": "examples:\n  amgp-compress analyze model.pt2\n  amgp-compress analyze --model dlrm --preset default"
               "\n  amgp-compress analyze weights.safetensors --factory my_models.py:build --factory-kwargs "
               "'{\"width\": 512}' --json groups.json",
    "prune": "examples:\n  amgp-compress prune model.pt2 --ratio 0.5 -o out/\n  amgp-compress prune --model dlrm "
             "--flops-target 0.3 --kinds hidden\n  amgp-compress prune model.pt2 --latency-target 0.5 "
             "--device-constants constants.json --kinds hidden,embedding\n  amgp-compress prune weights.pt "
             "--factory pkg.models:build "
             "--ratio 0.5 --group-ratio g1=0.75\nwrites pruned.pt2, pruned.safetensors (with the plan), plan.json, "
             "prune_report.json",
    "train": "examples:\n  amgp-compress train --model dlrm --steps 500 -o out/\n  amgp-compress train model.pt2 "
             "--data day_0.tsv --amgp --device cuda\n  amgp-compress train --model dlrm --amgp --nproc 2 "
             "--train-batch 512\n"
             "writes (in -o):\n"
             "  trained.pt2, trained.safetensors  the trained model\n"
             "  train_summary.json                steps, loss, held-out metrics; with --amgp the training FLOPs saved\n"
             "  train_metrics.jsonl               loss and eval records over the steps\n"
             "  checkpoints/checkpoint_*.pt       every --checkpoint-every steps and the last (for --resume)\n"
             "  train_curve.png                   loss, held-out AUC (and width with --amgp) over the steps;\n"
             "                                    needs matplotlib: pip install amgp-fx[plot]\n"
             "progress goes to stderr; -q silences it",
    "export": "examples:\n  amgp-compress export out/pruned.pt2 -o out/\n  amgp-compress export weights.safetensors "
              "--model dlrm --static-batch --batch-size 512\nwrites model.onnx (checked, parity-tested) and "
              "export_report.json",
    "bench": "examples:\n  amgp-compress bench --onnx out/model.onnx --batch-sizes 1,256,4096\n  amgp-compress bench "
             "out/pruned.pt2 --device cuda --runtimes ort,torch-eager,torch-compile\n"
             "writes (in -o):\n"
             "  latency.json, latency.md  p50/p90/p99, samples/s at p50, FLOPs per batch\n"
             "  latency.png               p50 against batch size; needs matplotlib: pip install amgp-fx[plot]",
    "run": "examples:\n  amgp-compress run                     # small DLRM, synthetic data, CPU, < 2 minutes\n"
           "  amgp-compress run --model dcn_v2 --ratio 0.6 --amgp -o out/\n  amgp-compress run model.pt2 "
           "--flops-target 0.5 --device cuda --batch-sizes 256,1024,4096\n"
           "writes (in -o):\n"
           "  report.md                 read it first: what was done, the numbers and what they mean, the plots\n"
           "  summary.json              every number of the report (the training FLOPs AMGP saved too)\n"
           "  train_curve.png, latency.png  the plots; need matplotlib: pip install amgp-fx[plot]\n"
           "  dense.pt2, dense.safetensors, dense.onnx  the full-size model (after --amgp: AMGP-trained)\n"
           "  compact.pt2, compact.safetensors, compact.onnx  the pruned, fine-tuned model\n"
           "  plan.json, groups.json    the pruning plan and the model's groups of channels\n"
           "  latency.json, latency.md  latency of both models\n"
           "progress goes to stderr; -q silences it",
}


HELP = {
    "analyze": "list the model's groups of channels (what can be pruned, and why not)",
    "prune": "one-shot structured pruning to a ratio, a FLOPs target or a latency target; saves the model and the plan",
    "train": "train the model (dense or AMGP) on synthetic data, Criteo TSV or your own CSV/TSV/Parquet file",
    "export": "export to ONNX, run onnx.checker and the ONNX Runtime parity check",
    "bench": "latency of ONNX Runtime and/or PyTorch over a sweep of batch sizes",
    "run": "the whole pipeline: train -> prune -> export -> bench, reports in one folder",
}


def build_parser() -> argparse.ArgumentParser:
    from amgp_fx import __version__

    parser = _Parser(prog=PROG, formatter_class=_formatter, allow_abbrev=False,
                     description="Compress recommendation models by structured pruning on torch.export graphs.",
                     epilog="Run 'amgp-compress COMMAND --help' for each command; docs/cli.md lists the errors.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub = {name: commands.add_parser(name, help=HELP[name], allow_abbrev=False, epilog=EPILOGS[name],
                                     description=HELP[name][0].upper() + HELP[name][1:] + ".",
                                     formatter_class=_formatter) for name in HELP}
    _model_options(sub["analyze"])
    sub["analyze"].add_argument("--prunable-only", action="store_true", help="list only prunable groups")
    sub["analyze"].add_argument("--json", metavar="FILE", help="also write the groups as JSON")
    _model_options(sub["prune"])
    _prune_options(sub["prune"], latency=True)
    sub["prune"].add_argument("--apply-plan", metavar="PLAN.json", help="apply this plan instead of making one")
    _output_dir(sub["prune"])
    _model_options(sub["train"])
    _train_options(sub["train"], steps=500)
    sub["train"].add_argument("--checkpoint-every", type=_positive_int, default=100, help="steps between checkpoints")
    sub["train"].add_argument("--resume", action="store_true", help="continue from the last checkpoint in -o")
    sub["train"].add_argument("--nproc", type=int, default=1, metavar="N",
                              help="data-parallel processes on this machine (torchrun + DistributedDataParallel); "
                                   "--train-batch is the global batch and must be divisible by N (default: 1)")
    sub["train"].add_argument("--device", default="cpu", metavar="DEVICE",
                              help="cpu (default), cuda, cuda:N or auto (cuda when torch sees a GPU, else cpu); "
                                   "with --nproc N on CUDA, process i trains on cuda:i (NCCL)")
    _output_dir(sub["train"])
    _model_options(sub["export"])
    _export_options(sub["export"])
    _output_dir(sub["export"])
    _model_options(sub["bench"], required=False)
    sub["bench"].add_argument("--onnx", action="append", default=[], metavar="FILE",
                              help="an ONNX file to time with ONNX Runtime (repeatable)")
    sub["bench"].add_argument("--runtimes", default=None,
                              help="comma-separated: ort, torch-eager, torch-compile (default: ort for --onnx "
                                   "files, ort,torch-eager for a model)")
    sub["bench"].add_argument("--variant", default=None, help="label of the model in the table (default: file name)")
    _bench_options(sub["bench"], "1,64,512", iters=50)
    _serving_options(sub["bench"])
    _output_dir(sub["bench"])
    _model_options(sub["run"], required=False)
    _train_options(sub["run"], steps=200)
    sub["run"].add_argument("--finetune-steps", type=int, default=50, help="training steps after pruning")
    _prune_options(sub["run"], default_ratio=0.5)
    _export_options(sub["run"])
    _bench_options(sub["run"], "1,64,512", iters=20)
    _output_dir(sub["run"])
    for name in HELP:
        _common(sub[name])
        sub[name].set_defaults(command=name)
    return parser

"""``main``: parse the command line, run the subcommand's module, turn errors into exit codes.

Expected failures print one line, ``amgp-compress: error: <problem>. <fix>``, and exit with the
code of their :mod:`amgp_fx.errors` class; so do unexpected (internal) errors, as ``internal
error: ...``; ``--verbose`` adds the traceback and info logs. SIGINT exits 130 and SIGTERM 143,
after the same clean-up as a failure (:mod:`amgp_fx.cli.signals`). Each
subcommand lives in its own module, ``amgp_fx.cli.<command>``, with a ``command(args)`` function;
it is imported only once the arguments have passed their checks.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import logging
import sys
import traceback
import warnings
from typing import Sequence

from amgp_fx.cli.parser import build_parser
from amgp_fx.cli.signals import handle_signals
from amgp_fx.cli.values import PROG
from amgp_fx.errors import INTERNAL_ERROR_CODE, Terminated, UsageError, as_cli_error, exit_code_of

__all__ = ["COMMANDS", "main"]

COMMANDS = {name: f"amgp_fx.cli.{name}" for name in ("analyze", "prune", "train", "export", "bench", "run")}


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:  # torch's deprecation chatter is not the user's business
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|onnxscript)(\.|$)")
        import torch  # noqa: F401 - torch installs its own log handlers on import; quieten them after

        for name in ("torch", "torch.onnx", "torch.export", "torch._dynamo", "onnxscript"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _fail(line: str) -> None:
    print(f"{PROG}: error: {line}", file=sys.stderr, flush=True)


def _close_progress_line() -> None:
    progress = sys.modules.get("amgp_fx.cli.output")
    if progress is not None:
        progress.Progress.interrupted()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``amgp-compress`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with handle_signals():
        return _main(argv)


def _main(argv: list[str]) -> int:
    """Parse and run; every failure becomes one line on stderr and its exit code (a traceback only
    with ``--verbose``)."""
    verbose = "-v" in argv or "--verbose" in argv
    captured = io.StringIO()
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exit_request:  # --help and --version
            return int(exit_request.code or 0)
        args.argv = list(argv)  # `train --nproc N` re-runs the same command line under torchrun
        if args.command is None:
            raise UsageError("no command given", f"Run '{PROG} --help'; '{PROG} run' runs the whole pipeline")
        from amgp_fx.cli.common import precheck

        precheck(args)  # before torch is imported: bad options fail in a fraction of a second
        _configure_logging(args.verbose)
        # torch prints some diagnostics (e.g. the graph of an untraceable model) on stderr: keep them
        # out of the one-line error unless --verbose
        with contextlib.redirect_stderr(captured) if not args.verbose else contextlib.nullcontext():
            return int(importlib.import_module(COMMANDS[args.command]).command(args) or 0)
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM (errors.Terminated)
        _close_progress_line()
        what = "terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted"
        _fail(f"{what}; the command's output files were discarded (training checkpoints stay, for --resume)")
        return exit_code_of(interrupt)
    except SystemExit as exit_request:  # user code (a factory, a model) called sys.exit: not a success
        _close_progress_line()
        if verbose:
            traceback.print_exc()
        _fail(f"the model's code called sys.exit({exit_request.code!r}) while amgp-compress ran it; nothing was "
              "written. Remove the sys.exit call (e.g. put script code under 'if __name__ == \"__main__\":').")
        return INTERNAL_ERROR_CODE
    except Exception as error:  # noqa: BLE001 - the one place errors become exit codes
        _close_progress_line()
        expected = as_cli_error(error)
        if verbose:
            sys.stderr.write(captured.getvalue())
            traceback.print_exc()
        if expected is None:
            _fail(f"internal error: {type(error).__name__}: {' '.join(str(error).split())[:300]}. This is a bug; "
                  "rerun with --verbose and report the traceback.")
            return INTERNAL_ERROR_CODE
        _fail(expected.line())
        return expected.exit_code

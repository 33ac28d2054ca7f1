"""Errors a command-line user can meet, each with its own exit code, and the one place that maps the
library's exceptions onto them.

Every error carries a *problem* and a *fix*; ``amgp-compress`` prints them on one line,
``amgp-compress: error: <problem>. <fix>``, and exits with the class's ``exit_code``:

=====  ==================  =========================================================================
code   class               meaning
=====  ==================  =========================================================================
1      (any other)         an unexpected internal error (rerun with ``--verbose`` and report it)
2      UsageError          bad command line: unknown flag, missing value, conflicting options
3      ModelFileError      model file missing, truncated, corrupt, unsupported, pickle without trust
4      FactoryError        ``--factory`` does not import, is not callable or fails to build a model
5      InputSpecError      example inputs have the wrong shape/dtype or cannot be built
6      TraceFailure        ``torch.export`` could not trace the model
7      PruneRequestError   ratio outside (0, 1), would empty a layer, non-prunable group, bad plan
8      OutputPathError     the output path cannot be written
9      DataError           a data file has malformed rows, NaNs or the wrong columns
10     ExportFailure       ONNX export, the ONNX checker or the parity check failed
11     TrainingFailure     training diverged (NaN loss), the model's weights are not finite, or the
                           training stage is unavailable
130    (interrupted)       Ctrl-C (SIGINT)
143    (terminated)        SIGTERM
=====  ==================  =========================================================================

Library modules do not import this one; :func:`as_cli_error` recognises their exceptions by class
name (``TraceError``, ``SurgeryError``, ...), so no heavy module is imported to classify an error.

Example:
    >>> error = as_cli_error(ValueError("boom"))
    >>> error is None
    True
    >>> PruneRequestError("ratio 1.5 is outside (0, 1)", "Pass a fraction such as 0.5").line()
    'ratio 1.5 is outside (0, 1). Pass a fraction such as 0.5.'
"""
from __future__ import annotations

import errno
import re

__all__ = ["CliError", "DataError", "ExportFailure", "FactoryError", "InputSpecError", "ModelFileError",
           "OutputPathError", "PruneRequestError", "Terminated", "TraceFailure", "TrainingFailure", "UsageError",
           "EXIT_CODES", "as_cli_error", "exit_code_of"]

INTERNAL_ERROR_CODE = 1
INTERRUPTED_CODE = 130
TERMINATED_CODE = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that every ``finally`` and ``__exit__`` that
    cleans up after an interrupt also cleans up after a ``kill`` (``amgp_fx.cli.signals`` raises it)."""


class CliError(Exception):
    """An expected failure: ``problem`` says what is wrong, ``fix`` what the user can do."""

    exit_code = INTERNAL_ERROR_CODE

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(problem if not fix else f"{problem}. {fix}")
        self.problem, self.fix = problem, fix

    def line(self) -> str:
        """Problem and fix as one line, each ending in a full stop."""
        parts = [_sentence(self.problem)] + ([_sentence(self.fix)] if self.fix else [])
        return " ".join(p for p in parts if p)


class UsageError(CliError):
    exit_code = 2


class ModelFileError(CliError):
    exit_code = 3


class FactoryError(CliError):
    exit_code = 4


class InputSpecError(CliError):
    exit_code = 5


class TraceFailure(CliError):
    exit_code = 6


class PruneRequestError(CliError):
    exit_code = 7


class OutputPathError(CliError):
    exit_code = 8


class DataError(CliError):
    exit_code = 9


class ExportFailure(CliError):
    exit_code = 10


class TrainingFailure(CliError):
    exit_code = 11


EXIT_CODES = {cls.__name__: cls.exit_code for cls in (
    UsageError, ModelFileError, FactoryError, InputSpecError, TraceFailure, PruneRequestError, OutputPathError,
    DataError, ExportFailure, TrainingFailure)}

# library exception class name -> (CLI error class, the fix when the library message has none)
_LIBRARY_ERRORS: dict[str, tuple[type[CliError], str]] = {
    "TraceError": (TraceFailure, "Make forward traceable by torch.export (see docs/cli.md#troubleshooting)"),
    "ExampleInputError": (InputSpecError, "Pass inputs the model accepts with --input-shape or --example-inputs"),
    "SurgeryError": (PruneRequestError, "Run 'amgp-compress analyze' to list the prunable groups and their sizes"),
    "AmgpError": (PruneRequestError, "Run 'amgp-compress analyze' to list the prunable groups and their sizes"),
    "PlanError": (PruneRequestError, "Run 'amgp-compress analyze' to list the prunable groups and their sizes"),
    "DataFormatError": (DataError, "Fix or delete that row, or pass --skip-malformed to skip malformed rows"),
    "ParityError": (ExportFailure, "Try --atol/--rtol, or report the model: ONNX Runtime disagrees with PyTorch"),
    "ExportError": (ExportFailure, "Retry with --verbose to see the failing stage"),
    "PassError": (ExportFailure, "Retry export with --no-passes to skip the FX rewrites"),
    "ConfigError": (UsageError, "Check the option values against 'amgp-compress train --help'"),
    "InputMapError": (InputSpecError, "Pass --input-map with a source for every model input (docs/cli.md#input-maps)"),
    "CheckpointError": (ModelFileError, "Delete that checkpoint to resume from the one before it, or start afresh "
                                        "with --force"),
}

# errno of an OSError -> (CLI error class, what went wrong, the fix): failures of the system rather
# than of the program (a full disk, a read-only mount, a name the filesystem refuses)
_OS_ERRORS: dict[int, tuple[type[CliError], str]] = {
    errno.ENOSPC: (OutputPathError, "Free some space, or pass another folder with --output-dir"),
    errno.EDQUOT: (OutputPathError, "Free some space within your quota, or pass another folder with --output-dir"),
    errno.EFBIG: (OutputPathError, "Pass a folder on a filesystem that takes large files with --output-dir"),
    errno.EROFS: (OutputPathError, "Pass a writable folder with --output-dir"),
    errno.ENAMETOOLONG: (UsageError, "Use a shorter file or folder name (at most 255 bytes per name)"),
}


# library messages that already say what to do (then the default fix is not appended)
_FIX_WORDS = re.compile(r"What to try|\b(Pass|Use|Try|Run|Re-create|Raise|Lower|Leave|Check|Retry|Choose|Save|Make|"
                        r"Fix|Install|pass|use a|keep at least|lists the|says why)\b")


def _sentence(text: str) -> str:
    """One line ending in a full stop; control characters (binary file content quoted in a message,
    terminal escape sequences) are shown as U+FFFD, never sent to the terminal."""
    text = re.sub(r"\s+", " ", str(text)).strip()
    text = "".join(c if c.isprintable() else "\ufffd" for c in text)
    return text if not text or text[-1] in ".!?" else text + "."


def as_cli_error(error: BaseException) -> CliError | None:
    """The ``CliError`` for an expected failure, or ``None`` for a bug (shown with a traceback).

    Library exceptions are recognised by the name of a class in their MRO defined in ``amgp_fx``;
    their message (already naming the problem and usually the fix) becomes one line.
    """
    if isinstance(error, CliError):
        return error
    if isinstance(error, OSError) and error.errno in _OS_ERRORS:
        return _os_error(error)
    cause = error.__cause__  # a library error raised from a full disk (ExportError from ENOSPC): the disk's
    if isinstance(cause, OSError) and cause.errno in _OS_ERRORS and cause.errno != errno.ENAMETOOLONG:
        return _os_error(cause)
    for cls in type(error).__mro__:
        mapped = _LIBRARY_ERRORS.get(cls.__name__)
        if mapped is not None and cls.__module__.startswith("amgp_fx"):
            target, fix = mapped
            message = re.sub(r"\s+", " ", str(error)).strip() or cls.__name__
            has_fix = _FIX_WORDS.search(message) is not None
            return target(message.rstrip("."), "" if has_fix else fix)
    return None


def _os_error(error: OSError) -> CliError:
    """A full disk, a read-only filesystem or an over-long name: one line naming the file."""
    target, fix = _OS_ERRORS[error.errno]
    what = error.strerror or errno.errorcode.get(error.errno, "OS error")
    where = f" ({error.filename})" if error.filename else ""
    if error.errno == errno.ENAMETOOLONG and error.filename:
        where = f" ({str(error.filename)[:60]}...)"
    verb = "writing" if target is OutputPathError else "opening"
    return target(f"{what} {verb} a file{where}" if where else what, fix)


def exit_code_of(error: BaseException) -> int:
    """The process exit code for ``error`` (1 for unexpected errors, 130 for Ctrl-C, 143 for SIGTERM)."""
    if isinstance(error, Terminated):
        return TERMINATED_CODE
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED_CODE
    mapped = as_cli_error(error)
    return mapped.exit_code if mapped is not None else INTERNAL_ERROR_CODE

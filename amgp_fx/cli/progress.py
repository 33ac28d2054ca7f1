"""Progress on stderr: a line per stage of a command, sub-steps on it, a bar for long loops.

``[2/3] training with AMGP for 500 steps ... loss 0.4512, eval auc 0.7712 (28.1 s)``. Progress
goes to the process's own stderr (``sys.__stderr__``: the CLI captures ``sys.stderr`` to keep
torch's chatter out of its error lines), so stdout holds only results and can be piped;
``-q/--quiet`` silences all of it. A loop's bar is a tqdm bar on a terminal and, in a log file
(no terminal), a plain line every tenth of the loop, so logs get no carriage returns.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Bar", "Progress"]


class Progress:
    """``[k/n] stage ... sub-step, sub-step. detail (1.2 s)`` lines on stderr (silenced by --quiet)."""

    _open_line = False  # a stage line waits for its end; `interrupted` closes it when a stage fails
    _stream: TextIO | None = None
    _active: Progress | None = None  # whose stage line is open (`make_room` ends it)

    def __init__(self, total: int, quiet: bool, stream: TextIO | None = None) -> None:
        self.total, self.quiet, self.step, self.started = total, quiet, 0, time.perf_counter()
        self.stream = stream or sys.__stderr__ or sys.stderr
        self._text, self._parts, self._broken, self._began = "", 0, False, self.started

    def stage(self, text: str) -> Progress:
        """Begin stage ``text`` (its line stays open for sub-steps and the result)."""
        self.step += 1
        self._began, self._text, self._parts, self._broken = time.perf_counter(), text, 0, False
        self._write(f"{self._prefix()} {text} ...")
        self._set_open(True)
        return self

    def part(self, name: str) -> None:
        """Sub-step ``name`` of the current stage begins (e.g. an export's ``ORT parity``)."""
        if self._broken:
            self._write(f"{self._prefix()} {name} ...")
            self._set_open(True)
            self._broken = False
        else:
            self._write(("," if self._parts else "") + f" {name}")
        self._parts += 1

    def done(self, detail: str = "") -> None:
        """End the current stage with ``detail`` and its time."""
        if self._broken:  # a bar or another message ran below the stage line: repeat it
            self._write(f"{self._prefix()} {self._text} ...")
        separator = "." if self._parts and detail else ""
        self._write(f"{separator} {detail + ' ' if detail else ''}({time.perf_counter() - self._began:.1f} s)\n")
        self._set_open(False)

    def bar(self, total: int, unit: str = "step", initial: int = 0) -> Bar:
        """A bar for a loop of ``total`` units inside the current stage (a no-op one with --quiet). On a
        terminal the bar takes the stage line's place (and clears itself); in a log it starts below."""
        if self.quiet:
            return Bar(total, unit, initial, None, self._prefix())
        terminal = _is_terminal(self.stream)
        if terminal and Progress._open_line:
            self._set_open(False)  # tqdm's carriage return overwrites the stage line; `done` repeats it
            self._broken = True
        else:
            self.break_line()
        return Bar(total, unit, initial, self.stream, f"{self._prefix()} {self._text}" if terminal else self._prefix())

    def break_line(self) -> None:
        """End the open stage line here, so other output starts on a line of its own; ``done``
        repeats the stage's text."""
        if Progress._open_line and not self.quiet:
            self._write("\n")
            self._set_open(False)
            self._broken = True

    @classmethod
    def interrupted(cls) -> None:
        """Close a stage line left open by a failure, before the error line."""
        if cls._open_line and cls._stream is not None:
            cls._stream.write(" failed\n")
            cls._stream.flush()
            cls._open_line = False

    def say(self, text: str, end: str = "\n") -> None:
        self._write(text + end)

    def _prefix(self) -> str:
        return f"[{self.step}/{self.total}]"

    @classmethod
    def make_room(cls) -> None:
        """End an open stage line before another message (a note) is printed on its stream."""
        if cls._open_line and cls._active is not None:
            cls._active.break_line()

    def _set_open(self, value: bool) -> None:
        Progress._open_line = value and not self.quiet
        Progress._stream = self.stream
        Progress._active = self if Progress._open_line else None

    def _write(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(text)
            self.stream.flush()


class Bar:
    """Progress of a loop: ``update(n, status)`` after each unit. On a terminal a tqdm bar that clears
    itself when closed; otherwise ``[k/n] step 50/500: status`` lines, one per tenth of the loop."""

    def __init__(self, total: int, unit: str, initial: int, stream: TextIO | None, prefix: str) -> None:
        self.total, self.unit, self.count, self.stream, self.prefix = total, unit, initial, stream, prefix
        self._every = max(1, total // 10)
        self._tqdm = None
        if stream is not None and _is_terminal(stream):
            from tqdm import tqdm

            self._tqdm = tqdm(total=total, initial=initial, unit=unit, file=stream, leave=False, dynamic_ncols=True,
                              desc=prefix, mininterval=0.5)

    def start_at(self, count: int) -> None:
        """Continue from ``count`` units done (a resumed loop)."""
        self.count = count
        if self._tqdm is not None:
            self._tqdm.n = self._tqdm.last_print_n = self._tqdm.initial = count  # rate from here on
            self._tqdm.refresh()

    def update(self, n: int = 1, status: str = "") -> None:
        before, self.count = self.count, self.count + n
        if self._tqdm is not None:
            if status:
                self._tqdm.set_postfix_str(status, refresh=False)
            self._tqdm.update(n)
        elif self.stream is not None and (self.count // self._every > before // self._every
                                          or self.count >= self.total > before):
            self.stream.write(f"{self.prefix} {self.unit} {self.count}/{self.total}{': ' + status if status else ''}\n")
            self.stream.flush()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False

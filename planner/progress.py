"""Progress on stderr: bars on a terminal, plain lines at a modest rate otherwise.

One helper for every long job (rank distributions, the integer program, the local search,
the accuracy experiment). A log or CI job that is not a terminal still hears from a run that
takes minutes: the first line comes after ``quiet_for`` seconds, then at most one every
``interval`` seconds, so short runs print nothing.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Hashable


class Reporter:
    """``reporter(key, done, total)`` updates the bar (or line) of ``key``; ``describe`` renames
    it; ``line(text)`` prints a plain line when stderr is not a terminal."""

    def __init__(self, *, tty: bool, label: Callable[[Hashable], str] | None, prefix: str,
                 interval: float, quiet_for: float, eta: bool = False):
        self.tty, self.label, self.prefix, self.eta = tty, label, prefix, eta
        self.interval, self.quiet_for = interval, quiet_for
        self.started = time.monotonic()
        self._last_line = None
        self._bar = None
        self._tasks: dict = {}
        self._names: dict = {}

    # ---------------------------------------------------------------- updates
    def __call__(self, key: Hashable, done: int, total: int) -> None:
        self.update(key, done, total)

    def update(self, key: Hashable, done: int, total: int, description: str | None = None) -> None:
        if description is not None:
            self._names[key] = description
        name = self._names.get(key) or (str(key) if self.label is None else self.label(key))
        total = max(int(total), int(done), 1)
        if self._bar is not None:
            if key not in self._tasks:
                self._tasks[key] = self._bar.add_task(name, total=total)
            self._bar.update(self._tasks[key], completed=done, total=total, description=name)
        elif not self.tty:
            now = time.monotonic()
            if now - self.started < self.quiet_for:
                return
            if self._last_line is not None and now - self._last_line < self.interval and done < total:
                return
            self._last_line = now
            elapsed = now - self.started
            left = f", about {_duration(elapsed / done * (total - done))} left" if self.eta and 0 < done < total else ""
            self._print(f"{name} {done}/{total} ({elapsed:.0f} s{left})")

    def describe(self, key: Hashable, description: str) -> None:
        self._names[key] = description

    def line(self, text: str) -> None:
        """A plain progress line (only when stderr is not a terminal: bars say it otherwise)."""
        if not self.tty:
            self._print(text)

    def _print(self, text: str) -> None:
        try:
            print(f"{self.prefix}: {text}", file=sys.stderr, flush=True)
        except OSError:
            pass

    # ---------------------------------------------------------------- lifetime
    def _open(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        if self.eta:
            columns += [TextColumn("left"), TimeRemainingColumn()]
        self._bar = Progress(*columns, console=Console(stderr=True), transient=True)
        self._bar.__enter__()

    def _close(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@contextmanager
def reporter(enabled: bool = True, *, label: Callable[[Hashable], str] | None = None,
             prefix: str = "sparsity-planner", interval: float = 10.0, quiet_for: float = 2.0,
             eta: bool = False):
    """Yields a :class:`Reporter`, or ``None`` when ``enabled`` is false. ``eta`` adds the time
    left (from the mean time per step so far) to the bars and the lines."""
    if not enabled:
        yield None
        return
    rep = Reporter(tty=sys.stderr.isatty(), label=label, prefix=prefix, interval=interval, quiet_for=quiet_for,
                   eta=eta)
    if rep.tty:
        rep._open()
    try:
        yield rep
    except BaseException as exc:
        rep._close(type(exc), exc, exc.__traceback__)
        raise
    else:
        rep._close(None, None, None)

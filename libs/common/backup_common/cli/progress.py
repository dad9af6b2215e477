"""How `backupctl` shows a long job's progress: on a terminal, rich's progress bars, one per part of
the job; elsewhere (a log, a pipe, cron's mail) plain lines, one when a part's phase changes or its
share done reaches another tenth, never one per poll."""

from __future__ import annotations

import sys
from typing import Any, Protocol, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

# What a part's progress counts, in the order its share done is taken from (the first with a total).
_UNITS = ("tables", "files", "entries")


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _count(progress: dict[str, Any], key: str) -> int | None:
    value = progress.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def details(progress: dict[str, Any] | None) -> str:
    """A part's progress as the catalog records it, without its phase: share done, counts."""
    if not progress:
        return ""
    words = []
    done, total = _count(progress, "bytes_done"), _count(progress, "bytes_total")
    if done is not None and total:
        words.append(f"{min(100, 100 * done // total)}% ({human_bytes(done)} of {human_bytes(total)})")
    for unit in _UNITS:
        done_units, total_units = _count(progress, f"{unit}_done"), _count(progress, f"{unit}_total")
        if done_units is not None and total_units:
            words.append(f"{done_units}/{total_units} {unit}")
    rows = _count(progress, "rows_done")
    if rows:
        words.append(f"{rows} rows")
    if done and not total:
        words.append(f"{human_bytes(done)} done")
    return " ".join(words)


def describe(progress: dict[str, Any] | None) -> str:
    """A part's progress in a few words: its phase, share done, counts."""
    if not progress:
        return "waiting"
    return " ".join(word for word in (str(progress.get("phase", "running")), details(progress)) if word)


def share(progress: dict[str, Any] | None) -> tuple[int, int] | None:
    """How much of a part is done, as (done, total) of bytes, tables, files or entries; None unknown."""
    if not progress:
        return None
    for unit in ("bytes", *_UNITS):
        done, total = _count(progress, f"{unit}_done"), _count(progress, f"{unit}_total")
        if done is not None and total:
            return min(done, total), total
    return None


class Display(Protocol):
    """Where a job's progress goes while `backupctl` waits for it."""

    def show(self, key: str, text: str, *, phase: str = "", done: tuple[int, int] | None = None) -> None:
        """The state of one part of the job (``key``): ``text`` says it, ``phase`` is what a change
        of deserves a line, ``done`` the share done when known."""

    def note(self, text: str) -> None:
        """A message about the job as a whole (the gateway stopped answering, say)."""

    def close(self) -> None:
        """The job ended (or the wait did): leaves what was shown as it is."""


class TerminalDisplay:
    """rich's progress bars, redrawn in place on the terminal (stderr by default)."""

    def __init__(self, stream: TextIO) -> None:
        self._progress = Progress(
            SpinnerColumn(finished_text="•"),
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            TimeElapsedColumn(),
            console=Console(file=stream),
        )
        self._tasks: dict[str, TaskID] = {}
        self._last_note: str | None = None
        self._started = False

    def _start(self) -> None:
        """Draws from the first thing shown on: a command that fails before leaves the terminal alone."""
        if not self._started:
            self._progress.start()
            self._started = True

    def show(self, key: str, text: str, *, phase: str = "", done: tuple[int, int] | None = None) -> None:
        self._start()
        completed, total = done if done is not None else (0, None)
        task = self._tasks.get(key)
        if task is None:
            self._tasks[key] = self._progress.add_task(text, total=total, completed=completed)
        else:
            self._progress.update(task, description=text, total=total, completed=completed)

    def note(self, text: str) -> None:
        self._start()
        if text != self._last_note:
            self._progress.console.print(text, markup=False, highlight=False)
            self._last_note = text

    def close(self) -> None:
        if self._started:
            self._progress.stop()
            self._started = False


class PlainDisplay:
    """Plain lines for a log: one when a part's phase changes or its share done reaches another tenth."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._shown: dict[str, tuple[str, int | None]] = {}
        self._last_note: str | None = None

    def show(self, key: str, text: str, *, phase: str = "", done: tuple[int, int] | None = None) -> None:
        tenth = min(10, 10 * done[0] // done[1]) if done is not None and done[1] > 0 else None
        if self._shown.get(key) == (phase, tenth):
            return
        self._shown[key] = (phase, tenth)
        self._last_note = None
        self._write(text)

    def note(self, text: str) -> None:
        if text != self._last_note:
            self._write(text)
            self._last_note = text

    def close(self) -> None:
        self._stream.flush()

    def _write(self, text: str) -> None:
        self._stream.write(text + "\n")
        self._stream.flush()


def progress_display(stream: TextIO | None = None) -> Display:
    """Bars on a terminal, plain lines elsewhere; on stderr unless told otherwise, so that stdout
    keeps only the result (a script's `$(backupctl … --json)`)."""
    stream = stream if stream is not None else sys.stderr
    return TerminalDisplay(stream) if stream.isatty() else PlainDisplay(stream)

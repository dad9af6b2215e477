"""How `backupctl` shows a long job's progress: one line rewritten in place on a terminal; elsewhere
(a log, a pipe) a line when the phase changes and at most one every few seconds in between."""

from __future__ import annotations

import time
from typing import Any, TextIO

PLAIN_EVERY_SECONDS = 10.0


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def describe(progress: dict[str, Any] | None) -> str:
    """A part's progress as the catalog records it, in a few words: phase, share done, counts."""
    if not progress:
        return "waiting"
    words = [str(progress.get("phase", "running"))]
    done, total = progress.get("bytes_done"), progress.get("bytes_total")
    if isinstance(done, int) and isinstance(total, int) and total > 0:
        words.append(f"{min(100, 100 * done // total)}% ({human_bytes(done)} of {human_bytes(total)})")
    for unit in ("tables", "files"):
        done, total = progress.get(f"{unit}_done"), progress.get(f"{unit}_total")
        if isinstance(done, int) and isinstance(total, int) and total > 0:
            words.append(f"{done}/{total} {unit}")
    return " ".join(words)


class ProgressLine:
    """One status line; ``update`` it as often as you like, ``close`` it when the job ends."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._terminal = stream.isatty()
        self._shown = ""
        self._shown_at = 0.0
        self._phase = ""
        self._width = 0

    def update(self, text: str, *, phase: str = "") -> None:
        if text == self._shown:
            return
        now = time.monotonic()
        if self._terminal:
            padding = " " * max(0, self._width - len(text))
            self._stream.write(f"\r{text}{padding}")
            self._width = len(text)
        elif phase != self._phase or now - self._shown_at >= PLAIN_EVERY_SECONDS:
            self._stream.write(text + "\n")
        else:
            return
        self._stream.flush()
        self._shown, self._shown_at, self._phase = text, now, phase

    def close(self) -> None:
        if self._terminal and self._shown:
            self._stream.write("\n")
            self._stream.flush()
        self._shown = ""

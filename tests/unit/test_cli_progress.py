"""`backupctl`'s progress while it waits: rich's bars on a terminal, and elsewhere plain lines, one per
phase or tenth done, never one per poll."""

from __future__ import annotations

import io
from typing import Any

import pytest

from backup_common.cli.progress import PlainDisplay, TerminalDisplay, details, progress_display, share


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("progress", "text"),
    [
        (None, ""),
        ({"bytes_done": 51, "rows_done": 2, "tables_done": 1, "tables_total": 1}, "1/1 tables 2 rows 51 B done"),
        ({"bytes_done": 2048, "entries_done": 3, "entries_total": 4}, "3/4 entries 2.0 KiB done"),
        ({"phase": "writing", "bytes_done": 10, "bytes_total": 40, "files_done": 1, "files_total": 2},
         "25% (10 B of 40 B) 1/2 files"),
    ],
)  # fmt: skip
def test_details_say_what_a_backup_or_restore_part_counted(progress: dict[str, Any] | None, text: str) -> None:
    assert details(progress) == text


@pytest.mark.parametrize(
    ("progress", "done"),
    [
        (None, None),
        ({"phase": "checking"}, None),
        ({"bytes_done": 10, "bytes_total": 40, "tables_done": 1, "tables_total": 2}, (10, 40)),
        ({"bytes_done": 10, "bytes_total": 0, "tables_done": 1, "tables_total": 2}, (1, 2)),
        ({"entries_done": 7, "entries_total": 5}, (5, 5)),
        ({"bytes_done": 10}, None),
    ],
)
def test_the_share_done_is_taken_from_bytes_then_counts(
    progress: dict[str, Any] | None, done: tuple[int, int] | None
) -> None:
    assert share(progress) == done


def test_plain_lines_come_once_per_phase_and_per_tenth_done_not_per_poll() -> None:
    log = io.StringIO()
    display = PlainDisplay(log)

    display.show("database", "database: pending", phase="pending")
    display.show("database", "database: pending", phase="pending")
    for done in (1, 5, 9, 10, 19, 20, 21, 100):
        display.show("database", f"database: running {done}%", phase="running", done=(done, 100))
    display.show("files", "files: running", phase="running")
    display.show("database", "database: completed", phase="completed", done=(100, 100))
    display.close()

    assert log.getvalue().splitlines() == [
        "database: pending",
        "database: running 1%",
        "database: running 10%",
        "database: running 20%",
        "database: running 100%",
        "files: running",
        "database: completed",
    ]


def test_a_note_is_printed_once_until_something_else_is_shown() -> None:
    log = io.StringIO()
    display = PlainDisplay(log)

    display.note("cannot reach the gateway; asking again")
    display.note("cannot reach the gateway; asking again")
    display.show("files", "files: running", phase="running")
    display.note("cannot reach the gateway; asking again")

    assert log.getvalue().splitlines() == [
        "cannot reach the gateway; asking again",
        "files: running",
        "cannot reach the gateway; asking again",
    ]


def test_a_terminal_gets_rich_progress_bars_and_a_log_plain_lines() -> None:
    assert isinstance(progress_display(Terminal()), TerminalDisplay)
    assert isinstance(progress_display(io.StringIO()), PlainDisplay)


def test_the_terminal_display_draws_each_part_with_its_text_as_given() -> None:
    terminal = Terminal()
    display = TerminalDisplay(terminal)

    display.show("database", "database: running [1/4 tables]", phase="running", done=(1, 4))
    display.show("files", "files: pending", phase="pending")
    display.show("database", "database: completed [4/4 tables]", phase="completed", done=(4, 4))
    display.note("restore r1: waiting for its safety backup b2")
    display.close()

    drawn = terminal.getvalue()
    assert "database: completed [4/4 tables]" in drawn, "brackets are text, not rich markup"
    assert "files: pending" in drawn
    assert "restore r1: waiting for its safety backup b2" in drawn
    assert "\x1b[" in drawn, "drawn in place with terminal control sequences"

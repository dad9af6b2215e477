"""What `backupctl list`, `show`, `backup --wait` and `verify` print from the API's records: plain
aligned columns for logs and scripts, rich tables on a terminal."""

from __future__ import annotations

import io
from typing import Any

from backup_common.cli.render import (
    Table,
    backup_outcome,
    emit,
    list_footer,
    list_table,
    part_progress,
    plain_lines,
    show_blocks,
    took,
    verification_line,
    when,
)

ID = "6f1c1b9e-2a43-4d4e-9d55-0a3c1d2e3f40"


def backup(**changes: Any) -> dict[str, Any]:
    """A backup as GET /api/admin/backup/{id} shows it."""
    record: dict[str, Any] = {
        "id": ID,
        "type": "full",
        "status": "completed",
        "description": "before the upgrade",
        "requested_by": "alice",
        "trigger": "api",
        "schedule": None,
        "archive": False,
        "parent_id": None,
        "storage_path": f"2026-03-01/{ID}",
        "size_bytes": 3 * 1024 * 1024,
        "error": None,
        "created_at": "2026-03-01T02:00:00.100000Z",
        "started_at": "2026-03-01T02:00:01Z",
        "completed_at": "2026-03-01T02:01:13.500000Z",
        "updated_at": "2026-03-01T02:01:13.500000Z",
        "erased_at": None,
        "progress": {"parts_completed": 2, "parts_total": 2},
        "parts": [
            {
                "part": "database", "status": "completed", "file_name": "database.zip", "size_bytes": 2 * 1024 * 1024,
                "sha256": "a" * 64, "item_count": 12, "attempts": 1, "error": None,
                "progress": {"bytes_done": 5000, "rows_done": 120, "tables_done": 4, "tables_total": 4},
                "started_at": None, "completed_at": None,
            },
            {
                "part": "files", "status": "completed", "file_name": "files.zip", "size_bytes": 1024 * 1024,
                "sha256": "b" * 64, "item_count": 30, "attempts": 2, "error": None,
                "progress": {"bytes_done": 900, "entries_done": 30, "entries_total": 30},
                "started_at": None, "completed_at": None,
            },
        ],
        "verification": {
            "status": "failed",
            "checked_at": "2026-03-01T02:05:00+00:00",
            "error": "files.archive_digest: damaged",
            "checks": [
                {"name": "manifest_authentic", "ok": True, "detail": "signed", "seconds": 0.01},
                {"name": "files.archive_digest", "ok": False, "detail": "damaged", "seconds": 1.26},
            ],
        },
        "warning_count": 2,
        "warnings": [
            {"part": "files", "path": "uploads/run/app.sock", "reason": "socket"},
            {"part": "files", "path": "logs/secret.log", "reason": "unreadable: Permission denied"},
        ],
    }  # fmt: skip
    return record | changes


def test_times_are_shown_in_utc_to_the_second_and_durations_in_words() -> None:
    assert when("2026-03-01T02:00:00.100000Z") == "2026-03-01 02:00:00"
    assert when("2026-03-01T03:00:00+01:00") == "2026-03-01 02:00:00"
    assert when(None) == "-"
    assert took("2026-03-01T02:00:01Z", "2026-03-01T02:01:13.400000Z") == "1 min 12 s"
    assert took("2026-03-01T02:00:01Z", "2026-03-01T02:00:03.25Z") == "2.2 s"
    assert took("2026-03-01T02:00:01Z", "2026-03-01T05:10:01Z") == "3 h 10 min"
    assert took(None, "2026-03-01T02:00:03Z") is None


def test_the_list_is_aligned_columns_one_backup_a_line() -> None:
    never = backup(id="b2", type="database", status="running", size_bytes=0, warning_count=0, description="",
                   verification={"status": "pending", "checked_at": None, "error": None, "checks": []})  # fmt: skip

    lines = plain_lines(list_table([backup(), never]))

    assert lines == [
        "ID                                    CREATED (UTC)        TYPE      STATUS        SIZE  VERIFIED  WARNINGS"
        "  DESCRIPTION",
        f"{ID}  2026-03-01 02:00:00  full      completed  3.0 MiB  failed           2  before the upgrade",
        "b2                                    2026-03-01 02:00:00  database  running          -  -                0",
    ]


def test_a_list_that_leaves_backups_out_says_so() -> None:
    assert list_footer({"backups": [backup()], "total": 1, "offset": 0, "limit": 50}) is None
    assert list_footer({"backups": [backup()], "total": 7, "offset": 0, "limit": 1}) == (
        "1 of 7 backups shown (from 0); see --limit and --offset"
    )


def test_show_gives_the_backup_its_parts_checks_and_warnings() -> None:
    out = io.StringIO()

    emit(show_blocks(backup()), out)

    text = out.getvalue()
    lines = text.splitlines()
    assert f"id            {ID}" in lines
    assert "completed     2026-03-01 02:01:13 (took 1 min 12 s)" in lines
    assert "size          3.0 MiB (3145728 bytes)" in lines
    assert "verification  failed at 2026-03-01 02:05:00 (2 checks): files.archive_digest: damaged" in lines
    assert "parts:" in lines
    assert f"  database  completed  2.0 MiB     12         1  4/4 tables 120 rows 4.9 KiB done  {'a' * 64}" in lines
    assert "  FAILED  files.archive_digest  1.3 s  damaged" in lines
    assert "warnings: 2 paths left out:" in lines
    assert "  files  uploads/run/app.sock  socket" in lines
    assert "\x1b[" not in text, "no terminal codes in a log"


def test_show_on_a_terminal_draws_rich_tables() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()

    emit([Table(["PART", "STATUS"], [["database", "completed [ok]"]], title="parts")], out)

    assert "completed [ok]" in out.getvalue()
    assert "─" in out.getvalue(), "a rich table's rule under the header"


def test_a_backup_never_verified_says_so() -> None:
    pending: dict[str, Any] = {"status": "pending", "checked_at": None, "error": None, "checks": []}
    assert verification_line(backup(verification=pending)) == "never verified"
    assert verification_line(backup(status="failed", verification=pending)) == "-"


def test_a_part_being_waited_for_shows_its_status_counts_and_share() -> None:
    loading = {"phase": "loading", "bytes_done": 10, "bytes_total": 40, "tables_done": 1, "tables_total": 4}
    running = {"part": "database", "status": "running", "error": None, "progress": loading}
    assert part_progress(running) == (
        "database: running loading 25% (10 B of 40 B) 1/4 tables",
        "running/loading",
        (10, 40),
    )
    assert part_progress({"part": "files", "status": "pending", "progress": None, "error": None}) == (
        "files: pending",
        "pending/",
        None,
    )
    assert part_progress({"part": "files", "status": "completed", "progress": {}, "error": None}) == (
        "files: completed",
        "completed/",
        (1, 1),
    )
    failed = {"part": "database", "status": "failed", "progress": None, "error": "Unknown database 'app'"}
    assert part_progress(failed)[0] == "database: failed (Unknown database 'app')"


def test_a_finished_backup_ends_the_wait_with_one_line() -> None:
    assert backup_outcome(backup()) == (
        f"backup {ID} (full) completed in 1 min 12 s: database 2.0 MiB, files 1.0 MiB;"
        f" 2 paths left out (backupctl show {ID})"
    )
    assert backup_outcome(backup(status="failed", error="database part failed: disk full")) == (
        f"backup {ID} failed: database part failed: disk full"
    )

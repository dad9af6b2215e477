"""What `backupctl list`, `show`, `backup` and `verify` print, from the API's records: tables drawn by
rich on a terminal, plain aligned columns elsewhere (for grep, awk and cron's mail). Pure: records in,
text out, so it is tested without a gateway."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table as RichTable

from backup_common.cli.progress import details, human_bytes, share

NONE = "-"


def when(text: str | None) -> str:
    """An API time (ISO 8601) as UTC to the second, as the catalog keeps it."""
    if not text:
        return NONE
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def took(start: str | None, end: str | None) -> str | None:
    """How long from one API time to another, or None when either is missing."""
    if not start or not end:
        return None
    try:
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (ValueError, TypeError):
        return None
    return duration(max(0.0, seconds))


@dataclass
class Table:
    """Rows of text under column names; ``right`` names the columns aligned right (numbers), ``wrap``
    those a narrow terminal may wrap, ``whole`` those it must never shorten (ids); it shortens the
    others with an ellipsis."""

    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    title: str | None = None
    right: frozenset[str] = frozenset()
    wrap: frozenset[str] = frozenset()
    whole: frozenset[str] = frozenset()
    header: bool = True


def plain_lines(table: Table) -> list[str]:
    """The table as aligned columns, two spaces apart, the last one not padded."""
    lines = [f"{table.title}:"] if table.title else []
    rows = ([table.columns] if table.header else []) + table.rows
    if not rows:
        return lines
    widths = [max(len(row[index]) for row in rows) for index in range(len(table.columns))]
    indent = "  " if table.title else ""
    for row in rows:
        cells = []
        for index, (name, cell) in enumerate(zip(table.columns, row, strict=True)):
            if index == len(row) - 1:
                cells.append(cell.rjust(widths[index]) if name in table.right else cell)
            else:
                cells.append(cell.rjust(widths[index]) if name in table.right else cell.ljust(widths[index]))
        lines.append(indent + "  ".join(cells).rstrip())
    return lines


def rich_table(table: Table) -> RichTable:
    drawn = RichTable(
        title=table.title,
        title_justify="left",
        show_header=table.header,
        header_style="bold",
        box=box.SIMPLE_HEAD if table.header else None,
        show_edge=False,
        pad_edge=False,
        collapse_padding=table.header,  # no box between the columns: keep two spaces
    )
    for index, name in enumerate(table.columns):
        drawn.add_column(
            name,
            justify="right" if name in table.right else "left",
            no_wrap=name not in table.wrap,
            overflow="fold" if name in table.wrap else "ellipsis",
            min_width=max((len(row[index]) for row in table.rows), default=0) if name in table.whole else None,
        )
    for row in table.rows:
        drawn.add_row(*row)
    return drawn


def emit(blocks: list[Table | str], stream: TextIO) -> None:
    """Tables and lines: drawn by rich on a terminal, plain elsewhere."""
    if stream.isatty():
        console = Console(file=stream, highlight=False)
        for block in blocks:
            console.print(rich_table(block) if isinstance(block, Table) else block, markup=False)
        return
    for block in blocks:
        for line in plain_lines(block) if isinstance(block, Table) else [block]:
            stream.write(line + "\n")
    stream.flush()


def verification_word(backup: dict[str, Any]) -> str:
    verification = backup.get("verification") or {}
    status = str(verification.get("status") or "pending")
    if status == "pending" and not verification.get("checked_at"):
        return "never" if backup.get("status") == "completed" else NONE
    return status


LIST_COLUMNS = ["ID", "CREATED (UTC)", "TYPE", "STATUS", "SIZE", "VERIFIED", "WARNINGS", "DESCRIPTION"]


def list_table(backups: list[dict[str, Any]]) -> Table:
    rows = [
        [
            backup["id"],
            when(backup.get("created_at")),
            str(backup["type"]),
            str(backup["status"]),
            human_bytes(backup.get("size_bytes") or 0) if backup.get("size_bytes") else NONE,
            verification_word(backup),
            str(backup.get("warning_count") or 0),
            backup.get("description") or "",
        ]
        for backup in backups
    ]
    return Table(
        LIST_COLUMNS,
        rows,
        right=frozenset({"SIZE", "WARNINGS"}),
        wrap=frozenset({"DESCRIPTION"}),
        whole=frozenset({"ID"}),
    )


def list_footer(page: dict[str, Any]) -> str | None:
    """Says when the page does not hold every backup that matched."""
    shown, total, offset = len(page.get("backups", [])), int(page.get("total", 0)), int(page.get("offset", 0))
    if shown >= total and offset == 0:
        return None
    return f"{shown} of {total} backups shown (from {offset}); see --limit and --offset"


def summary_table(backup: dict[str, Any]) -> Table:
    rows = [
        ["id", backup["id"]],
        ["type", str(backup["type"])],
        ["status", str(backup["status"])],
    ]
    if backup.get("error"):
        rows.append(["error", backup["error"]])
    if backup.get("description"):
        rows.append(["description", backup["description"]])
    trigger = str(backup.get("trigger") or NONE)
    if backup.get("schedule"):
        trigger += f" ({backup['schedule']})"
    rows += [
        ["requested by", f"{backup.get('requested_by') or NONE}, {trigger}"],
        ["created", when(backup.get("created_at"))],
        ["started", when(backup.get("started_at"))],
    ]
    completed = when(backup.get("completed_at"))
    elapsed = took(backup.get("started_at"), backup.get("completed_at"))
    rows.append(["completed", f"{completed} (took {elapsed})" if elapsed and completed != NONE else completed])
    rows.append(["size", f"{human_bytes(backup.get('size_bytes') or 0)} ({backup.get('size_bytes') or 0} bytes)"])
    if backup.get("parent_id"):
        rows.append(["incremental on", backup["parent_id"]])
    if backup.get("archive"):
        rows.append(["archive", "yes: kept by the monthly and yearly rules only"])
    if backup.get("erased_at"):
        rows.append(["erased", when(backup["erased_at"])])
    rows.append(["storage", backup.get("storage_path") or NONE])
    rows.append(["verification", verification_line(backup)])
    if backup.get("offsite"):
        rows.append(["off-site", offsite_line(backup["offsite"])])
    rows.append(["warnings", str(backup.get("warning_count") or 0)])
    return Table(["FIELD", "VALUE"], rows, header=False, wrap=frozenset({"VALUE"}))


def verification_line(backup: dict[str, Any]) -> str:
    verification = backup.get("verification") or {}
    word = verification_word(backup)
    if word in ("never", NONE):
        return "never verified" if word == "never" else NONE
    checks = verification.get("checks") or []
    line = f"{word} at {when(verification.get('checked_at'))} ({len(checks)} checks)"
    if verification.get("error"):
        line += f": {verification['error']}"
    return line


def offsite_line(offsite: dict[str, Any]) -> str:
    status = str(offsite.get("status") or NONE)
    if status == "copied":
        line = f"copied at {when(offsite.get('copied_at'))} to {offsite.get('location') or NONE}"
        if offsite.get("local_removed_at"):
            line += f"; local copy removed at {when(offsite['local_removed_at'])}"
        return line
    if status == "failed":
        line = f"failed ({offsite.get('attempts') or 0} attempts; next at {when(offsite.get('next_attempt_at'))})"
        return f"{line}: {offsite.get('error') or NONE}"
    if status == "pending" and offsite.get("bytes_copied"):
        return f"pending: {human_bytes(int(offsite['bytes_copied']))} sent"
    if status == "locked":
        return f"deleted; Object Lock keeps the objects until {when(offsite.get('retain_until'))}"
    return status


PART_COLUMNS = ["PART", "STATUS", "SIZE", "ITEMS", "ATTEMPTS", "PROGRESS", "SHA-256"]


def parts_table(backup: dict[str, Any]) -> Table:
    rows = []
    for part in backup.get("parts", []):
        progress = details(part.get("progress")) or NONE
        if part.get("error"):
            progress = f"error: {part['error']}"
        rows.append(
            [
                str(part["part"]),
                str(part["status"]),
                human_bytes(part.get("size_bytes") or 0),
                str(part.get("item_count") or 0),
                str(part.get("attempts") or 0),
                progress,
                part.get("sha256") or NONE,
            ]
        )
    return Table(
        PART_COLUMNS,
        rows,
        title="parts",
        right=frozenset({"SIZE", "ITEMS", "ATTEMPTS"}),
        wrap=frozenset({"PROGRESS", "SHA-256"}),
    )


def checks_table(backup: dict[str, Any]) -> Table | None:
    checks = (backup.get("verification") or {}).get("checks") or []
    if not checks:
        return None
    rows = [
        [
            "ok" if check.get("ok") else "FAILED",
            str(check["name"]),
            f"{check.get('seconds', 0):.1f} s",
            check.get("detail") or "",
        ]
        for check in checks
    ]
    return Table(
        ["RESULT", "CHECK", "TIME", "DETAIL"],
        rows,
        title="verification checks",
        right=frozenset({"TIME"}),
        wrap=frozenset({"DETAIL"}),
    )


def warnings_table(backup: dict[str, Any]) -> Table | None:
    warnings = backup.get("warnings") or []
    if not warnings:
        return None
    count = int(backup.get("warning_count") or len(warnings))
    title = f"warnings: {count} paths left out"
    if count > len(warnings):
        title += f", the first {len(warnings)} shown"
    rows = [[str(item["part"]), str(item["path"]), str(item["reason"])] for item in warnings]
    return Table(["PART", "PATH", "REASON"], rows, title=title, wrap=frozenset({"PATH", "REASON"}))


def show_blocks(backup: dict[str, Any]) -> list[Table | str]:
    """`backupctl show`: the backup, its parts, its latest verification's checks, its warnings."""
    blocks: list[Table | str] = [summary_table(backup), "", parts_table(backup)]
    for extra in (checks_table(backup), warnings_table(backup)):
        if extra is not None:
            blocks += ["", extra]
    return blocks


def part_progress(part: dict[str, Any]) -> tuple[str, str, tuple[int, int] | None]:
    """A part of a backup or restore being waited for: its line, the phase a change of deserves a
    new plain line, and its share done (full once completed)."""
    status = str(part["status"])
    progress = part.get("progress") or {}
    phase = str(progress.get("phase") or "")
    words = [f"{part['part']}:", status]
    if phase and phase != status and status == "running":
        words.append(phase)
    if status != "pending":
        words.append(details(progress))
    if status == "failed" and part.get("error"):
        words.append(f"({part['error']})")
    done = share(progress)
    if status == "completed":
        done = (done[1], done[1]) if done else (1, 1)
    return " ".join(word for word in words if word), f"{status}/{phase}", done


def backup_outcome(backup: dict[str, Any]) -> str:
    """The line a finished backup ends `backupctl backup --wait` with."""
    if backup["status"] != "completed":
        return f"backup {backup['id']} {backup['status']}: {backup.get('error') or 'no reason recorded'}"
    parts = ", ".join(f"{part['part']} {human_bytes(part.get('size_bytes') or 0)}" for part in backup.get("parts", []))
    elapsed = took(backup.get("started_at"), backup.get("completed_at"))
    line = f"backup {backup['id']} ({backup['type']}) completed" + (f" in {elapsed}" if elapsed else "") + f": {parts}"
    if backup.get("warning_count"):
        line += f"; {backup['warning_count']} paths left out (backupctl show {backup['id']})"
    return line

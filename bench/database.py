"""Database backup benchmark: our engine against mariadb-dump | gzip and mydumper, on the same data and machine.

    .venv/bin/python -m bench.database [--size-mb 520] [--only dump|load|restore|all] [--keep] [--skip-generate]
                                       [--runs N]

Makes sure the generated database exists (bench/datagen.py; reused when its marker matches), then
runs, in this fixed order, each from the same settled state:

  backups: mariadb-dump | gzip -6, mydumper -c, ours (encryption on)
  loads:   gunzip | mariadb, myloader, ours   (each into a new empty database, checked, then dropped)
  restores in place: gunzip | mariadb, ours   (each over a live copy of the database, which is made
           unmeasured first; mariadb-dump's output drops and recreates each table, ours stages the
           tables and swaps them in with one RENAME TABLE; checked, then dropped)
  drill:   ours restore drill (the verification service's: a scratch database, every table's rows
           compared with the dump's digests, then dropped), beside the loads above

Before every measured run InnoDB writes back its dirty pages (so no run pays for the previous one's
writes; this lowers the global innodb_max_dirty_pages_pct to 0 for a few seconds, then restores it),
the file system is synced and, when permitted (root), the OS page cache is dropped: each tool starts
equally cold on the data it reads. Wall time and peak RSS come from bench/measure.py (GNU time per
process; a pipeline's RSS is the sum of its stages).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import datagen
from bench.measure import MIB, gnu_time_available, measure, path_size, which
from bench.run_ours import PASSWORD_VARIABLE
from bench.server import Server, SqlError, check_name

ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = ROOT / "var" / "bench"
SETTLE_TIMEOUT_S = 60.0

TARGETS = (
    # (label, our row, reference row, metric, goal ratio, stretch?)
    ("backup wall", "ours", "mariadb-dump | gzip -6", "wall", 0.7, False),
    ("archive size", "ours", "mariadb-dump | gzip -6", "size", 1.1, False),
    ("load wall", "ours", "gunzip | mariadb", "wall", 0.7, False),
    ("backup wall", "ours", "mydumper -c", "wall", 1.0, True),
    ("load wall", "ours", "myloader", "wall", 1.0, True),
)


@dataclass
class Row:
    tool: str
    command: str = ""
    status: str = "ok"  # "ok", "not available: …", "failed: …" or "wrong data: …"
    wall_seconds: float | None = None
    size_bytes: int | None = None
    peak_rss_bytes: int | None = None
    rss_detail: str = ""
    verified: str = ""
    runs: list[float] = field(default_factory=list)  # wall seconds of every run, when repeated
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Harness:
    """What both benchmarks share: their notes, the same cold start before every run, measured runs."""

    drop_caches: bool
    notes: list[str]

    def settle(self) -> None:
        """The same starting state for every run: earlier writes on disk, the page cache cold."""
        os.sync()
        if self.drop_caches:
            try:
                Path("/proc/sys/vm/drop_caches").write_text("3\n")
            except OSError as exc:
                self._note(f"OS page cache not dropped ({exc.strerror}); runs start with whatever is cached")
                self.drop_caches = False

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            print(f"  note: {text}")

    def measured(
        self,
        tool: str,
        log: Path,
        pipeline: Sequence[Sequence[str]],
        *,
        stdin: Path | None = None,
        stdout: Path | None = None,
        env: dict[str, str] | None = None,
        shown: Callable[[Sequence[str]], str] = shlex.join,
    ) -> Row:
        """Runs ``pipeline`` after :meth:`settle`, its stderr into ``log``; ``shown`` prints each command."""
        command = " | ".join(shown(argv) for argv in pipeline)
        missing = [argv[0] for argv in pipeline if which(argv[0]) is None]
        if missing:
            return Row(tool, command, f"not available: {missing[0]} not on PATH (run bench/setup.sh)")
        self.settle()
        print(f"- {tool}: {command}", flush=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.unlink(missing_ok=True)
        result = measure(pipeline, stdin=stdin, stdout=stdout, env=env, cwd=ROOT, stderr_log=log)
        row = Row(tool, command, wall_seconds=result.wall_seconds, peak_rss_bytes=result.peak_rss_bytes)
        row.rss_detail = result.rss_breakdown()
        if not result.ok:
            row.status = f"failed: {result.describe_failure()} (see {log})"
        print(f"  {_status_line(row)}", flush=True)
        return row


@dataclass
class Bench(Harness):
    server: Server
    database: str
    threads: int
    drop_caches: bool
    verify: str
    notes: list[str] = field(default_factory=list)
    _expected: dict[str, Any] | None = None

    @property
    def gz_path(self) -> Path:
        return WORK_DIR / "mariadb-dump.sql.gz"

    @property
    def mydumper_dir(self) -> Path:
        return WORK_DIR / "mydumper"

    @property
    def ours_path(self) -> Path:
        return WORK_DIR / "ours.archive"

    def log(self, tool: str) -> Path:
        return WORK_DIR / "logs" / (tool.replace(" ", "").replace("|", "_") + ".log")

    def load_target(self, suffix: str) -> str:
        return check_name(f"{self.database}_load_{suffix}"[:64])

    # --- state between runs ---------------------------------------------------------------------

    def settle(self) -> None:
        """The same starting state for every run: InnoDB's dirty pages written back, caches cold."""
        self._flush_innodb()
        super().settle()

    def _flush_innodb(self) -> None:
        """Writes back the pages earlier runs dirtied, so that no run pays for another's writes.

        With innodb_max_dirty_pages_pct_lwm=0 (the default) an idle server does not flush at all, so
        the limit is lowered to 0 for a moment, which makes the page cleaner write everything back,
        and then restored.
        """
        threshold = max(64, self.server.status("Innodb_buffer_pool_pages_total") // 200)
        if self.server.status("Innodb_buffer_pool_pages_dirty") <= threshold:
            return
        original = self.server.variable("innodb_max_dirty_pages_pct")
        try:
            self.server.execute("SET GLOBAL innodb_max_dirty_pages_pct = 0")
        except SqlError as exc:
            self._note(f"InnoDB dirty pages not flushed between runs ({exc})")
            return
        try:
            started = time.monotonic()
            while self.server.status("Innodb_buffer_pool_pages_dirty") > threshold:
                if time.monotonic() - started > SETTLE_TIMEOUT_S:
                    self._note(f"InnoDB still had dirty pages after {SETTLE_TIMEOUT_S:.0f} s (other writers?)")
                    break
                time.sleep(0.5)
        finally:
            self.server.execute(f"SET GLOBAL innodb_max_dirty_pages_pct = {float(original)}")

    # --- measuring ------------------------------------------------------------------------------

    def run(
        self,
        tool: str,
        pipeline: Sequence[Sequence[str]],
        *,
        stdin: Path | None = None,
        stdout: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Row:
        return self.measured(tool, self.log(tool), pipeline, stdin=stdin, stdout=stdout, env=env, shown=_shown)

    # --- backups --------------------------------------------------------------------------------

    def dump_mariadb(self) -> Row:
        self.gz_path.unlink(missing_ok=True)
        row = self.run(
            "mariadb-dump | gzip -6", [self.server.dump_command(self.database), ["gzip", "-6"]], stdout=self.gz_path
        )
        return self._with_size(row, self.gz_path)

    def dump_mydumper(self) -> Row:
        shutil.rmtree(self.mydumper_dir, ignore_errors=True)
        # -G -E -R: triggers, events and routines, as mariadb-dump is asked for; -c compresses with gzip.
        argv = ["mydumper", *self.server.connection_flags(short=True), "-B", self.database]
        argv += ["-o", str(self.mydumper_dir), "-c", "-t", str(self.threads), "-G", "-E", "-R"]
        row = self.run("mydumper -c", [argv])
        return self._with_size(row, self.mydumper_dir)

    def dump_ours(self) -> Row:
        self.ours_path.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "bench.run_ours", "dump", "--mysql-url", self.server.url(self.database)]
        argv += ["--out", str(self.ours_path), "--parallelism", str(self.threads)]
        report = WORK_DIR / "logs" / "ours-dump.json"
        report.parent.mkdir(parents=True, exist_ok=True)
        row = self.run("ours", [argv], stdout=report, env=self._ours_env())
        row.detail = _read_json(report)
        return self._with_size(row, self.ours_path)

    def _with_size(self, row: Row, path: Path) -> Row:
        if row.ok:
            row.size_bytes = path_size(path)
        return row

    # --- loads ----------------------------------------------------------------------------------

    def load_mariadb(self) -> Row:
        return self._load(
            "gunzip | mariadb",
            "mariadb",
            self.gz_path,
            lambda target: [["gzip", "-dc"], self.server.client(target)],
            stdin=self.gz_path,
        )

    def load_myloader(self) -> Row:
        def command(target: str) -> list[list[str]]:
            argv = ["myloader", *self.server.connection_flags(short=True), "-d", str(self.mydumper_dir)]
            return [[*argv, "-B", target, "-t", str(self.threads), "-o"]]

        return self._load("myloader", "myloader", self.mydumper_dir, command)

    def load_ours(self) -> Row:
        def command(target: str) -> list[list[str]]:
            argv = [sys.executable, "-m", "bench.run_ours", "load", "--archive", str(self.ours_path)]
            return [[*argv, "--mysql-url", self.server.url(target), "--parallelism", str(self.threads)]]

        return self._load("ours", "ours", self.ours_path, command, env=self._ours_env())

    def _load(
        self,
        tool: str,
        suffix: str,
        source: Path,
        command: Callable[[str], list[list[str]]],
        *,
        stdin: Path | None = None,
        env: dict[str, str] | None = None,
        live: bool = False,
    ) -> Row:
        """Measures ``command`` loading into a new empty database or, ``live``, restoring over a copy of
        the database made (unmeasured) from the mariadb-dump backup first; checks the result."""
        for needed in (source, self.gz_path) if live else (source,):
            if not needed.exists():
                hint = "its backup failed; for --only load or restore, run --only dump --keep first"
                return Row(tool, status=f"not available: no backup at {needed.relative_to(ROOT)} ({hint})")
        target = self.load_target(suffix)
        # Every loader gets the same empty database: loaders differ in whether they create one.
        self.server.create_empty_database(target)
        try:
            if live:
                prepared = measure([["gzip", "-dc"], self.server.client(target)], stdin=self.gz_path, cwd=ROOT)
                if not prepared.ok:
                    return Row(tool, status=f"failed: the live copy could not be made: {prepared.describe_failure()}")
            report = WORK_DIR / "logs" / f"{suffix}-load.out"
            row = self.run(tool, command(target), stdin=stdin, stdout=report, env=env)
            if suffix.endswith("ours"):
                row.detail = _read_json(report)
            if row.ok:
                row.verified = self.check(target)
                if row.verified != "identical":
                    row.status = f"wrong data: {row.verified}"
        finally:
            self.server.drop_database(target)
        return row

    def drill_ours(self) -> Row:
        if not self.ours_path.exists():
            return Row("ours restore drill", status=f"not available: no backup at {self.ours_path.relative_to(ROOT)}")
        argv = [sys.executable, "-m", "bench.run_ours", "drill", "--archive", str(self.ours_path)]
        argv += ["--mysql-url", self.server.url(self.database), "--parallelism", str(self.threads)]
        report = WORK_DIR / "logs" / "ours-drill.out"
        row = self.run("ours restore drill", [argv], stdout=report, env=self._ours_env())
        row.detail = _read_json(report)
        if row.ok:
            row.verified = "identical (digests)"
        return row

    # --- restores in place ----------------------------------------------------------------------

    def restore_mariadb(self) -> Row:
        return self._load(
            "gunzip | mariadb (in place)",
            "inplace_mariadb",
            self.gz_path,
            lambda target: [["gzip", "-dc"], self.server.client(target)],
            stdin=self.gz_path,
            live=True,
        )

    def restore_ours(self) -> Row:
        def command(target: str) -> list[list[str]]:
            argv = [sys.executable, "-m", "bench.run_ours", "restore", "--archive", str(self.ours_path)]
            return [[*argv, "--mysql-url", self.server.url(target), "--parallelism", str(self.threads)]]

        return self._load("ours (in place)", "inplace_ours", self.ours_path, command, env=self._ours_env(), live=True)

    def expected(self) -> dict[str, Any]:
        """What every load must reproduce, read once from the source (outside any measurement)."""
        if self._expected is None:
            self._expected = self._describe(self.database)
        return self._expected

    def _describe(self, database: str) -> dict[str, Any]:
        described: dict[str, Any] = {"rows": self.server.row_counts(database)}
        described["objects"] = self.server.object_counts(database)
        if self.verify == "checksum":
            described["checksums"] = self.server.checksums(database)
        return described

    def check(self, target: str) -> str:
        if self.verify == "none":
            return "not checked"
        expected, actual = self.expected(), self._describe(target)
        problems = []
        for part, values in expected.items():
            for name, value in values.items():
                got = actual[part].get(name)
                if got != value:
                    problems.append(f"{part} {name}: {got} != {value}")
        return "; ".join(problems[:4]) if problems else "identical"

    def _ours_env(self) -> dict[str, str]:
        return {**os.environ, PASSWORD_VARIABLE: os.environ.get(PASSWORD_VARIABLE, "bench-archive-password")}


def _shown(argv: Sequence[str]) -> str:
    return shlex.join(_redact(argv))


def _redact(argv: Sequence[str]) -> list[str]:
    """The command as printed: passwords (flags or URLs) masked."""
    shown = []
    for index, arg in enumerate(argv):
        if index > 0 and argv[index - 1] == "-p":
            arg = "***"
        arg = re.sub(r"^--password=.*", "--password=***", arg)
        shown.append(re.sub(r"^(mysql://[^:@/]*):[^@]*@", r"\1:***@", arg))
    return shown


def _read_json(path: Path) -> dict[str, Any]:
    try:
        lines = path.read_text().strip().splitlines()
        value = json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _status_line(row: Row) -> str:
    if not row.ok and row.wall_seconds is None:
        return row.status
    parts = [f"{row.wall_seconds:.1f} s", f"peak RSS {_mib(row.peak_rss_bytes)} MiB"]
    return ", ".join(parts) + ("" if row.ok else f" -- {_short(row.status)}")


def _short(text: str, limit: int = 160) -> str:
    """Keeps the tables readable; results.json and the logs have the whole message."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:.1f}"


def _repeat(runs: int, tools: Sequence[Callable[[], Row]]) -> list[Row]:
    """Runs the tools round-robin ``runs`` times (so drift in the machine's load hits all alike)."""
    results: list[list[Row]] = [[] for _ in tools]
    for round_number in range(runs):
        if runs > 1:
            print(f"round {round_number + 1} of {runs}")
        for index, tool in enumerate(tools):
            results[index].append(tool())
    return [_median(rows) for rows in results]


def _median(rows: list[Row]) -> Row:
    """The median run by wall time, with its own size and RSS; the first failure if any run failed."""
    failed = [row for row in rows if not row.ok]
    if failed or len(rows) == 1:
        return failed[0] if failed else rows[0]
    ordered = sorted(rows, key=lambda row: row.wall_seconds or 0.0)
    chosen = ordered[(len(ordered) - 1) // 2]
    chosen.runs = [row.wall_seconds or 0.0 for row in rows]
    return chosen


def _spread(row: Row) -> str:
    if len(row.runs) < 2:
        return ""
    return f"median of {len(row.runs)}, {min(row.runs):.1f}-{max(row.runs):.1f} s"


def _rss(row: Row) -> str:
    return f"RSS = {row.rss_detail}" if row.rss_detail else ""


def _notes(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


# --- report ---------------------------------------------------------------------------------------


def print_report(
    backups: list[Row], loads: list[Row], header: str, notes: list[str], restores: Sequence[Row] = ()
) -> None:
    print()
    print(header)
    if backups:
        print()
        print(f"{'backup':<26} {'wall s':>8} {'archive MiB':>12} {'peak RSS MiB':>13}  note")
        for row in backups:
            if row.wall_seconds is None:
                print(f"{row.tool:<26} {_short(row.status)}")
                continue
            wall, size, rss = f"{row.wall_seconds:.1f}", _mib(row.size_bytes), _mib(row.peak_rss_bytes)
            note = _short(row.status) if not row.ok else _notes(_spread(row), _rss(row))
            print(f"{row.tool:<26} {wall:>8} {size:>12} {rss:>13}  {note}")
    for title, measured in (("load", loads), ("restore in place", restores)):
        if not measured:
            continue
        print()
        print(f"{title:<26} {'wall s':>8} {'peak RSS MiB':>13}  note")
        for row in measured:
            if row.wall_seconds is None:
                print(f"{row.tool:<26} {_short(row.status)}")
                continue
            note = _short(row.status) if not row.ok else _notes(_spread(row), f"data {row.verified}", _rss(row))
            print(f"{row.tool:<26} {row.wall_seconds:>8.1f} {_mib(row.peak_rss_bytes):>13}  {note}")
    rows = {("backup", row.tool): row for row in backups} | {("load", row.tool): row for row in loads}
    lines = []
    for label, ours, reference, metric, goal, stretch in TARGETS:
        kind = "load" if label.startswith("load") else "backup"
        mine, theirs = rows.get((kind, ours)), rows.get((kind, reference))
        if mine is None or theirs is None:
            continue
        name = f"{'stretch: ' if stretch else ''}{label}: ours / {reference}"
        bound = f"< {goal:.2f}" if stretch else f"<= {goal:.2f}"
        ratio = ratio_of(mine, theirs, metric)
        if ratio is None:
            reason = mine.status if not mine.ok else theirs.status
            lines.append(f"{name:<50} {'-':>6}  {bound:<7}  n/a ({reason[:70]})")
            continue
        met = ratio < goal if stretch else ratio <= goal
        lines.append(f"{name:<50} {ratio:>6.3f}  {bound:<7}  {'met' if met else 'missed'}")
    if lines:
        print()
        print(f"{'target':<50} {'ratio':>6}  {'goal':<7}  result")
        print("\n".join(lines))
    for note in notes:
        print(f"note: {note}")


def ratio_of(mine: Row, theirs: Row, metric: str) -> float | None:
    """Ours over theirs, by wall time or by size; None when either run failed."""
    if not (mine.ok and theirs.ok):
        return None
    pair = (mine.wall_seconds, theirs.wall_seconds) if metric == "wall" else (mine.size_bytes, theirs.size_bytes)
    if pair[0] is None or not pair[1]:
        return None
    return pair[0] / pair[1]


# --- main -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.database",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join((__doc__ or "").splitlines()[1:]),
    )
    parser.add_argument(
        "--mysql-url", default=os.environ.get("BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/backup_bench")
    )
    parser.add_argument("--database", help="generated database name (default: the URL's, backup_bench)")
    parser.add_argument("--size-mb", type=int, default=520, help="MiB of SQL text to generate (default 520)")
    parser.add_argument("--only", choices=("dump", "load", "restore", "all"), default="all")
    parser.add_argument("--keep", action="store_true", help="keep the backups under var/bench/ (needed by --only load)")
    parser.add_argument("--skip-generate", action="store_true", help="use the database as it is, without generating")
    parser.add_argument("--threads", type=int, default=2, help="mydumper/myloader threads and our parallelism")
    parser.add_argument("--runs", type=int, default=1, help="repeat each measurement, report the median")
    parser.add_argument("--verify", choices=("checksum", "counts", "none"), default="checksum", help="check each load")
    parser.add_argument("--no-drop-caches", action="store_true", help="leave the OS page cache alone between runs")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.threads < 1 or args.size_mb < 1:
        parser.error("--runs, --threads and --size-mb must be at least 1")

    server = Server.from_url(args.mysql_url)
    database = check_name(args.database or Server.target_database(args.mysql_url))
    if not gnu_time_available():
        raise SystemExit("/usr/bin/time (GNU time) is missing: run bench/setup.sh")
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    try:
        version = server.version()
    except SqlError as exc:
        raise SystemExit(f"cannot reach MariaDB at {server.host}:{server.port}: {exc}") from None

    if args.skip_generate:
        if not server.database_exists(database):
            raise SystemExit(f"--skip-generate: database {database} does not exist")
        marker = datagen.read_marker(server, database)
        sql_bytes = marker[2] if marker else None
    else:
        sql_bytes = datagen.ensure_dataset(server, database, args.size_mb).sql_bytes
    bench = Bench(server, database, args.threads, not args.no_drop_caches, args.verify)
    size = f"{sql_bytes / MIB:.1f} MiB of SQL" if sql_bytes else "SQL size unknown (no marker)"
    order = "runs in the order listed" + (f", round-robin x{args.runs}" if args.runs > 1 else "")
    cold = " and the page cache was dropped" if bench.drop_caches else ""
    header = (
        f"database {database}: {size}; MariaDB {version}, {os.cpu_count()} CPUs, "
        f"InnoDB buffer pool {int(server.variable('innodb_buffer_pool_size')) // MIB} MiB, {args.threads} threads; "
        f"{order}, each after InnoDB settled{cold}"
    )
    print(header, flush=True)

    backups: list[Row] = []
    loads: list[Row] = []
    restores: list[Row] = []
    try:
        if args.only in ("dump", "all"):
            print("backups:")
            backups = _repeat(args.runs, [bench.dump_mariadb, bench.dump_mydumper, bench.dump_ours])
        if args.only in ("load", "all"):
            print(f"loads (checked: {args.verify}):")
            if args.verify != "none":
                bench.expected()
            loads = _repeat(args.runs, [bench.load_mariadb, bench.load_myloader, bench.load_ours])
        if args.only in ("restore", "all"):
            print(f"restores in place (checked: {args.verify}):")
            if args.verify != "none":
                bench.expected()
            restores = _repeat(args.runs, [bench.restore_mariadb, bench.restore_ours, bench.drill_ours])
    finally:
        # Only what this invocation wrote: --only load and --only restore leave the backups they were given.
        if not args.keep and args.only not in ("load", "restore"):
            bench.gz_path.unlink(missing_ok=True)
            shutil.rmtree(bench.mydumper_dir, ignore_errors=True)
            bench.ours_path.unlink(missing_ok=True)
    print_report(backups, loads, header, bench.notes, restores)
    results = {
        "header": header,
        "sql_bytes": sql_bytes,
        "backups": [asdict(row) for row in backups],
        "loads": [asdict(row) for row in loads],
        "restores": [asdict(row) for row in restores],
        "notes": bench.notes,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (WORK_DIR / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"results: {(WORK_DIR / 'results.json').relative_to(ROOT)}; logs: {(WORK_DIR / 'logs').relative_to(ROOT)}/")
    return 1 if any(not row.ok for row in backups + loads + restores) else 0


if __name__ == "__main__":
    sys.exit(main())

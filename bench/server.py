"""The MariaDB server the benchmark runs against, reached through the ``mariadb`` command-line client.

The harness's own SQL goes through the same client the reference tools use, so the benchmark needs
no extra Python driver and its bookkeeping cannot be skewed by one.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from urllib.parse import quote

from backup_common.engine.database.target import MysqlTarget

_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
# Mirrors what the reference dump is run with, so the measured "SQL size" is that command's output.
MARIADB_DUMP_FLAGS = ("--single-transaction", "--routines", "--triggers", "--events", "--hex-blob")


class SqlError(Exception):
    pass


def check_name(name: str) -> str:
    """Database names are spliced into SQL and file names, so only plain identifiers are accepted."""
    if not _NAME.match(name):
        raise ValueError(f"database name {name!r}: use letters, digits and '_' only (at most 64)")
    return name


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    user: str
    password: str

    @classmethod
    def from_url(cls, url: str) -> Server:
        target = MysqlTarget(url)
        return cls(target.host, target.port, target.user, target.password)

    @staticmethod
    def target_database(url: str) -> str:
        return check_name(MysqlTarget(url).database)

    def url(self, database: str) -> str:
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        return f"mysql://{auth}@{self.host}:{self.port}/{quote(database, safe='')}"

    def target(self, database: str) -> MysqlTarget:
        return MysqlTarget(self.url(database))

    def connection_flags(self, *, short: bool = False) -> list[str]:
        """Host, port, user (and password) flags; ``short`` spells them as mydumper/myloader 0.10 take them."""
        if short:
            flags = ["-h", self.host, "-P", str(self.port), "-u", self.user]
            # On the command line, visible to `ps`: acceptable for a benchmark account, and the same for every tool.
            return flags + (["-p", self.password] if self.password else [])
        flags = [f"--host={self.host}", f"--port={self.port}", f"--user={self.user}"]
        return flags + ([f"--password={self.password}"] if self.password else [])

    def client(self, database: str | None = None, *extra: str) -> list[str]:
        argv = ["mariadb", *self.connection_flags(), "--default-character-set=utf8mb4", *extra]
        return argv + ([database] if database else [])

    def dump_command(self, database: str) -> list[str]:
        return ["mariadb-dump", *self.connection_flags(), *MARIADB_DUMP_FLAGS, database]

    def query(self, sql: str, database: str | None = None) -> list[list[str]]:
        """Rows of tab-separated text (``NULL`` for NULL); fine for the counters and names the harness reads."""
        result = subprocess.run(  # noqa: S603 -- fixed client argv, SQL passed as one argument
            self.client(database, "--batch", "--skip-column-names", "-e", sql),
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise SqlError(f"{sql[:200]}: {result.stderr.decode('utf-8', 'replace').strip()}")
        text = result.stdout.decode("utf-8", "replace")
        return [line.split("\t") for line in text.splitlines()]

    def execute(self, sql: str, database: str | None = None) -> None:
        self.query(sql, database)

    def scalar(self, sql: str, database: str | None = None) -> str | None:
        rows = self.query(sql, database)
        return rows[0][0] if rows and rows[0] else None

    def version(self) -> str:
        return self.scalar("SELECT VERSION()") or "unknown"

    def database_exists(self, name: str) -> bool:
        return bool(self.query(f"SHOW DATABASES LIKE '{check_name(name)}'"))

    def create_empty_database(self, name: str) -> None:
        check_name(name)
        self.execute(f"DROP DATABASE IF EXISTS `{name}`")
        self.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")

    def drop_database(self, name: str) -> None:
        self.execute(f"DROP DATABASE IF EXISTS `{check_name(name)}`")

    def tables(self, database: str) -> list[str]:
        rows = self.query(
            "SELECT table_name FROM information_schema.tables "
            f"WHERE table_schema = '{check_name(database)}' AND table_type = 'BASE TABLE' ORDER BY table_name"
        )
        return [row[0] for row in rows]

    def row_counts(self, database: str) -> dict[str, int]:
        """Exact counts (information_schema's are estimates for InnoDB)."""
        tables = self.tables(database)
        if not tables:
            return {}
        sql = " UNION ALL ".join(f"SELECT '{name}', COUNT(*) FROM `{database}`.`{name}`" for name in tables)
        return {name: int(count) for name, count in self.query(sql)}

    def checksums(self, database: str) -> dict[str, str]:
        """CHECKSUM TABLE of every table: equal data and definitions give equal sums on one server."""
        tables = self.tables(database)
        if not tables:
            return {}
        rows = self.query("CHECKSUM TABLE " + ", ".join(f"`{database}`.`{name}`" for name in tables))
        return {name.split(".", 1)[1]: value for name, value in rows}

    def object_counts(self, database: str) -> dict[str, int]:
        """Views, routines, triggers and events: what --routines --triggers --events must carry over."""
        schema = check_name(database)
        sql = (
            f"SELECT 'views', COUNT(*) FROM information_schema.views WHERE table_schema = '{schema}' UNION ALL "
            f"SELECT 'routines', COUNT(*) FROM information_schema.routines WHERE routine_schema = '{schema}' "
            "UNION ALL "
            f"SELECT 'triggers', COUNT(*) FROM information_schema.triggers WHERE trigger_schema = '{schema}' "
            "UNION ALL "
            f"SELECT 'events', COUNT(*) FROM information_schema.events WHERE event_schema = '{schema}'"
        )
        return {name: int(count) for name, count in self.query(sql)}

    def status(self, name: str) -> int:
        rows = self.query(f"SHOW GLOBAL STATUS LIKE '{name}'")
        return int(rows[0][1]) if rows else 0

    def variable(self, name: str) -> str:
        rows = self.query(f"SHOW GLOBAL VARIABLES LIKE '{name}'")
        return rows[0][1] if rows else ""

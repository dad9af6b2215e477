"""Catalog migrations: the files in infra/mysql/ load in order and split into clean statements."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from backup_common.adapters.mysql.migrations import Migration, load_migrations
from backup_common.paths import MIGRATIONS_DIR

NAME = re.compile(r"^\d{4}_[a-z0-9_]+\.sql$")


def first_migration() -> Migration:
    return next(m for m in load_migrations() if m.name == "0001_catalog.sql")


def test_the_real_migrations_load_in_strictly_increasing_version_order() -> None:
    migrations = load_migrations()

    versions = [m.version for m in migrations]
    assert migrations, f"no migration in {MIGRATIONS_DIR}"
    assert versions[0] == 1
    assert all(a < b for a, b in itertools.pairwise(versions)), versions


def test_every_real_migration_is_named_after_its_version() -> None:
    for migration in load_migrations():
        assert NAME.match(migration.name), migration.name
        assert int(migration.name[:4]) == migration.version
        assert migration.sql == (MIGRATIONS_DIR / migration.name).read_text()


def test_every_sql_file_in_the_directory_is_a_loaded_migration() -> None:
    on_disk = sorted(path.name for path in MIGRATIONS_DIR.glob("*.sql"))

    assert [m.name for m in load_migrations()] == on_disk


def test_the_catalog_migration_splits_into_one_statement_per_create() -> None:
    migration = first_migration()
    creates = len(re.findall(r"^CREATE\b", migration.sql, flags=re.M))

    statements = migration.statements()

    assert creates == 12
    assert len(statements) == creates
    assert all(statement.startswith("CREATE ") for statement in statements)


def test_no_catalog_statement_is_empty_or_keeps_its_terminating_semicolon() -> None:
    for statement in first_migration().statements():
        assert statement.strip()
        assert statement == statement.strip()
        assert not statement.endswith(";"), statement[-80:]
        assert not re.search(r";\s*$", statement, flags=re.M), statement[:80]


def test_no_catalog_statement_contains_a_comment_line() -> None:
    for statement in first_migration().statements():
        assert not any(line.lstrip().startswith("--") for line in statement.splitlines()), statement[:80]


def test_every_catalog_table_is_created_idempotently() -> None:
    statements = first_migration().statements()
    tables = [re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", s) for s in statements if s.startswith("CREATE TABLE")]

    assert all(tables), "every CREATE TABLE must say IF NOT EXISTS so an interrupted run can be finished"
    assert {m.group(1) for m in tables if m} >= {
        "backups",
        "backup_parts",
        "restores",
        "settings",
        "schedules",
        "audit_log",
        "outbox",
        "processed_messages",
        "job_leases",
        "data_keys",
    }
    assert all(s.startswith("CREATE TRIGGER IF NOT EXISTS") for s in statements if s.startswith("CREATE TRIGGER"))


def test_the_audit_log_triggers_are_whole_statements() -> None:
    triggers = [s for s in first_migration().statements() if s.startswith("CREATE TRIGGER")]

    assert len(triggers) == 2
    assert all("SIGNAL SQLSTATE '45000'" in trigger for trigger in triggers)
    assert {trigger.split()[7] for trigger in triggers} == {"UPDATE", "DELETE"}


def test_statements_split_on_semicolons_at_line_ends_and_skip_comments() -> None:
    sql = (
        "-- a leading comment; with a semicolon;\n"
        "CREATE TABLE a (\n    id INT -- inline; not a terminator\n);\n"
        "\n"
        "   -- an indented comment\n"
        "INSERT INTO a VALUES (1);   \n"
        ";\n"
        "SELECT 'x;y' FROM a"
    )

    statements = Migration(9, "0009_test.sql", sql).statements()

    assert statements == [
        "CREATE TABLE a (\n    id INT -- inline; not a terminator\n)",
        "INSERT INTO a VALUES (1)",
        "SELECT 'x;y' FROM a",
    ]


def test_the_checksum_changes_with_the_sql() -> None:
    one = Migration(1, "0001_a.sql", "CREATE TABLE a (id INT);")
    same = Migration(1, "0001_a.sql", "CREATE TABLE a (id INT);")
    other = Migration(1, "0001_a.sql", "CREATE TABLE a (id BIGINT);")

    assert one.checksum == same.checksum
    assert one.checksum != other.checksum
    assert re.fullmatch(r"[0-9a-f]{64}", one.checksum)


def test_migrations_in_a_directory_are_loaded_in_version_order(tmp_path: Path) -> None:
    (tmp_path / "0002_second.sql").write_text("CREATE TABLE b (id INT);\n")
    (tmp_path / "0010_tenth.sql").write_text("CREATE TABLE c (id INT);\n")
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE a (id INT);\n")
    (tmp_path / "README.md").write_text("not a migration")

    migrations = load_migrations(tmp_path)

    assert [(m.version, m.name) for m in migrations] == [
        (1, "0001_first.sql"),
        (2, "0002_second.sql"),
        (10, "0010_tenth.sql"),
    ]
    assert migrations[0].statements() == ["CREATE TABLE a (id INT)"]


def test_an_empty_directory_has_no_migrations(tmp_path: Path) -> None:
    assert load_migrations(tmp_path) == []


@pytest.mark.parametrize(
    "name", ["1_init.sql", "0001-init.sql", "0001_Init.sql", "init.sql", "00001_init.sql", "0001_.sql", "0001_a b.sql"]
)
def test_a_badly_named_migration_file_is_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "0001_first.sql").write_text("SELECT 1;\n")
    (tmp_path / name).write_text("SELECT 1;\n")

    with pytest.raises(ValueError, match=r"named NNNN_name\.sql"):
        load_migrations(tmp_path)


def test_two_migrations_with_one_version_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_catalog.sql").write_text("CREATE TABLE a (id INT);\n")
    (tmp_path / "0001_other.sql").write_text("CREATE TABLE b (id INT);\n")

    with pytest.raises(ValueError, match="share a version"):
        load_migrations(tmp_path)

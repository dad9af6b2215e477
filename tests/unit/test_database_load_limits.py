"""What the database loader and restore decide without a server: the restore limits an archive must
keep, statements read from a stream exactly as from memory, damaged members named in the error, and
the reading of the dump's CREATE statements the restore relies on (object names, trigger tables,
foreign keys moved through a staging database)."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import pytest

from backup_common.domain.documents import RestoreLimits
from backup_common.engine.archive import ArchiveReader, ArchiveWriter, MemberInfo
from backup_common.engine.database.load import (
    MemberUnreadable,
    authenticate_member,
    limits_breach,
    read_member,
    split_statements,
    statements_of,
    stream_lines,
)
from backup_common.engine.database.restore import parse_object, stage_foreign_keys

PASSWORD = "unit-test-password"


def member(name: str, size: int, compressed: int) -> MemberInfo:
    return MemberInfo(name, size, compressed, compressed=True, encrypted=False, mode=0o600, mtime=0.0)


# --- limits ----------------------------------------------------------------------------------------


def test_an_archive_within_the_limits_passes() -> None:
    infos = [member("0-database.sql", 200, 150), member("2-data/0001-t.000000.sql", 50_000, 5_000)]

    assert limits_breach(infos, RestoreLimits()) is None
    assert limits_breach(infos, RestoreLimits(max_total_bytes=50_200, max_entries=2, max_compression_ratio=10)) is None


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        (RestoreLimits(max_entries=1), "the archive holds 2 members, more than the limit of 1 entries"),
        (
            RestoreLimits(max_total_bytes=50_000),
            "member '2-data/0001-t.000000.sql' takes the archive to 50200 bytes, over the limit of 50000 bytes",
        ),
        (
            RestoreLimits(max_compression_ratio=9),
            "member '2-data/0001-t.000000.sql' is refused: it expands 50000 bytes from 5000 (ratio 10),"
            " over the compression ratio limit of 9",
        ),
    ],
)
def test_each_limit_is_reported_in_the_words_of_a_files_restore(limits: RestoreLimits, expected: str) -> None:
    infos = [member("0-database.sql", 200, 150), member("2-data/0001-t.000000.sql", 50_000, 5_000)]

    assert limits_breach(infos, limits) == expected


def test_a_small_member_is_not_judged_by_its_ratio_but_a_large_one_that_claims_bytes_from_nothing_is() -> None:
    assert limits_breach([member("0-database.sql", 1000, 1)], RestoreLimits(max_compression_ratio=2)) is None
    assert "ratio inf" in (limits_breach([member("big.sql", 1 << 30, 0)], RestoreLimits()) or "")


def test_a_member_listed_twice_is_refused() -> None:
    infos = [member("1-tables/0001-t.sql", 10, 10), member("1-tables/0001-t.sql", 10, 10)]

    assert limits_breach(infos, RestoreLimits()) == "member '1-tables/0001-t.sql' appears twice in the archive"


# --- statements ------------------------------------------------------------------------------------

MEMBER = (
    b"/* header */\n"
    b"SET NAMES utf8mb4;\n"
    b"\n"
    b"INSERT INTO `t` (`a`) VALUES ('x;y'),('z');\n"
    b"DELIMITER ;;\n"
    b"CREATE PROCEDURE p()\nBEGIN\n  SELECT 1;\n  SELECT 2;\nEND;;\n"
    b"DELIMITER ;\n"
    b"SET NAMES utf8mb4;\n"
    b"SELECT 'no newline at the end'"
)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 20])
def test_statements_read_from_a_stream_in_any_chunk_size_are_those_of_the_member_in_memory(chunk: int) -> None:
    expected = list(split_statements(MEMBER))

    streamed = list(statements_of(stream_lines(io.BytesIO(MEMBER), chunk)))

    assert streamed == expected
    assert expected[-3:] == [
        b"CREATE PROCEDURE p()\nBEGIN\n  SELECT 1;\n  SELECT 2;\nEND",
        b"SET NAMES utf8mb4",
        b"SELECT 'no newline at the end'",
    ]


def test_lines_of_a_stream_keep_empty_lines_and_a_last_line_without_newline() -> None:
    assert list(stream_lines(io.BytesIO(b"a\n\nbc\nd"), 2)) == [b"a", b"", b"bc", b"d"]
    assert list(stream_lines(io.BytesIO(b"a\n"), 1)) == [b"a"]
    assert list(stream_lines(io.BytesIO(b""), 4)) == []


# --- damaged members -------------------------------------------------------------------------------


def tampered_archive(path: Path) -> Path:
    text = b"".join(b"INSERT INTO `t` VALUES (%d);\n" % row for row in range(20_000))
    with ArchiveWriter(path, password=PASSWORD) as writer:
        writer.write_member("2-data/0001-t.000000.sql", text)
        writer.commit()
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    return path


def test_a_member_that_fails_authentication_is_named_and_nothing_of_it_is_returned(tmp_path: Path) -> None:
    path = tampered_archive(tmp_path / "tampered.zip")

    with ArchiveReader(path, password=PASSWORD) as reader:
        for read in (read_member, authenticate_member):
            with pytest.raises(
                MemberUnreadable,
                match=r"^member 2-data/0001-t\.000000\.sql failed authentication: the archive is damaged or the key",
            ):
                read(reader, "2-data/0001-t.000000.sql")


def test_a_wrong_password_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "sealed.zip"
    with ArchiveWriter(path, password=PASSWORD) as writer:
        writer.write_member("0-database.sql", b"SET NAMES utf8mb4;\n")
        writer.commit()

    for password in ("not it", None):
        with ArchiveReader(path, password=password) as reader, pytest.raises(MemberUnreadable, match="password"):
            read_member(reader, "0-database.sql")


# --- the dump's CREATE statements ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (b"SET SESSION sql_mode = ''", None),
        (b"CREATE DEFINER=`root`@`localhost` PROCEDURE `p`()\nBEGIN SELECT 1; END", ("PROCEDURE", "p", None)),
        (b"CREATE FUNCTION `f;n`(a INT) RETURNS int RETURN a", ("FUNCTION", "f;n", None)),
        (b"CREATE DEFINER=`r`@`%` AGGREGATE FUNCTION agg(x INT) RETURNS INT BEGIN END", ("FUNCTION", "agg", None)),
        (
            b"CREATE ALGORITHM=UNDEFINED DEFINER=`a``b`@`%` SQL SECURITY INVOKER VIEW `odd view \xc3\xbc.name`"
            b" AS select 1",
            ("VIEW", "odd view \u00fc.name", None),
        ),
        (b"CREATE DEFINER=`admin_role` EVENT `e` ON SCHEDULE EVERY 1 DAY DO SELECT 1", ("EVENT", "e", None)),
        (b"CREATE DEFINER=CURRENT_USER EVENT e2 ON SCHEDULE EVERY 1 DAY DO SELECT 1", ("EVENT", "e2", None)),
        (
            b"CREATE DEFINER=`root`@`localhost` TRIGGER order_before_insert BEFORE INSERT ON `order` FOR EACH ROW\n"
            b"SET NEW.a = 1",
            ("TRIGGER", "order_before_insert", "order"),
        ),
        (
            b"create definer='u'@'h' trigger `t``1` after update on app.`odd ``t``` for each row set @x = 1",
            ("TRIGGER", "t`1", "odd `t`"),
        ),
        (b"CREATE TRIGGER tr BEFORE INSERT OR UPDATE ON plain FOR EACH ROW SET @x = 1", ("TRIGGER", "tr", "plain")),
    ],
)
def test_the_object_a_dump_statement_creates_is_read_from_it(
    statement: bytes, expected: tuple[str, str, str | None] | None
) -> None:
    found = parse_object(statement)

    assert (None if found is None else (found.kind, found.name, found.table)) == expected


def test_a_create_statement_that_cannot_be_read_is_an_error_not_a_guess() -> None:
    with pytest.raises(ValueError, match="cannot tell"):
        parse_object(b"CREATE SOMETHING odd")
    with pytest.raises(ValueError, match="which table trigger tr is on"):
        parse_object(b"CREATE TRIGGER tr FOLLOWING nothing")


CREATE_EMPLOYEES = """CREATE TABLE `employees` (
  `id` int(11) NOT NULL,
  `department_id` int(11) NOT NULL,
  `manager_id` int(11) DEFAULT NULL,
  `site` int(11) DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `employees_department` (`department_id`),
  CONSTRAINT `employees_department` FOREIGN KEY (`department_id`) REFERENCES `departments` (`id`) ON UPDATE CASCADE,
  CONSTRAINT `employees_manager` FOREIGN KEY (`manager_id`) REFERENCES `employees` (`id`) ON DELETE SET NULL,
  CONSTRAINT `employees_site` FOREIGN KEY (`site`) REFERENCES `other`.`sites` (`id`),
  CONSTRAINT `positive` CHECK (`id` > 0)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COMMENT='CONSTRAINT `x` FOREIGN KEY (`y`) REFERENCES `z` (`w`)'"""


def test_staged_foreign_keys_point_at_the_target_unless_staged_too_and_avoid_the_targets_names() -> None:
    counter = itertools.count(1)
    taken = {"employees_manager", "employees_site"}

    text, renames = stage_foreign_keys(
        CREATE_EMPLOYEES, target="live", staged={"employees"}, taken=taken, fresh=lambda: f"tmp_{next(counter)}"
    )

    lines = text.split("\n")
    # departments is not restored: the staged table references the live one from the start.
    assert lines[7] == (
        "  CONSTRAINT `employees_department` FOREIGN KEY (`department_id`) REFERENCES `live`.`departments` (`id`)"
        " ON UPDATE CASCADE,"
    )
    # Its own name is taken in the target: a temporary one until the old table is gone.
    assert (
        lines[8] == "  CONSTRAINT `tmp_1` FOREIGN KEY (`manager_id`) REFERENCES `employees` (`id`) ON DELETE SET NULL,"
    )
    assert lines[9] == "  CONSTRAINT `tmp_2` FOREIGN KEY (`site`) REFERENCES `other`.`sites` (`id`),"
    assert lines[0] == CREATE_EMPLOYEES.split("\n")[0]
    assert lines[10:] == CREATE_EMPLOYEES.split("\n")[10:]  # a CHECK and the comment are left alone
    assert [(r.temporary, r.name, r.clause) for r in renames] == [
        (
            "tmp_1",
            "employees_manager",
            "FOREIGN KEY (`manager_id`) REFERENCES `live`.`employees` (`id`) ON DELETE SET NULL",
        ),
        ("tmp_2", "employees_site", "FOREIGN KEY (`site`) REFERENCES `other`.`sites` (`id`)"),
    ]

"""What the dump tests compare databases by: ``snapshot`` reads back everything a faithful copy keeps
(checksums, row counts, AUTO_INCREMENT, definitions of views, triggers, routines and events), in a form
that compares equal between two databases of different names."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from backup_common.engine.database.sql import quote_identifier
from backup_common.engine.database.target import MysqlTarget
from tests.integration.source_db import CHECKED_VIEW, ODD_VIEW, SCHEMA_PLACEHOLDER, connect, rows, text_of

_AUTO_INCREMENT = re.compile(r" AUTO_INCREMENT=(\d+)")


def plain(value: Any) -> Any:
    """A value that compares equal across databases and prints readably in an assertion."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode()
    if isinstance(value, Decimal | datetime | date | time | timedelta | float):
        return str(value)
    return repr(value)


async def snapshot(target: MysqlTarget, *, ignore_definers: bool = False) -> dict[str, Any]:
    """Everything a faithful copy of the target database keeps, keyed by object name.

    ``schema``: the database's default character set and collation. ``tables``: per base table its
    ``SHOW CREATE TABLE`` without the counter, the ``AUTO_INCREMENT`` counter, ``COUNT(*)`` and
    ``CHECKSUM TABLE … EXTENDED``. ``views``, ``triggers``, ``routines`` and ``events``: their
    definitions and attributes from information_schema, with the database's own name replaced by a
    placeholder. With ``ignore_definers`` the definers are left out.
    """
    conn = await connect(target)
    try:
        return {
            "schema": await _schema(conn, target.database),
            "tables": await _tables(conn, target.database),
            "views": await _views(conn, target.database, ignore_definers),
            "triggers": await _triggers(conn, target.database, ignore_definers),
            "routines": await _routines(conn, target.database, ignore_definers),
            "events": await _events(conn, target.database, ignore_definers),
        }
    finally:
        await conn.ensure_closed()


def objects(snap: dict[str, Any]) -> dict[str, Any]:
    """The snapshot without the database's defaults: what a load into an existing database controls."""
    return {key: value for key, value in snap.items() if key != "schema"}


def object_definers(snap: dict[str, Any]) -> dict[str, str]:
    """``"<kind> <name>": definer`` for every view, trigger, routine and event of a snapshot."""
    found: dict[str, str] = {}
    for kind in ("views", "triggers", "routines", "events"):
        for name, attributes in snap[kind].items():
            found[f"{kind} {name}"] = attributes["definer"]
    return found


def snapshot_differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Where two snapshots (or parts of them) differ, one line per differing value, empty when equal."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found: list[str] = []
        for key in sorted(set(expected) | set(actual), key=str):
            where = f"{path}/{key}" if path else str(key)
            if key not in actual:
                found.append(f"{where}: missing")
            elif key not in expected:
                found.append(f"{where}: not in the original")
            else:
                found.extend(snapshot_differences(expected[key], actual[key], where))
        return found
    if expected != actual:
        return [f"{path}: expected {_shorten(expected)}, got {_shorten(actual)}"]
    return []


def _shorten(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


async def behaviour(target: MysqlTarget) -> dict[str, Any]:
    """What the feature database's views and functions answer: a copy must answer the same."""
    conn = await connect(target)
    try:
        queries = {
            "view chain": "SELECT * FROM a_first_view ORDER BY department",
            "checked view": f"SELECT * FROM {quote_identifier(CHECKED_VIEW)} ORDER BY id",
            "odd view": f"SELECT * FROM {quote_identifier(ODD_VIEW)} ORDER BY 1, 2",
            "functions": "SELECT fixture_pipes('a', 'b') AS piped, fixture_label('x;;y') AS label",
        }
        return {
            label: [{key: plain(value) for key, value in row.items()} for row in await rows(conn, sql)]
            for label, sql in queries.items()
        }
    finally:
        await conn.ensure_closed()


def _normalise(text: Any, database: str) -> Any:
    if text is None:
        return None
    return text_of(text).replace(quote_identifier(database), SCHEMA_PLACEHOLDER)


def _pick(row: dict[str, Any], columns: list[str], ignore_definers: bool, database: str) -> dict[str, Any]:
    picked: dict[str, Any] = {}
    for column in columns:
        if column not in row or (ignore_definers and column == "DEFINER"):
            continue
        value = row[column]
        picked[column.lower()] = _normalise(value, database) if isinstance(value, str | bytes) else plain(value)
    return picked


async def _schema(conn: Any, database: str) -> dict[str, Any]:
    (row,) = await rows(
        conn,
        "SELECT DEFAULT_CHARACTER_SET_NAME AS charset, DEFAULT_COLLATION_NAME AS collation"
        " FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
        (database,),
    )
    return {"charset": text_of(row["charset"]), "collation": text_of(row["collation"])}


async def _tables(conn: Any, database: str) -> dict[str, Any]:
    found = await rows(
        conn,
        "SELECT TABLE_NAME AS name FROM information_schema.TABLES"
        " WHERE TABLE_SCHEMA = %s AND TABLE_TYPE <> 'VIEW' ORDER BY TABLE_NAME",
        (database,),
    )
    tables: dict[str, Any] = {}
    for row in found:
        name = text_of(row["name"])
        quoted = quote_identifier(name)
        async with conn.cursor() as cursor:
            await cursor.execute(f"SHOW CREATE TABLE {quoted}")
            (_, create) = await cursor.fetchone()
            await cursor.execute(f"SELECT COUNT(*) FROM {quoted}")
            (count,) = await cursor.fetchone()
            await cursor.execute(f"CHECKSUM TABLE {quoted} EXTENDED")
            (_, checksum) = await cursor.fetchone()
        create = text_of(create)
        counter = _AUTO_INCREMENT.search(create)
        tables[name] = {
            "create": _AUTO_INCREMENT.sub("", create),
            "auto_increment": int(counter.group(1)) if counter else None,
            "rows": int(count),
            "checksum": plain(checksum),
        }
    return tables


async def _views(conn: Any, database: str, ignore_definers: bool) -> dict[str, Any]:
    found = await rows(conn, "SELECT * FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s", (database,))
    columns = ["VIEW_DEFINITION", "CHECK_OPTION", "IS_UPDATABLE", "DEFINER", "SECURITY_TYPE", "ALGORITHM"]
    return {text_of(row["TABLE_NAME"]): _pick(row, columns, ignore_definers, database) for row in found}


async def _triggers(conn: Any, database: str, ignore_definers: bool) -> dict[str, Any]:
    found = await rows(conn, "SELECT * FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s", (database,))
    columns = [
        "EVENT_MANIPULATION",
        "EVENT_OBJECT_TABLE",
        "ACTION_ORDER",
        "ACTION_STATEMENT",
        "ACTION_ORIENTATION",
        "ACTION_TIMING",
        "SQL_MODE",
        "DEFINER",
    ]
    return {text_of(row["TRIGGER_NAME"]): _pick(row, columns, ignore_definers, database) for row in found}


PARAMETER_COLUMNS = [
    "ORDINAL_POSITION",
    "PARAMETER_MODE",
    "PARAMETER_NAME",
    "DTD_IDENTIFIER",
    "CHARACTER_SET_NAME",
    "COLLATION_NAME",
]


async def _routines(conn: Any, database: str, ignore_definers: bool) -> dict[str, Any]:
    found = await rows(conn, "SELECT * FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s", (database,))
    columns = [
        "ROUTINE_TYPE",
        "DATA_TYPE",
        "DTD_IDENTIFIER",
        "CHARACTER_SET_NAME",
        "COLLATION_NAME",
        "ROUTINE_BODY",
        "ROUTINE_DEFINITION",
        "IS_DETERMINISTIC",
        "SQL_DATA_ACCESS",
        "SECURITY_TYPE",
        "SQL_MODE",
        "ROUTINE_COMMENT",
        "DEFINER",
    ]
    parameters = await rows(
        conn,
        "SELECT SPECIFIC_NAME, ROUTINE_TYPE, ORDINAL_POSITION, PARAMETER_MODE, PARAMETER_NAME, DTD_IDENTIFIER,"
        " CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.PARAMETERS"
        " WHERE SPECIFIC_SCHEMA = %s ORDER BY SPECIFIC_NAME, ROUTINE_TYPE, ORDINAL_POSITION",
        (database,),
    )
    routines: dict[str, Any] = {}
    for row in found:
        kind, name = text_of(row["ROUTINE_TYPE"]), text_of(row["ROUTINE_NAME"])
        routine = _pick(row, columns, ignore_definers, database)
        routine["parameters"] = {
            f"{parameter['ORDINAL_POSITION']} {text_of(parameter['PARAMETER_NAME'] or 'RETURNS')}": _pick(
                parameter, PARAMETER_COLUMNS, False, database
            )
            for parameter in parameters
            if text_of(parameter["SPECIFIC_NAME"]) == name and text_of(parameter["ROUTINE_TYPE"]) == kind
        }
        routines[f"{kind} {name}"] = routine
    return routines


async def _events(conn: Any, database: str, ignore_definers: bool) -> dict[str, Any]:
    found = await rows(conn, "SELECT * FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s", (database,))
    columns = [
        "DEFINER",
        "TIME_ZONE",
        "EVENT_BODY",
        "EVENT_DEFINITION",
        "EVENT_TYPE",
        "EXECUTE_AT",
        "INTERVAL_VALUE",
        "INTERVAL_FIELD",
        "SQL_MODE",
        "STARTS",
        "ENDS",
        "STATUS",
        "ON_COMPLETION",
        "EVENT_COMMENT",
    ]
    return {text_of(row["EVENT_NAME"]): _pick(row, columns, ignore_definers, database) for row in found}

"""What a database holds, read from information_schema, and how each column is written as SQL.

The server itself renders every value as a SQL literal (QUOTE, HEX, CONCAT): the result is exact and
the client only joins bytes, which is what makes the dump fast in Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from backup_common.engine.database.sql import SqlConnection, quote_identifier

BINARY_TYPES = frozenset(
    {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"}
    | {"geometry", "point", "linestring", "polygon", "multipoint", "multilinestring", "multipolygon"}
    | {"geometrycollection", "geomcollection"}
)
NUMERIC_TYPES = frozenset(
    {"tinyint", "smallint", "mediumint", "int", "integer", "bigint", "decimal", "numeric", "double", "real"}
)
TEMPORAL_TYPES = frozenset({"date", "time", "datetime", "timestamp", "year"})
INTEGER_TYPES = frozenset({"tinyint", "smallint", "mediumint", "int", "integer", "bigint"})


def quote_name(name: str) -> str:
    return quote_identifier(name)


def value_expression(column: str, data_type: str) -> str:
    """SQL that renders one column of a row as a literal of the INSERT statement (NULL included)."""
    col = quote_name(column)
    data_type = data_type.lower()
    if data_type in NUMERIC_TYPES:
        literal = f"{col}"
    elif data_type == "float":
        # MariaDB prints FLOAT with 6 significant digits; the double of a float is exact and its
        # shortest round-trip text converts back to the same float.
        literal = f"CAST({col} AS DOUBLE)"
    elif data_type == "bit":
        literal = f"CAST({col} AS UNSIGNED)"
    elif data_type in BINARY_TYPES:
        literal = f"IF(LENGTH({col}) = 0, '''''', CONCAT('0x', HEX({col})))"
    elif data_type in TEMPORAL_TYPES:
        literal = f"QUOTE({col})"
    else:
        # Text, ENUM, SET, JSON: one charset for the whole file, and no raw line breaks, so that every
        # INSERT stays on one line (the loader splits statements by line).
        literal = (
            f"REPLACE(REPLACE(QUOTE(CONVERT({col} USING utf8mb4)), CHAR(10 USING utf8mb4), '\\\\n'),"
            f" CHAR(13 USING utf8mb4), '\\\\r')"
        )
    return f"IFNULL({literal}, 'NULL')"


@dataclass
class Column:
    name: str
    data_type: str
    generated: bool


@dataclass
class Table:
    name: str
    engine: str | None
    data_bytes: int
    estimated_rows: int
    average_row_bytes: int
    columns: list[Column] = field(default_factory=list)
    primary_key: list[str] = field(default_factory=list)
    create_sql: str = ""

    @property
    def dumped_columns(self) -> list[Column]:
        """Generated columns are computed again on load, so their values are not dumped."""
        return [column for column in self.columns if not column.generated]

    @property
    def integer_key(self) -> Column | None:
        """The single integer primary key column, which lets a large table be read in ranges."""
        if len(self.primary_key) != 1:
            return None
        column = next(c for c in self.columns if c.name == self.primary_key[0])
        return column if column.data_type in INTEGER_TYPES else None

    def row_expression(self) -> str:
        parts = ", ',', ".join(value_expression(c.name, c.data_type) for c in self.dumped_columns)
        return f"CONCAT('(', {parts}, ')')"

    def insert_prefix(self) -> bytes:
        names = ",".join(quote_name(c.name) for c in self.dumped_columns)
        return f"INSERT INTO {quote_name(self.name)} ({names}) VALUES ".encode()


@dataclass
class Routine:
    name: str
    kind: str  # PROCEDURE or FUNCTION


@dataclass
class Inventory:
    tables: list[Table]
    views: list[str]
    routines: list[Routine]
    triggers: list[str]
    events: list[str]


async def read_inventory(conn: SqlConnection, database: str) -> Inventory:
    tables = {
        row["name"]: Table(
            row["name"],
            row["engine"],
            int(row["data_length"] or 0),
            int(row["table_rows"] or 0),
            int(row["avg_row_length"] or 0),
        )
        for row in await conn.fetch_all(
            "SELECT TABLE_NAME AS name, ENGINE AS engine, DATA_LENGTH AS data_length, TABLE_ROWS AS table_rows,"
            " AVG_ROW_LENGTH AS avg_row_length"
            " FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'BASE TABLE'"
            " ORDER BY TABLE_NAME",
            (database,),
        )
    }
    for row in await conn.fetch_all(
        "SELECT TABLE_NAME AS tbl, COLUMN_NAME AS name, DATA_TYPE AS data_type, EXTRA AS extra, COLUMN_KEY AS ckey"
        " FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME, ORDINAL_POSITION",
        (database,),
    ):
        table = tables.get(row["tbl"])
        if table is None:
            continue  # a view's column
        extra = (row["extra"] or "").upper()
        generated = "VIRTUAL GENERATED" in extra or "STORED GENERATED" in extra or extra in ("VIRTUAL", "PERSISTENT")
        table.columns.append(Column(row["name"], row["data_type"].lower(), generated))
    for row in await conn.fetch_all(
        "SELECT TABLE_NAME AS tbl, COLUMN_NAME AS name FROM information_schema.KEY_COLUMN_USAGE"
        " WHERE TABLE_SCHEMA = %s AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY TABLE_NAME, ORDINAL_POSITION",
        (database,),
    ):
        if row["tbl"] in tables:
            tables[row["tbl"]].primary_key.append(row["name"])
    views = [
        row["name"]
        for row in await conn.fetch_all(
            "SELECT TABLE_NAME AS name FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME",
            (database,),
        )
    ]
    routines = [
        Routine(row["name"], row["kind"])
        for row in await conn.fetch_all(
            "SELECT ROUTINE_NAME AS name, ROUTINE_TYPE AS kind FROM information_schema.ROUTINES"
            " WHERE ROUTINE_SCHEMA = %s AND ROUTINE_TYPE IN ('PROCEDURE', 'FUNCTION')"
            " ORDER BY ROUTINE_TYPE, ROUTINE_NAME",
            (database,),
        )
    ]
    triggers = [
        row["name"]
        for row in await conn.fetch_all(
            "SELECT TRIGGER_NAME AS name FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s"
            " ORDER BY EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER",
            (database,),
        )
    ]
    events = [
        row["name"]
        for row in await conn.fetch_all(
            "SELECT EVENT_NAME AS name FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s ORDER BY EVENT_NAME",
            (database,),
        )
    ]
    return Inventory(list(tables.values()), views, routines, triggers, events)


_DEFINER = re.compile(
    r"\s*DEFINER\s*=\s*(?:`(?:[^`]|``)*`|'(?:[^']|'')*'|[^\s@]+)@(?:`(?:[^`]|``)*`|'(?:[^']|'')*'|\S+)", re.I
)


def strip_definer(create_sql: str) -> str:
    """Removes the first DEFINER clause, so the object is owned by whoever loads it."""
    return _DEFINER.sub("", create_sql, count=1)


def order_views(definitions: dict[str, str]) -> list[str]:
    """Views in an order where each is created after the views it reads from."""
    remaining = dict(definitions)
    ordered: list[str] = []
    while remaining:
        ready = [
            name
            for name, sql in remaining.items()
            if not any(other != name and quote_name(other) in sql for other in remaining)
        ]
        if not ready:  # a reference we cannot resolve by name: keep the rest in name order
            ready = sorted(remaining)
        for name in sorted(ready):
            ordered.append(name)
            del remaining[name]
    return ordered


def row_value(row: dict[str, Any], *names: str) -> Any:
    """A SHOW CREATE column, whatever case the server gives its name."""
    lowered = {key.lower(): value for key, value in row.items()}
    for name in names:
        if name.lower() in lowered:
            return lowered[name.lower()]
    raise KeyError(names[0])

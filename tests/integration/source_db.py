"""Source databases for the dump and load tests.

``build_feature_database`` creates a database holding every feature a dump has to carry over, each in
the shape most likely to be lost on the way: values at the limits of their types, text that breaks
naive quoting, objects whose creation order matters (foreign-key cycles, views over views, a view
calling a stored function, triggers that would fire again if created before the data), counters and
definitions that live outside the rows. What the tests compare databases by is in
source_snapshot.py; the bank of the consistency proof is in bank_db.py.
"""

from __future__ import annotations

from typing import Any

import asyncmy

from backup_common.adapters.mysql import db
from backup_common.engine.database.sql import quote_identifier
from backup_common.engine.database.target import MysqlTarget
from tests.integration.source_types import (
    LATIN1_TEXT,
    TRICKY_TEXT,
    all_types_rows,
    all_types_table,
    insert_all_types,
    utf8,
)

FIXTURE_DEFINER_USER = "backup_fixture_definer"
FIXTURE_DEFINER = f"{FIXTURE_DEFINER_USER}@%"  # as information_schema spells a definer
BIG_TABLE = "big_table"
BIG_TABLE_ROWS = 200_000


def numbers(count: int) -> str:
    """A WITH clause naming ``numbers (n)``: 1 to ``count`` (a multiple of 100,000), made by the server
    itself, so that a big table is filled in one statement."""
    return f"""WITH digits (d) AS (
  SELECT 0 UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4
  UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9
), numbers (n) AS (
  SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d + 100000 * g.d + 1
  FROM digits a CROSS JOIN digits b CROSS JOIN digits c CROSS JOIN digits e CROSS JOIN digits f
  CROSS JOIN (SELECT d FROM digits WHERE d < {count // 100_000}) g
)"""


ODD_TABLE = "odd `name`. with spaces ü"
ODD_VIEW = "odd view ü.name"
CHECKED_VIEW = "v_orders; checked"
SCHEMA_CHARSET = "utf8mb4"
SCHEMA_COLLATION = "utf8mb4_unicode_ci"
SCHEMA_PLACEHOLDER = "`<schema>`"

# --- connections -------------------------------------------------------------------------------


async def connect(target: MysqlTarget, *, database: bool = True) -> Any:
    """An autocommit connection to the target database (or to the server, database=False)."""
    options = {**db.connection_options(target), "autocommit": True}
    if database:
        options["db"] = target.database
    return await asyncmy.connect(**options)


async def run(conn: Any, *statements: str) -> None:
    async with conn.cursor() as cursor:
        for statement in statements:
            await cursor.execute(statement)


async def run_on(target: MysqlTarget, *statements: str) -> None:
    """Runs the statements on a connection of their own to the target database."""
    conn = await connect(target)
    try:
        await run(conn, *statements)
    finally:
        await conn.ensure_closed()


async def rows(conn: Any, sql: str, args: Any = None) -> list[dict[str, Any]]:
    return await db.fetch_all(conn, sql, args)


def text_of(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode()
    return str(value)


async def is_mariadb(conn: Any) -> bool:
    (row,) = await rows(conn, "SELECT VERSION() AS version")
    return "mariadb" in text_of(row["version"]).lower()


async def server_version(target: MysqlTarget) -> str:
    conn = await connect(target, database=False)
    try:
        (row,) = await rows(conn, "SELECT VERSION() AS version")
        return text_of(row["version"])
    finally:
        await conn.ensure_closed()


async def binary_logging_enabled(target: MysqlTarget) -> bool:
    conn = await connect(target, database=False)
    try:
        (row,) = await rows(conn, "SELECT @@GLOBAL.log_bin AS log_bin")
        return bool(int(row["log_bin"]))
    finally:
        await conn.ensure_closed()


async def current_account(target: MysqlTarget) -> str:
    """The account a connection with these credentials acts as, spelled as information_schema spells definers."""
    conn = await connect(target, database=False)
    try:
        (row,) = await rows(conn, "SELECT CURRENT_USER() AS account")
        return text_of(row["account"])
    finally:
        await conn.ensure_closed()


async def recreate_database(target: MysqlTarget, *, charset: str, collation: str) -> None:
    """Drops the target database if it exists and creates it empty with the given defaults."""
    await db.drop_database(target)
    conn = await connect(target, database=False)
    try:
        await run(
            conn,
            f"CREATE DATABASE {quote_identifier(target.database)} CHARACTER SET {charset} COLLATE {collation}",
        )
    finally:
        await conn.ensure_closed()


async def database_is_empty_or_absent(target: MysqlTarget) -> bool:
    conn = await connect(target, database=False)
    try:
        name = target.database
        counts = await rows(
            conn,
            "SELECT (SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s) AS schemata,"
            " (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s) AS tables,"
            " (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s) AS routines,"
            " (SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s) AS events",
            (name, name, name, name),
        )
        row = counts[0]
        return int(row["schemata"]) == 0 or int(row["tables"]) + int(row["routines"]) + int(row["events"]) == 0
    finally:
        await conn.ensure_closed()


# --- the feature database ------------------------------------------------------------------------


def places_table(mariadb: bool) -> str:
    srid = "" if mariadb else " SRID 0"
    return f"""
CREATE TABLE places (
  id INT NOT NULL PRIMARY KEY,
  name VARCHAR(50) NOT NULL,
  location POINT NOT NULL{srid},
  SPATIAL INDEX location_index (location)
) ENGINE=InnoDB
"""


TABLES = [
    f"""
CREATE TABLE {quote_identifier(ODD_TABLE)} (
  id INT NOT NULL PRIMARY KEY,
  `dot.col` VARCHAR(20) NULL,
  `back``tick` VARCHAR(20) NULL,
  `col with space` INT NULL,
  `ünïcödé` VARCHAR(20) NULL,
  `key` INT NULL,
  `desc` VARCHAR(10) NULL,
  KEY `index with space` (`col with space`)
) ENGINE=InnoDB COMMENT='unusual identifiers'
""",
    """
CREATE TABLE `order` (
  id INT NOT NULL AUTO_INCREMENT,
  `select` VARCHAR(100) NOT NULL COMMENT 'a column named select; it''s "reserved"\\nsecond line',
  customer VARCHAR(100) NOT NULL,
  status ENUM('new','paid','shipped') NOT NULL DEFAULT 'new',
  total DECIMAL(10,2) NOT NULL DEFAULT 0.00,
  PRIMARY KEY (id),
  KEY `from` (customer)
) ENGINE=InnoDB COMMENT='orders: it''s a "reserved" name\\nwith a second line and a backslash \\\\'
""",
    """
CREATE TABLE audit_log (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  action VARCHAR(20) NOT NULL,
  detail TEXT NULL,
  created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB
""",
    """
CREATE TABLE empty_table (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  note VARCHAR(10) NULL
) ENGINE=InnoDB AUTO_INCREMENT=50 COMMENT='no rows, but a counter'
""",
    """
CREATE TABLE no_primary_key (
  a INT NULL,
  b VARCHAR(20) NULL,
  c BLOB NULL
) ENGINE=InnoDB
""",
    """
CREATE TABLE latin_table (
  id INT NOT NULL PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  note TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL
) ENGINE=InnoDB DEFAULT CHARSET=latin1 COLLATE=latin1_german1_ci
""",
    """
CREATE TABLE line_items (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  price DECIMAL(10,2) NOT NULL,
  qty INT NOT NULL,
  total DECIMAL(12,2) AS (price * qty) STORED,
  label VARCHAR(80) AS (CONCAT(qty, ' x ', price)) VIRTUAL,
  hidden_note VARCHAR(40) NULL INVISIBLE,
  description TEXT NULL,
  CONSTRAINT line_items_qty_positive CHECK (qty > 0),
  KEY total_index (total),
  FULLTEXT KEY description_text (description)
) ENGINE=InnoDB
""",
    """
CREATE TABLE partitioned_log (
  id INT NOT NULL,
  created DATE NOT NULL,
  message VARCHAR(100) NULL,
  PRIMARY KEY (id, created)
) ENGINE=InnoDB
PARTITION BY RANGE (YEAR(created)) (
  PARTITION p2022 VALUES LESS THAN (2023) COMMENT = 'old rows',
  PARTITION p2023 VALUES LESS THAN (2024),
  PARTITION pmax VALUES LESS THAN MAXVALUE
)
""",
    # departments and employees reference each other, and employees reference themselves: no table
    # order loads them with foreign-key checks on.
    """
CREATE TABLE departments (
  id INT NOT NULL PRIMARY KEY,
  name VARCHAR(50) NOT NULL,
  head_id INT NULL,
  UNIQUE KEY department_name (name),
  KEY head (head_id)
) ENGINE=InnoDB
""",
    """
CREATE TABLE employees (
  id INT NOT NULL PRIMARY KEY,
  name VARCHAR(80) NOT NULL,
  department_id INT NOT NULL,
  manager_id INT NULL,
  CONSTRAINT employees_department FOREIGN KEY (department_id) REFERENCES departments (id) ON UPDATE CASCADE,
  CONSTRAINT employees_manager FOREIGN KEY (manager_id) REFERENCES employees (id) ON DELETE SET NULL
) ENGINE=InnoDB
""",
    """
ALTER TABLE departments ADD CONSTRAINT departments_head
  FOREIGN KEY (head_id) REFERENCES employees (id) ON DELETE SET NULL
""",
    f"""
CREATE TABLE {BIG_TABLE} (
  id BIGINT NOT NULL PRIMARY KEY,
  k INT NOT NULL,
  payload VARCHAR(64) NOT NULL,
  amount DECIMAL(12,2) NULL,
  note VARCHAR(20) NULL,
  KEY k (k)
) ENGINE=InnoDB
""",
]

DATA = [
    f"""
INSERT INTO {quote_identifier(ODD_TABLE)} (id, `dot.col`, `back``tick`, `col with space`, `ünïcödé`, `key`, `desc`)
VALUES (1, 'a.b', 'c`d', 1, 'ü', 1, 'asc'), (2, NULL, NULL, NULL, NULL, NULL, NULL),
       (3, {utf8(TRICKY_TEXT[:20])}, '``', -1, 'é', 0, '')
""",
    "INSERT INTO no_primary_key (a, b, c) VALUES (1, 'dup', X'00'), (1, 'dup', X'00'), (1, 'dup', X'00'),"
    " (NULL, NULL, NULL), (NULL, NULL, NULL), (2, 'x', NULL), (2, 'x', X'')",
    f"INSERT INTO latin_table (id, name, note) VALUES (1, {utf8(LATIN1_TEXT)}, {utf8('emoji in utf8mb4 😀')}),"
    " (2, 'plain', NULL), (3, '', '')",
    f"INSERT INTO line_items (price, qty, hidden_note, description) VALUES"
    f" (9.99, 3, 'invisible but kept', {utf8('first; line item')}),"
    " (0.01, 1, NULL, NULL), (12345678.90, 100, 'big', 'big order')",
    "DELETE FROM line_items WHERE qty = 100",
    "INSERT INTO partitioned_log (id, created, message) VALUES (1, '2022-06-01', 'old'),"
    " (2, '2023-01-01', 'mid'), (3, '2030-12-31', 'future'), (4, '2022-12-31', NULL)",
    "INSERT INTO places (id, name, location) VALUES (1, 'origin', ST_GeomFromText('POINT(0 0)')),"
    " (2, 'elsewhere', ST_GeomFromText('POINT(12.5 -7.25)'))",
    # Rows reference rows inserted after them: the source itself needed foreign-key checks off.
    "INSERT INTO departments (id, name, head_id) VALUES (1, 'Engineering', 3), (2, 'Sales', 5), (3, 'Empty', NULL)",
    "INSERT INTO employees (id, name, department_id, manager_id) VALUES (1, 'Ada', 1, 3), (2, 'Grace;;', 1, 3),"
    " (3, 'Linus', 1, 4), (4, 'Ken', 2, 5), (5, 'Barbara', 2, NULL)",
    f"""
INSERT INTO {BIG_TABLE} (id, k, payload, amount, note)
{numbers(BIG_TABLE_ROWS)}
SELECT n, n % 1000, MD5(n), n / 100, IF(n % 7 = 0, NULL, CONCAT('n', n)) FROM numbers
""",
]

ROUTINES = [
    """
CREATE FUNCTION fixture_label(p_name VARCHAR(80)) RETURNS VARCHAR(120)
    DETERMINISTIC
    NO SQL
    COMMENT 'labels; used by a view'
BEGIN
  DECLARE v_result VARCHAR(120);
  SET v_result = CONCAT('<', p_name, '>');
  IF p_name LIKE '%;;%' THEN
    SET v_result = CONCAT(v_result, ' DELIMITER ;;');
  END IF;
  RETURN v_result;
END
""",
    f"""
CREATE DEFINER = `{FIXTURE_DEFINER_USER}`@`%` PROCEDURE fixture_record(
    IN p_customer VARCHAR(100), INOUT p_count INT, OUT p_note TEXT)
    MODIFIES SQL DATA
    SQL SECURITY INVOKER
    COMMENT 'records a call; it''s "safe";; DELIMITER //'
BEGIN
  DECLARE v_marker VARCHAR(60) DEFAULT 'DELIMITER ;;';
  DECLARE v_i INT DEFAULT 0;
  WHILE v_i < 3 DO
    SET v_i = v_i + 1;
  END WHILE;
  SET p_count = IFNULL(p_count, 0) + v_i;
  SET p_note = CONCAT('a;b;;c ', v_marker, ' END; $$ // \\\\ ''q''');
  INSERT INTO audit_log (action, detail) VALUES ('proc', CONCAT(p_customer, ';;'));
END
""",
    """
CREATE PROCEDURE fixture_counts()
    READS SQL DATA
BEGIN
  SELECT COUNT(*) AS orders FROM `order`;
  SELECT COUNT(*) AS entries FROM audit_log WHERE detail LIKE '%;%';
END
""",
]

# Created under PIPES_AS_CONCAT: recreated under another sql_mode, || would mean OR.
PIPES_FUNCTION = """
CREATE FUNCTION fixture_pipes(p_a VARCHAR(10) CHARACTER SET latin1, p_b TEXT) RETURNS TEXT CHARSET utf8mb4
    DETERMINISTIC
    NO SQL
RETURN p_a || ';' || p_b
"""

# Triggers that change what they insert: created before the data is loaded, they fire again and
# the copy differs (suffixes, totals, extra audit rows).
TRIGGERS = [
    """
CREATE TRIGGER order_before_insert BEFORE INSERT ON `order` FOR EACH ROW
BEGIN
  DECLARE note VARCHAR(100) DEFAULT 'semicolons ;; and DELIMITER $$ inside a string';
  SET NEW.`select` = CONCAT(NEW.`select`, ' [checked]');
  INSERT INTO audit_log (action, detail) VALUES ('insert', CONCAT(NEW.customer, ': ', note));
END
""",
    """
CREATE TRIGGER order_before_insert_total BEFORE INSERT ON `order` FOR EACH ROW FOLLOWS order_before_insert
SET NEW.total = ROUND(NEW.total * 1.1, 2)
""",
    """
CREATE TRIGGER order_after_update AFTER UPDATE ON `order` FOR EACH ROW
BEGIN
  IF NEW.status <> OLD.status THEN
    INSERT INTO audit_log (action, detail) VALUES ('status', CONCAT(OLD.status, ' -> ', NEW.status, ';'));
  END IF;
  INSERT INTO audit_log (action, detail) VALUES ('update', NEW.id);
END
""",
]

ORDERS = [
    f"INSERT INTO `order` (`select`, customer, total) VALUES ('first', 'alice', 10.00), ('second', 'bob', 0.10),"
    f" ({utf8(TRICKY_TEXT[:60])}, {utf8('zoë 😀')}, 9999999.99), ('fourth', 'dave', 1.00)",
    "UPDATE `order` SET status = 'paid' WHERE customer = 'alice'",
    "UPDATE `order` SET total = total + 1 WHERE customer = 'bob'",
    "DELETE FROM `order` WHERE customer = 'dave'",
]

EVENT = """
CREATE EVENT fixture_cleanup
  ON SCHEDULE EVERY 1 DAY STARTS '2035-01-01 03:00:00' ENDS '2036-01-01 00:00:00'
  ON COMPLETION PRESERVE
  DISABLE
  COMMENT 'nightly; it''s "disabled"'
  DO BEGIN
    DELETE FROM audit_log WHERE action = 'never;;';
    INSERT INTO audit_log (action, detail) VALUES ('event', 'DELIMITER ;;');
  END
"""

# Created deepest first, as they must be; a_first_view sorts before everything it depends on, and
# v_base calls a stored function.
VIEWS = [
    "CREATE VIEW v_base AS SELECT e.id, fixture_label(e.name) AS label, e.department_id, e.manager_id FROM employees e",
    "CREATE VIEW v_mid AS SELECT b.id, b.label, d.name AS department FROM v_base b JOIN departments d"
    " ON d.id = b.department_id",
    "CREATE ALGORITHM = TEMPTABLE VIEW v_top AS SELECT department, COUNT(*) AS people FROM v_mid GROUP BY department",
    "CREATE VIEW a_first_view AS SELECT department, people FROM v_top WHERE people > 0",
    f"CREATE DEFINER = `{FIXTURE_DEFINER_USER}`@`%` SQL SECURITY INVOKER VIEW {quote_identifier(CHECKED_VIEW)} AS"
    " SELECT id, `select`, customer, total FROM `order` WHERE total >= 0 WITH CASCADED CHECK OPTION",
    f"CREATE VIEW {quote_identifier(ODD_VIEW)} AS SELECT `dot.col`, `back``tick` AS `tick``ed`"
    f" FROM {quote_identifier(ODD_TABLE)}",
]


def with_mode(sql_mode: str, extra: str) -> str:
    return ",".join(mode for mode in [*sql_mode.split(","), extra] if mode)


async def build_feature_database(target: MysqlTarget) -> None:
    """Drops and creates the target database holding every feature a dump has to carry over."""
    await recreate_database(target, charset=SCHEMA_CHARSET, collation=SCHEMA_COLLATION)
    conn = await connect(target)
    try:
        existing = await rows(conn, "SELECT 1 FROM mysql.user WHERE User = %s AND Host = '%%'", (FIXTURE_DEFINER_USER,))
        if not existing:  # a definer must exist; locked, nobody logs in as it
            await run(conn, f"CREATE USER IF NOT EXISTS `{FIXTURE_DEFINER_USER}`@`%` ACCOUNT LOCK")
        mariadb = await is_mariadb(conn)
        (modes,) = await rows(conn, "SELECT @@GLOBAL.sql_mode AS global_mode, @@SESSION.sql_mode AS session_mode")
        global_mode = text_of(modes["global_mode"])
        session_mode = text_of(modes["session_mode"])
        zero_dates = "NO_ZERO_DATE" not in global_mode.split(",")

        await run(conn, all_types_table(mariadb), places_table(mariadb), *TABLES)
        await run(conn, "SET SESSION foreign_key_checks = 0")
        await run(conn, *(insert_all_types(row) for row in all_types_rows(zero_dates=zero_dates)))
        await run(conn, *DATA)
        await run(conn, "SET SESSION foreign_key_checks = 1")

        await run(conn, *ROUTINES)
        await run(conn, f"SET SESSION sql_mode = '{with_mode(session_mode, 'PIPES_AS_CONCAT')}'")
        await run(conn, PIPES_FUNCTION)
        await run(conn, f"SET SESSION sql_mode = '{session_mode}'")
        await run(conn, *TRIGGERS)

        # Id 0 in an AUTO_INCREMENT column survives only under NO_AUTO_VALUE_ON_ZERO.
        await run(conn, f"SET SESSION sql_mode = '{with_mode(session_mode, 'NO_AUTO_VALUE_ON_ZERO')}'")
        await run(conn, "INSERT INTO `order` (id, `select`, customer, total) VALUES (0, 'zero id', 'zero', 0.00)")
        await run(conn, f"SET SESSION sql_mode = '{session_mode}'")
        await run(conn, *ORDERS)
        await run(conn, "ALTER TABLE `order` AUTO_INCREMENT = 1000", "ALTER TABLE line_items AUTO_INCREMENT = 500")

        await run(conn, EVENT, *VIEWS)
    finally:
        await conn.ensure_closed()


# --- snapshots -----------------------------------------------------------------------------------

"""The values and the all-types table of the feature database (source_db.py): text and bytes that
break naive quoting, every column type with rows at the limits of its range, and SQL literals that
do not depend on the client library's escaping."""

from __future__ import annotations

import json
import random

# Text that breaks every quoting shortcut: quotes, backslashes, NUL, line ends, ctrl-Z, comment and
# delimiter tokens, LOAD DATA's NULL marker, characters outside the BMP and combining sequences.
TRICKY_TEXT = (
    "quote ' double \" backtick ` backslash \\ \\N nul \x00 newline \n return \r crlf \r\n tab \t "
    "ctrl-z \x1a percent % underscore _ semicolon ; DELIMITER ;; comment /* x */ /*!40101 y */ -- z # w "
    "emoji 😀👍🏽🇩🇪 combining e\u0301 a\u0308 Z\u0324\u0354 CJK 漢字 RTL שלום zero-width \u200b end"
)
LATIN1_TEXT = "Grüße aus Köln, naïve façade, ÿ, £, € and ¿qué? 'quoted' \\ done"
ALL_BYTES = bytes(range(256))
LONG_TEXT = "ü" * 150_000 + TRICKY_TEXT  # one value far above a small statement_bytes
LONG_BLOB = random.Random(20240229).randbytes(300_000)
FIXTURE_JSON = json.dumps(
    {
        "nested": {"list": [1, 2.5, -0.0, 1e300, 1e-300, True, False, None], "deep": {"a": {"b": {"c": []}}}},
        "unicode": '😀 e\u0301 漢字 "quoted" it\'s \\ back\nline',
        "empty": {},
    },
    ensure_ascii=False,
)


# --- SQL literals that do not depend on the client library's escaping -------------------------------


def utf8(value: str) -> str:
    return f"_utf8mb4 X'{value.encode().hex()}'" if value else "''"


def binary(value: bytes) -> str:
    return f"X'{value.hex()}'"


ALL_TYPES_COLUMNS = [
    "label",
    "t_tinyint",
    "t_tinyint_u",
    "t_smallint",
    "t_smallint_u",
    "t_mediumint",
    "t_mediumint_u",
    "t_int",
    "t_int_u",
    "t_bigint",
    "t_bigint_u",
    "t_decimal",
    "t_float",
    "t_double",
    "t_bit1",
    "t_bit64",
    "t_date",
    "t_time",
    "t_datetime",
    "t_timestamp",
    "t_year",
    "t_char",
    "t_varchar",
    "t_text",
    "t_mediumtext",
    "t_latin1",
    "t_bin_collation",
    "t_binary",
    "t_varbinary",
    "t_blob",
    "t_longblob",
    "t_enum",
    "t_set",
    "t_json",
    "t_point",
    "t_polygon",
    "t_geometry",
]

DECIMAL_MAX = "9" * 35 + "." + "9" * 30


def all_types_table(mariadb: bool) -> str:
    # MariaDB keeps the SRID in every geometry value; MySQL 8 also restricts a column to one SRID.
    point_srid = "" if mariadb else " SRID 4326"
    return f"""
CREATE TABLE all_types (
  id INT NOT NULL AUTO_INCREMENT,
  label VARCHAR(40) NOT NULL,
  t_tinyint TINYINT NULL,
  t_tinyint_u TINYINT UNSIGNED NULL,
  t_smallint SMALLINT NULL,
  t_smallint_u SMALLINT UNSIGNED NULL,
  t_mediumint MEDIUMINT NULL,
  t_mediumint_u MEDIUMINT UNSIGNED NULL,
  t_int INT NULL,
  t_int_u INT UNSIGNED NULL,
  t_bigint BIGINT NULL,
  t_bigint_u BIGINT UNSIGNED NULL,
  t_decimal DECIMAL(65,30) NULL,
  t_float FLOAT NULL,
  t_double DOUBLE NULL,
  t_bit1 BIT(1) NULL,
  t_bit64 BIT(64) NULL,
  t_date DATE NULL,
  t_time TIME(6) NULL,
  t_datetime DATETIME(6) NULL,
  t_timestamp TIMESTAMP(6) NULL DEFAULT NULL,
  t_year YEAR NULL,
  t_char CHAR(20) NULL,
  t_varchar VARCHAR(1000) NULL COMMENT 'utf8mb4 text; it''s "tricky"\\nsecond line',
  t_text TEXT NULL,
  t_mediumtext MEDIUMTEXT NULL,
  t_latin1 VARCHAR(200) CHARACTER SET latin1 NULL,
  t_bin_collation VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  t_binary BINARY(4) NULL,
  t_varbinary VARBINARY(300) NULL,
  t_blob BLOB NULL,
  t_longblob LONGBLOB NULL,
  t_enum ENUM('small','medium','it''s large','') NULL,
  t_set SET('read','write','admin''s') NULL,
  t_json JSON NULL,
  t_point POINT{point_srid} NULL,
  t_polygon POLYGON NULL,
  t_geometry GEOMETRY NULL,
  PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
  COMMENT='every column type; it''s "all" of them\\nsecond line \\\\ backslash'
"""


def all_types_rows(*, zero_dates: bool) -> list[dict[str, str]]:
    """SQL expressions per column; a column a row leaves out is NULL."""
    minimum = {
        "label": "'minimum'",
        "t_tinyint": "-128",
        "t_tinyint_u": "0",
        "t_smallint": "-32768",
        "t_smallint_u": "0",
        "t_mediumint": "-8388608",
        "t_mediumint_u": "0",
        "t_int": "-2147483648",
        "t_int_u": "0",
        "t_bigint": "-9223372036854775808",
        "t_bigint_u": "0",
        "t_decimal": "-" + DECIMAL_MAX,
        "t_float": "-3.4028234663852886e38",
        "t_double": "-1.7976931348623157e308",
        "t_bit1": "b'0'",
        "t_bit64": "b'0'",
        "t_date": "'1000-01-01'",
        "t_time": "'-838:59:59.000000'",
        "t_datetime": "'1000-01-01 00:00:00.000000'",
        "t_timestamp": "'1970-01-01 00:00:01.000000'",
        "t_year": "1901",
        "t_char": "''",
        "t_varchar": "''",
        "t_text": "''",
        "t_mediumtext": "''",
        "t_latin1": "''",
        "t_bin_collation": "''",
        "t_binary": binary(b"\x00\x00\x00\x00"),
        "t_varbinary": "X''",
        "t_blob": "X''",
        "t_longblob": "X''",
        "t_enum": "'small'",
        "t_set": "''",
        "t_json": "'[]'",
        "t_point": "ST_GeomFromText('POINT(0 0)', 4326)",
        "t_polygon": "ST_GeomFromText('POLYGON((0 0,0 1,1 1,1 0,0 0))')",
        "t_geometry": "ST_GeomFromText('LINESTRING(0 0,1 1,2 0)')",
    }
    maximum = {
        "label": "'maximum'",
        "t_tinyint": "127",
        "t_tinyint_u": "255",
        "t_smallint": "32767",
        "t_smallint_u": "65535",
        "t_mediumint": "8388607",
        "t_mediumint_u": "16777215",
        "t_int": "2147483647",
        "t_int_u": "4294967295",
        "t_bigint": "9223372036854775807",
        "t_bigint_u": "18446744073709551615",
        "t_decimal": DECIMAL_MAX,
        "t_float": "3.4028234663852886e38",
        "t_double": "1.7976931348623157e308",
        "t_bit1": "b'1'",
        "t_bit64": "0xFFFFFFFFFFFFFFFF",
        "t_date": "'9999-12-31'",
        "t_time": "'838:59:59.000000'",
        "t_datetime": "'9999-12-31 23:59:59.999999'",
        "t_timestamp": "'2038-01-19 03:14:07.999999'",
        "t_year": "2155",
        "t_char": utf8("chär ✓ 20 chars max"),
        "t_varchar": utf8(TRICKY_TEXT + " trailing spaces   "),
        "t_text": utf8(TRICKY_TEXT * 3),
        "t_mediumtext": utf8(LONG_TEXT),
        "t_latin1": utf8(LATIN1_TEXT),
        "t_bin_collation": utf8("Case Matters ÄÖÜ äöü"),
        "t_binary": binary(b"\xff\x00\x1a\x5c"),
        "t_varbinary": binary(ALL_BYTES),
        "t_blob": binary(ALL_BYTES * 4),
        "t_longblob": binary(LONG_BLOB),
        "t_enum": "'it''s large'",
        "t_set": "'read,write,admin''s'",
        "t_json": utf8(FIXTURE_JSON),
        "t_point": "ST_GeomFromText('POINT(-89.5 179.25)', 4326)",
        "t_polygon": "ST_GeomFromText('POLYGON((0 0,0 10,10 10,10 0,0 0),(2 2,2 4,4 4,4 2,2 2))')",
        "t_geometry": "ST_GeomFromText('GEOMETRYCOLLECTION(POINT(1 2),LINESTRING(0 0,3 4))', 3857)",
    }
    special = {
        "label": "'tiny, fractions, negative zero'",
        "t_tinyint": "-1",
        "t_tinyint_u": "1",
        "t_bigint": "-1",
        "t_bigint_u": "9223372036854775808",
        "t_decimal": "0." + "0" * 29 + "1",
        "t_float": "-0e0",
        "t_double": "-0e0",
        "t_bit1": "b'0'",
        "t_bit64": "b'1010101010101010101010101010101010101010101010101010101010101010'",
        "t_date": "'2024-02-29'",
        "t_time": "'-00:00:00.000001'",
        "t_datetime": "'2024-02-29 23:59:59.000001'",
        "t_timestamp": "'2024-03-31 01:30:00.123456'",
        "t_year": "2000",
        "t_char": "'   '",
        "t_varchar": utf8("   leading and trailing   "),
        "t_text": utf8("\n"),
        "t_latin1": utf8("\\N"),
        "t_enum": "''",
        "t_set": "'admin''s'",
        "t_json": utf8('{"a": null, "b": "NULL", "c": "\\u0000"}'),
        "t_binary": binary(b"\x00"),
        "t_varbinary": binary(b"\x00"),
        "t_blob": binary(b"\x1a"),
    }
    exponents = {
        "label": "'exponents'",
        "t_float": "1.17549435e-38",
        "t_double": "2.2250738585072014e-308",
        "t_decimal": "-0." + "0" * 29 + "1",
    }
    precision = {
        "label": "'precision'",
        "t_float": "3.14159265",
        "t_double": "0.1",
        "t_decimal": "12345678901234567890123456789012345.123456789012345678901234567890",
    }
    huge = {
        "label": "'huge exponents'",
        "t_float": "-1.0e-37",
        "t_double": "-1.2345678901234567e-300",
    }
    nulls = {"label": "'nulls'"}
    result = [minimum, maximum, special, exponents, precision, huge, nulls]
    if zero_dates:
        result.append(
            {
                "label": "'zero dates'",
                "t_date": "'0000-00-00'",
                "t_datetime": "'0000-00-00 00:00:00'",
                "t_timestamp": "'0000-00-00 00:00:00'",
                "t_year": "0",
                "t_time": "'00:00:00'",
            }
        )
    return result


def insert_all_types(row: dict[str, str]) -> str:
    columns = ", ".join(ALL_TYPES_COLUMNS)
    values = ", ".join(row.get(column, "NULL") for column in ALL_TYPES_COLUMNS)
    return f"INSERT INTO all_types ({columns}) VALUES ({values})"

"""Generates the benchmark database: several tables of text, numbers, JSON and blobs, FKs and indexes.

Generation takes a few minutes, so a database that carries a marker table with this generator's
version and the requested size is reused as it is. The data is deterministic: server-side tables
use seeded ``RAND(n)`` over the sequence engine, Python-side tables a seeded RNG per block of rows.

Run alone: ``.venv/bin/python -m bench.datagen [--size-mb 520] [--database backup_bench] [--force]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import math
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO

from bench.server import Server, SqlError, check_name

GENERATOR_VERSION = 1
MARKER_TABLE = "_bench_marker"
MIB = 1 << 20

# Share of the SQL text per table, and its average SQL bytes per row as mariadb-dump --hex-blob writes
# it (measured on this generator's output; the top-up after generation corrects any drift).
SHARES = {"users": 0.06, "posts": 0.40, "events_log": 0.16, "attachments": 0.22, "metrics": 0.16}
ROW_BYTES = {"users": 132, "posts": 2176, "events_log": 438, "attachments": 67460, "metrics": 62}
POSTS_BLOCK = 500  # posts per RNG seed and per INSERT statement (~1 MiB)
ATTACHMENTS_BLOCK = 20  # attachments per RNG seed and per INSERT statement (~1 MiB of hex)
SERVER_CHUNK = 250_000  # rows per INSERT ... SELECT, to keep each transaction's undo log modest


@dataclass(frozen=True)
class Plan:
    users: int
    posts: int
    events_log: int
    attachments: int
    metrics: int

    @classmethod
    def for_size(cls, size_mb: int) -> Plan:
        def rows(table: str) -> int:
            # 1% over, so that random variation rarely needs the (slower) top-up pass.
            return max(10, math.ceil(1.01 * size_mb * MIB * SHARES[table] / ROW_BYTES[table]))

        posts = math.ceil(rows("posts") / POSTS_BLOCK) * POSTS_BLOCK
        attachments = math.ceil(rows("attachments") / ATTACHMENTS_BLOCK) * ATTACHMENTS_BLOCK
        return cls(rows("users"), posts, rows("events_log"), attachments, rows("metrics"))


@dataclass(frozen=True)
class Dataset:
    database: str
    size_mb: int
    sql_bytes: int
    reused: bool
    seconds: float
    rows: dict[str, int]


# --- vocabulary -----------------------------------------------------------------------------------

_COMMON_TEXT = (
    "the of and to a in is it you that he was for on are with as I his they be at one have this from or "
    "had by not word but what some we can out other were all there when up use your how said an each she "
    "which do their time if will way about many then them write would like so these her long make thing "
    "see him two has look more day could go come did number sound no most people my over know water than "
    "call first who may down side been now find any new work part take get place made live where after "
    "back little only round man year came show every good me give our under name very through just form "
    "sentence great think say help low line differ turn cause much mean before move right boy old too same "
    "tell does set three want air well also play small end put home read hand port large spell add even "
    "land here must big high such follow act why ask men change went light kind off need house picture "
    "try us again animal point mother world near build self earth father head stand own page should "
    "country found answer school grow study still learn plant cover food sun four between state keep eye "
    "never last let thought city tree cross farm hard start might story saw far sea draw left late run "
    "don't while press close night real life few north open seem together next white children begin got "
    "walk example ease paper group always music those both mark often letter until mile river car feet "
    "care second book carry took science eat room friend began idea fish mountain stop once base hear "
    "horse cut sure watch color face wood main enough plain girl usual young ready above ever red list "
    "though feel talk bird soon body dog family direct pose leave song measure door product black short "
    "numeral class wind question happen complete ship area half rock order fire south problem piece told "
    "knew pass since top whole king space heard best hour better true during hundred five remember step "
    "early hold west ground interest reach fast verb sing listen six table travel less morning ten simple "
    "several vowel toward war lay against pattern slow center love person money serve appear road map "
    "rain rule govern pull cold notice voice unit power town fine certain fly fall lead cry dark machine "
    "it's can't we're they'll café naïve résumé Zürich über façade jalapeño Ångström São Paulo Kraków "
    "smörgåsbord déjà vu 東京 北京 서울 Москва Αθήνα"
)
_COMMON = _COMMON_TEXT.split()
_ONSETS = (
    "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br", "ch",
    "cl", "cr", "dr", "fl", "gr", "pl", "pr", "sh", "sl", "sp", "st", "str", "th", "tr", "qu", "",
)  # fmt: skip
_NUCLEI = ("a", "e", "i", "o", "u", "ai", "ea", "ee", "io", "ou", "oo", "y", "ie", "au")
_CODAS = ("", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck", "ng", "rt", "ss", "x", "tion", "ment", "ly", "ing")


def _vocabulary() -> tuple[list[str], list[float]]:
    """Common words first, then a long tail of made-up words, weighted by Zipf's law as prose is."""
    rng = random.Random(f"vocabulary:{GENERATOR_VERSION}")
    tail: list[str] = []
    seen = {word.lower() for word in _COMMON}
    while len(tail) < 4000:
        word = "".join(
            rng.choice(_ONSETS) + rng.choice(_NUCLEI) + rng.choice(_CODAS) for _ in range(rng.choice((1, 1, 2, 2, 3)))
        )
        if len(word) > 2 and word not in seen:
            seen.add(word)
            tail.append(word)
    words = list(_COMMON) + tail
    cumulative = list(itertools.accumulate(1.0 / (rank + 2.7) ** 1.1 for rank in range(len(words))))
    return words, cumulative


_WORDS, _CUMULATIVE = _vocabulary()


def sql_string(text: str) -> str:
    """A quoted string literal, escaped as mariadb-dump escapes (backslash escapes are on by default)."""
    escaped = (
        text.replace("\\", "\\\\")
        .replace("'", "\\'")
        .replace("\0", "\\0")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\x1a", "\\Z")
    )
    return f"'{escaped}'"


def _sentence(rng: random.Random, words: Sequence[str]) -> str:
    text = " ".join(words)
    if len(words) > 8 and rng.random() < 0.4:
        cut = rng.randrange(3, len(words) - 3)
        text = " ".join(words[:cut]) + ", " + " ".join(words[cut:])
    if rng.random() < 0.03:
        text += ' — as the "manual" says, see C:\\data\\notes.txt'
    return text[:1].upper() + text[1:] + rng.choice(".........?!")


def prose(rng: random.Random, target_chars: int) -> str:
    """Paragraphs of sentences of Zipf-distributed words: compresses about as well as real text."""
    paragraphs: list[str] = []
    length = 0
    while length < target_chars:
        sentences = []
        for _ in range(rng.randint(2, 7)):
            count = rng.randint(5, 22)
            sentences.append(_sentence(rng, rng.choices(_WORDS, cum_weights=_CUMULATIVE, k=count)))
        paragraph = " ".join(sentences)
        paragraphs.append(paragraph)
        length += len(paragraph) + 2
    return "\n\n".join(paragraphs)[: max(target_chars, 1)].rstrip()


# --- schema ---------------------------------------------------------------------------------------

# Tables start with their primary key only; secondary indexes and foreign keys are added after the
# data (a sorted index build), which is much faster than maintaining them row by row.
_TABLES = (
    """CREATE TABLE users (
  id INT UNSIGNED NOT NULL PRIMARY KEY,
  username VARCHAR(64) NOT NULL,
  display_name VARCHAR(128) NOT NULL,
  email VARCHAR(191) NOT NULL,
  country CHAR(2) NOT NULL,
  balance DECIMAL(12,2) NOT NULL,
  karma INT NOT NULL,
  is_active TINYINT(1) NOT NULL,
  created_at DATETIME NOT NULL,
  last_login_at DATETIME(3) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci""",
    """CREATE TABLE posts (
  id INT UNSIGNED NOT NULL PRIMARY KEY,
  user_id INT UNSIGNED NOT NULL,
  title VARCHAR(255) NOT NULL,
  slug VARCHAR(255) NOT NULL,
  status ENUM('draft','published','archived') NOT NULL,
  body TEXT NOT NULL,
  view_count INT UNSIGNED NOT NULL,
  rating DECIMAL(3,2) NULL,
  created_at DATETIME NOT NULL,
  updated_at DATETIME NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci""",
    """CREATE TABLE attachments (
  id INT UNSIGNED NOT NULL PRIMARY KEY,
  post_id INT UNSIGNED NOT NULL,
  filename VARCHAR(255) NOT NULL,
  mime_type VARCHAR(100) NOT NULL,
  byte_size INT UNSIGNED NOT NULL,
  sha1 BINARY(20) NOT NULL,
  data MEDIUMBLOB NOT NULL,
  created_at DATETIME NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci""",
    """CREATE TABLE events_log (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  user_id INT UNSIGNED NULL,
  event_type VARCHAR(32) NOT NULL,
  created_at DATETIME(6) NOT NULL,
  payload JSON NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci""",
    """CREATE TABLE metrics (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  host_id SMALLINT UNSIGNED NOT NULL,
  metric_id SMALLINT UNSIGNED NOT NULL,
  ts DATETIME NOT NULL,
  value DOUBLE NOT NULL,
  counter BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci""",
)

_INDEXES = (
    "ALTER TABLE users ADD UNIQUE KEY uq_users_email (email), ADD KEY ix_users_created (created_at),"
    " ADD KEY ix_users_country_balance (country, balance)",
    "ALTER TABLE posts ADD KEY ix_posts_user_created (user_id, created_at),"
    " ADD KEY ix_posts_status (status, created_at),"
    " ADD CONSTRAINT fk_posts_user FOREIGN KEY (user_id) REFERENCES users (id)",
    "ALTER TABLE attachments ADD KEY ix_attachments_post (post_id),"
    " ADD CONSTRAINT fk_attachments_post FOREIGN KEY (post_id) REFERENCES posts (id) ON DELETE CASCADE",
    "ALTER TABLE events_log ADD KEY ix_events_user_created (user_id, created_at),"
    " ADD KEY ix_events_type_created (event_type, created_at)",
    "ALTER TABLE metrics ADD KEY ix_metrics_host_metric_ts (host_id, metric_id, ts)",
)

# One of each kind of object --routines --triggers --events carries; single statements, so no
# DELIMITER is needed. The event is disabled and the trigger fires on UPDATE only, so neither changes
# data during a benchmark.
_OBJECTS = (
    "CREATE VIEW post_stats AS SELECT user_id, COUNT(*) AS posts, SUM(view_count) AS views FROM posts GROUP BY user_id",
    "CREATE FUNCTION post_score(views INT UNSIGNED, rating DECIMAL(3,2)) RETURNS DOUBLE DETERMINISTIC"
    " RETURN LOG(1 + views) * COALESCE(rating, 2.5)",
    "CREATE PROCEDURE archive_posts_before(IN cutoff DATETIME)"
    " UPDATE posts SET status = 'archived' WHERE status = 'published' AND created_at < cutoff",
    "CREATE TRIGGER posts_touch BEFORE UPDATE ON posts FOR EACH ROW SET NEW.updated_at = NOW()",
    "CREATE EVENT purge_old_events ON SCHEDULE EVERY 1 DAY DISABLE"
    " DO DELETE FROM events_log WHERE created_at < NOW() - INTERVAL 2 YEAR",
)


# --- server-side tables ---------------------------------------------------------------------------


def _pick(seed: int, choices: Sequence[str]) -> str:
    return f"ELT(1 + FLOOR(RAND({seed}) * {len(choices)}), {', '.join(sql_string(item) for item in choices)})"


_FIRST = (
    "Anna", "José", "Zoë", "Łukasz", "Søren", "Chloé", "Björn", "Mårten", "Anaïs", "Jürgen", "Renée", "Mohammed",
    "Wei", "Aiko", "Olga", "Ελένη", "Алексей", "太郎", "さくら", "민준", "محمد", "अर्जुन", "Siobhán", "Nguyễn",
    "John", "Mary", "Peter", "Laura", "David", "Sarah", "Tom", "Emma",
)  # fmt: skip
_LAST = (
    "Smith", "Müller", "García", "Dvořák", "Øvergård", "O'Brien", "Nakamura", "Kowalski", "Rossi", "Dubois",
    "Иванов", "Παπαδόπουλος", "田中", "김", "Đặng", "Çelik", "Johansson", "Brown", "Martin", "Lefèvre",
)  # fmt: skip
_COUNTRIES = ("FR", "DE", "US", "GB", "JP", "PL", "BR", "IN", "ES", "IT", "KR", "SE", "NO", "VN", "TR", "GR")
_DOMAINS = ("example.com", "mail.example.org", "example.net", "post.example.de", "example.co.jp")
_EVENT_TYPES = ("login", "logout", "page_view", "page_view", "page_view", "search", "purchase", "comment", "upload")
_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "curl/8.5.0",
    "python-requests/2.32",
)
_PATHS = ("blog", "posts", "users", "search", "api/v2/items", "checkout", "static/img", "tags")
# Escaping cases a dump must round-trip: empty, non-ASCII, emoji (4-byte UTF-8), newline, quotes.
_NOTES = ("", "", "Grüße ✓", "naïve café", "ok 👍", "line\nbreak", 'quote "x"', "it's")
_LOCALES = ("fr-FR", "de-DE", "en-US", "ja-JP", "pl-PL", "pt-BR")


def _server_statements(plan: Plan) -> Iterator[str]:
    """INSERT ... SELECT over the sequence engine, in chunks; every RAND(seed) is distinct per column and chunk."""

    def chunks(total: int) -> Iterator[tuple[int, int, int]]:
        for index, start in enumerate(range(1, total + 1, SERVER_CHUNK)):
            yield index, start, min(total, start + SERVER_CHUNK - 1)

    for index, first, last in chunks(plan.users):
        s = 1000 + index * 100
        yield (
            "INSERT INTO users SELECT seq,"
            f" CONCAT(LOWER({_pick(s + 1, _FIRST)}), '_', seq),"
            f" CONCAT({_pick(s + 2, _FIRST)}, ' ', {_pick(s + 3, _LAST)}),"
            f" CONCAT('user', seq, '@', {_pick(s + 4, _DOMAINS)}),"
            f" {_pick(s + 5, _COUNTRIES)},"
            f" ROUND(RAND({s + 6}) * 120000 - 20000, 2),"
            f" FLOOR(RAND({s + 7}) * 10000) - 500,"
            f" RAND({s + 8}) < 0.9,"
            f" TIMESTAMP('2012-01-01') + INTERVAL FLOOR(RAND({s + 9}) * 380000000) SECOND,"
            f" IF(RAND({s + 10}) < 0.15, NULL,"
            f" TIMESTAMP('2024-01-01') + INTERVAL FLOOR(RAND({s + 11}) * 60000000000) / 1000 SECOND)"
            f" FROM seq_{first}_to_{last}"
        )
    for index, first, last in chunks(plan.events_log):
        s = 5000 + index * 100
        yield (
            "INSERT INTO events_log SELECT seq,"
            f" IF(RAND({s + 1}) < 0.1, NULL, 1 + FLOOR(RAND({s + 2}) * {plan.users})),"
            f" {_pick(s + 3, _EVENT_TYPES)},"
            f" TIMESTAMP('2022-01-01') + INTERVAL FLOOR(RAND({s + 4}) * 90000000000000) / 1000000 SECOND,"
            " JSON_OBJECT("
            f"'ip', CONCAT_WS('.', 10, FLOOR(RAND({s + 5}) * 256), FLOOR(RAND({s + 6}) * 256),"
            f" FLOOR(RAND({s + 7}) * 256)),"
            f" 'user_agent', {_pick(s + 8, _AGENTS)},"
            f" 'session', MD5(CONCAT('session', FLOOR(seq / 7))),"
            f" 'path', CONCAT('/', {_pick(s + 9, _PATHS)}, '/', FLOOR(RAND({s + 10}) * 100000)),"
            f" 'status', CAST(ELT(1 + FLOOR(RAND({s + 11}) * 8), 200, 200, 200, 200, 201, 302, 404, 500) AS UNSIGNED),"
            f" 'duration_ms', ROUND(RAND({s + 12}) * 1500, 3),"
            f" 'tags', JSON_ARRAY({_pick(s + 13, _EVENT_TYPES)}, {_pick(s + 14, _PATHS)}),"
            f" 'meta', JSON_OBJECT('locale', {_pick(s + 15, _LOCALES)},"
            f" 'returning', RAND({s + 16}) < 0.6,"
            f" 'referrer', IF(RAND({s + 17}) < 0.5, NULL, CONCAT('https://', {_pick(s + 18, _DOMAINS)}, '/ref')),"
            f" 'note', {_pick(s + 19, _NOTES)}))"
            f" FROM seq_{first}_to_{last}"
        )
    for index, first, last in chunks(plan.metrics):
        s = 9000 + index * 100
        yield (
            "INSERT INTO metrics SELECT seq,"
            f" 1 + FLOOR(RAND({s + 1}) * 200),"
            f" 1 + FLOOR(RAND({s + 2}) * 60),"
            " TIMESTAMP('2024-01-01') + INTERVAL seq * 7 SECOND,"
            # Half two-decimal readings, half full-precision doubles across magnitudes (round-trip test).
            f" IF(RAND({s + 3}) < 0.5, ROUND(RAND({s + 4}) * 100, 2),"
            f" RAND({s + 5}) * POW(10, FLOOR(RAND({s + 6}) * 9) - 3)),"
            f" FLOOR(RAND({s + 7}) * 1000000000000)"
            f" FROM seq_{first}_to_{last}"
        )


# --- Python-side tables ---------------------------------------------------------------------------

_EPOCH = datetime(2016, 1, 1)


def _when(rng: random.Random, span_days: int = 3000) -> datetime:
    return _EPOCH + timedelta(seconds=rng.randrange(span_days * 86400))


def _posts_statement(block: int, users: int) -> str:
    """Posts ``block * POSTS_BLOCK + 1`` onwards, from the block's own seed."""
    rng = random.Random(f"posts:{GENERATOR_VERSION}:{block}")
    rows = []
    for post_id in range(block * POSTS_BLOCK + 1, (block + 1) * POSTS_BLOCK + 1):
        title = _sentence(rng, rng.choices(_WORDS, cum_weights=_CUMULATIVE, k=rng.randint(4, 10)))[:-1]
        slug = "-".join(word.lower() for word in title.split() if word.isascii() and word.isalnum())[:200]
        created = _when(rng)
        updated = created + timedelta(seconds=rng.randrange(0, 90 * 86400))
        body = prose(rng, max(300, int(rng.gauss(2000, 500))))
        rating = "NULL" if rng.random() < 0.3 else f"{rng.uniform(0, 5):.2f}"
        rows.append(
            f"({post_id},{rng.randint(1, users)},{sql_string(title)},{sql_string(f'{slug}-{post_id}')},"
            f"'{rng.choice(('published', 'published', 'published', 'draft', 'archived'))}',{sql_string(body)},"
            f"{int(rng.paretovariate(1.2) * 10)},{rating},'{created:%Y-%m-%d %H:%M:%S}','{updated:%Y-%m-%d %H:%M:%S}')"
        )
    return "INSERT INTO posts VALUES " + ",".join(rows) + ";\n"


def _attachment(rng: random.Random) -> tuple[str, str, bytes]:
    """Two thirds incompressible (photos, archives), the rest text-like or sparse, as uploads are."""
    size = rng.randint(1024, 64 * 1024)
    kind = rng.random()
    if kind < 0.67:
        extension, mime = rng.choice((("jpg", "image/jpeg"), ("png", "image/png"), ("zip", "application/zip")))
        return extension, mime, rng.randbytes(size)
    if kind < 0.87:
        lines = ["id;date;amount;label"]
        length = 0
        while length < size:
            line = f"{rng.randrange(10**6)};{_when(rng):%Y-%m-%d};{rng.uniform(-999, 9999):.2f};{rng.choice(_WORDS)}"
            lines.append(line)
            length += len(line) + 1
        return "csv", "text/csv", "\n".join(lines).encode()[:size]
    # Sparse binary: a header, then random runs between long zero runs (like a bitmap or a database page).
    parts = [b"BM" + rng.randbytes(52)]
    length = 54
    while length < size:
        run = rng.randint(64, 2048)
        parts.append(rng.randbytes(run) if rng.random() < 0.3 else bytes(run))
        length += run
    return "bmp", "image/bmp", b"".join(parts)[:size]


def _attachments_statement(block: int, posts: int) -> str:
    rng = random.Random(f"attachments:{GENERATOR_VERSION}:{block}")
    rows = []
    for attachment_id in range(block * ATTACHMENTS_BLOCK + 1, (block + 1) * ATTACHMENTS_BLOCK + 1):
        extension, mime, data = _attachment(rng)
        name = f"{rng.choice(_WORDS)}_{attachment_id}.{extension}"
        digest = hashlib.sha1(data, usedforsecurity=False).hexdigest()
        rows.append(
            f"({attachment_id},{rng.randint(1, posts)},{sql_string(name)},'{mime}',{len(data)},"
            f"X'{digest}',X'{data.hex()}','{_when(rng):%Y-%m-%d %H:%M:%S}')"
        )
    return "INSERT INTO attachments VALUES " + ",".join(rows) + ";\n"


# --- running it -----------------------------------------------------------------------------------

_SESSION = "SET SESSION foreign_key_checks = 0, unique_checks = 0;\n"


def _feed(server: Server, database: str, statements: Iterator[str], errors: list[str]) -> None:
    """Streams statements into one ``mariadb`` client; any failure is recorded for the caller to raise."""
    process = subprocess.Popen(  # noqa: S603 -- fixed client argv
        server.client(database, "--batch"),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stderr is not None
    stdin: IO[bytes] = process.stdin
    try:
        try:
            stdin.write(_SESSION.encode())
            for statement in statements:
                stdin.write(statement.encode())
        except BrokenPipeError:
            pass  # the client stopped on an error; its message is read below
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()
        # The client stops at its first error, so what it writes to stderr is short and cannot fill the pipe.
        message = process.stderr.read().decode("utf-8", "replace").strip()
        if process.wait() != 0:
            errors.append(message or f"mariadb exited {process.returncode}")
    except Exception as exc:  # a bug in a row generator: stop the client, report in the main thread
        process.kill()
        process.wait()
        errors.append(f"{type(exc).__name__}: {exc}")


def _parallel(server: Server, database: str, feeds: Sequence[Iterator[str]]) -> None:
    errors: list[str] = []
    threads = [threading.Thread(target=_feed, args=(server, database, feed, errors), daemon=True) for feed in feeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SqlError("; ".join(errors))


def _lines(statements: Iterator[str]) -> Iterator[str]:
    return (statement + ";\n" for statement in statements)


def measure_sql_bytes(server: Server, database: str) -> int:
    """Size of the reference dump's output: what "N MB of SQL" means in the benchmark."""
    process = subprocess.Popen(server.dump_command(database), stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # noqa: S603
    assert process.stdout is not None
    total = 0
    while chunk := process.stdout.read(1 << 20):
        total += len(chunk)
    _, stderr = process.communicate()
    if process.returncode != 0:
        raise SqlError(f"mariadb-dump failed: {stderr.decode('utf-8', 'replace').strip()}")
    return total


def read_marker(server: Server, database: str) -> tuple[int, int, int] | None:
    """(generator version, requested MB, measured SQL bytes), or None without a marker."""
    if not server.database_exists(database):
        return None
    try:
        rows = server.query(f"SELECT generator_version, size_mb, sql_bytes FROM `{database}`.{MARKER_TABLE}")
    except SqlError:
        return None
    if not rows:
        return None
    version, size_mb, sql_bytes = rows[0]
    return int(version), int(size_mb), int(sql_bytes)


def ensure_dataset(
    server: Server,
    database: str,
    size_mb: int,
    *,
    force: bool = False,
    say: Callable[[str], None] = print,
) -> Dataset:
    """Reuses a matching generated database, or (re)generates it; refuses to drop a database it did not make."""
    check_name(database)
    marker = read_marker(server, database)
    if marker is not None and not force and marker[:2] == (GENERATOR_VERSION, size_mb):
        say(f"reusing database {database}: generator v{marker[0]}, {marker[2] / MIB:.1f} MiB of SQL (marker found)")
        return Dataset(database, size_mb, marker[2], True, 0.0, server.row_counts(database))
    if marker is None and server.database_exists(database) and server.tables(database):
        raise SystemExit(
            f"database {database} exists, has tables and no {MARKER_TABLE} marker: not generated by the bench, "
            "so it is left alone; pick another --database or drop it yourself"
        )
    return generate(server, database, size_mb, say=say)


def generate(server: Server, database: str, size_mb: int, *, say: Callable[[str], None] = print) -> Dataset:
    plan = Plan.for_size(size_mb)
    say(
        f"generating database {database} (~{size_mb} MiB of SQL; takes a few minutes, reused next time): "
        f"{plan.users} users, {plan.posts} posts, {plan.events_log} events, {plan.attachments} attachments, "
        f"{plan.metrics} metrics"
    )
    started = time.monotonic()
    server.create_empty_database(database)
    for statement in _TABLES:
        server.execute(statement, database)
    # Three clients at once: the server-side tables, and the two Python-generated ones.
    _parallel(
        server,
        database,
        [
            _lines(_server_statements(plan)),
            (_posts_statement(block, plan.users) for block in range(plan.posts // POSTS_BLOCK)),
            (_attachments_statement(block, plan.posts) for block in range(plan.attachments // ATTACHMENTS_BLOCK)),
        ],
    )
    say(f"  rows inserted in {time.monotonic() - started:.0f} s; adding indexes, foreign keys and routines")
    _parallel(server, database, [_lines(iter(_INDEXES + _OBJECTS))])
    sql_bytes = measure_sql_bytes(server, database)
    posts = plan.posts
    while sql_bytes < size_mb * MIB:
        # Estimates drifted (e.g. another server version prints numbers differently): add whole blocks of posts.
        missing = size_mb * MIB - sql_bytes
        blocks = math.ceil(missing * 1.02 / (ROW_BYTES["posts"] * POSTS_BLOCK))
        first = posts // POSTS_BLOCK
        say(f"  {sql_bytes / MIB:.1f} MiB of SQL, short of {size_mb}: adding {blocks * POSTS_BLOCK} posts")
        _parallel(server, database, [(_posts_statement(block, plan.users) for block in range(first, first + blocks))])
        posts += blocks * POSTS_BLOCK
        sql_bytes = measure_sql_bytes(server, database)
    seconds = time.monotonic() - started
    # The marker comes last, so an interrupted run leaves none and is redone next time.
    server.execute(
        f"CREATE TABLE {MARKER_TABLE} (generator_version INT NOT NULL, size_mb INT NOT NULL, sql_bytes BIGINT NOT NULL,"
        " seconds DOUBLE NOT NULL, generated_at DATETIME NOT NULL) ENGINE=InnoDB",
        database,
    )
    server.execute(
        f"INSERT INTO {MARKER_TABLE} VALUES ({GENERATOR_VERSION}, {size_mb}, {sql_bytes}, {seconds:.1f}, NOW())",
        database,
    )
    say(f"  generated in {seconds:.0f} s: {sql_bytes / MIB:.1f} MiB of SQL (mariadb-dump --hex-blob output)")
    return Dataset(database, size_mb, sql_bytes, False, seconds, server.row_counts(database))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.datagen", description=__doc__.splitlines()[0])
    parser.add_argument("--mysql-url", default="mysql://root@127.0.0.1:3306/backup_bench")
    parser.add_argument("--database", help="overrides the URL's database name")
    parser.add_argument("--size-mb", type=int, default=520, help="MiB of SQL to generate (default 520)")
    parser.add_argument("--force", action="store_true", help="regenerate even when a matching marker is found")
    args = parser.parse_args(argv)
    server = Server.from_url(args.mysql_url)
    database = args.database or server.target_database(args.mysql_url)
    dataset = ensure_dataset(server, database, args.size_mb, force=args.force)
    for table, count in sorted(dataset.rows.items()):
        print(f"  {table:<14} {count:>10} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())

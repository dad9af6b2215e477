"""Generates the files benchmark's tree: media, thousands of small documents and large logs.

    .venv/bin/python -m bench.treegen [--size-mib 560] [--force] [--mutate PERCENT | --revert]

Under ``var/bench/tree/{uploads,configs,logs}``, deterministically from a seed:

  uploads/media/      ~55% of the bytes: random bytes (incompressible) named .jpg/.mp4/.zip, 1-40 MiB each
  uploads/documents/  ~3600 documents of 1-30 KiB: text, Markdown, HTML, JSON, YAML, in nested folders
  configs/            ~400 small YAML/INI files
  logs/               ~35% of the bytes: 20-80 MiB access/application logs

Every file is described by a plan computed from the seed alone (path, kind, size, seed of its own),
so any one file can be written again on its own. A marker file records the generator version, seed
and size: a tree carrying the same marker is reused. :func:`mutate` changes 1% of the files (modifies,
adds, deletes) and records what it did in a journal; :func:`revert` (run by :func:`ensure_tree` and
by the next :func:`mutate`) rewrites exactly those files, so every run starts from the pristine tree
without keeping a second copy of it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from backup_common.engine.files.model import TREES
from bench import datagen

GENERATOR_VERSION = 1
DEFAULT_SEED = 20240601
DEFAULT_SIZE_MIB = 560  # ~587 MB: comfortably above the 500 MB
MIB = 1 << 20
KIB = 1 << 10
ROOT = Path(__file__).resolve().parent.parent
TREE_DIR = ROOT / "var" / "bench" / "tree"
MARKER = ".treegen.json"  # at the tree root, outside the three backed-up subtrees
JOURNAL = ".mutation.json"
DOCUMENTS = 3600
CONFIGS = 400
MEDIA_SHARE = 0.55
LOG_SHARE = 0.35
# Fixed modification times, so that the pristine tree is identical from one generation to the next.
BASE_MTIME = 1_700_000_000

Kind = Literal["media", "document", "config", "log"]


@dataclass(frozen=True)
class FileSpec:
    path: str  # relative to the tree root, e.g. "uploads/media/2023/IMG_0042.jpg"
    kind: Kind
    size: int  # approximate for text (whole lines), exact for media
    seed: str
    mtime: int


@dataclass(frozen=True)
class Mutation:
    modified: list[str]
    added: list[FileSpec]
    deleted: list[str]

    @property
    def count(self) -> int:
        return len(self.modified) + len(self.added) + len(self.deleted)


# --- plan -------------------------------------------------------------------------------------------

_DEPARTMENTS = ("finance", "legal", "marketing", "engineering", "support", "sales", "hr", "operations")
_PROJECTS = ("atlas", "borealis", "cobalt", "delta", "ember", "fjord", "granite", "harbor", "ion", "juniper")
_SERVICES = ("gateway", "database", "files", "worker", "scheduler", "mailer", "search", "cache", "auth", "billing")
_DOC_TYPES = ((".txt", 3), (".md", 3), (".html", 2), (".json", 2), (".yaml", 1))
_MEDIA_TYPES = ((".jpg", "photos", "IMG_"), (".mp4", "videos", "VID_"), (".zip", "archives", "bundle-"))


def plan(seed: int = DEFAULT_SEED, size_mib: int = DEFAULT_SIZE_MIB) -> list[FileSpec]:
    """Every file of the pristine tree; cheap (no content), so it is recomputed rather than stored."""
    rng = random.Random(f"plan:{GENERATOR_VERSION}:{seed}:{size_mib}")
    specs: list[FileSpec] = []

    def add(path: str, kind: Kind, size: int) -> None:
        specs.append(FileSpec(path, kind, size, f"{seed}:{path}", BASE_MTIME + len(specs) * 7))

    for index in range(DOCUMENTS):
        suffix = rng.choices([s for s, _ in _DOC_TYPES], weights=[w for _, w in _DOC_TYPES])[0]
        folder = f"{rng.choice(_DEPARTMENTS)}/{rng.randint(2016, 2024)}/{rng.choice(_PROJECTS)}"
        if rng.random() < 0.5:
            folder += f"/{rng.choice(('drafts', 'final', 'archive', 'shared', 'review'))}"
        add(f"uploads/documents/{folder}/doc-{index:05d}{suffix}", "document", rng.randint(1 * KIB, 30 * KIB))
    for index in range(CONFIGS):
        service = rng.choice(_SERVICES)
        environment = rng.choice(("production", "staging", "development"))
        suffix = rng.choice((".yaml", ".yaml", ".ini", ".conf"))
        add(f"configs/{service}/{environment}/{service}-{index:03d}{suffix}", "config", rng.randint(512, 8 * KIB))
    media_budget = int(size_mib * MIB * MEDIA_SHARE)
    index = 0
    while media_budget >= MIB:
        size = min(media_budget, rng.randint(1 * MIB, 40 * MIB))
        suffix, folder, prefix = rng.choice(_MEDIA_TYPES)
        add(f"uploads/media/{folder}/{rng.randint(2019, 2024)}/{prefix}{index:04d}{suffix}", "media", size)
        media_budget -= size
        index += 1
    log_budget = int(size_mib * MIB * LOG_SHARE)
    index = 0
    while log_budget >= 20 * MIB:
        size = min(log_budget, rng.randint(20 * MIB, 80 * MIB))
        if log_budget - size < 20 * MIB:
            size = log_budget  # no log smaller than 20 MiB: the remainder goes to the last one
        service = _SERVICES[index % len(_SERVICES)]
        add(f"logs/{service}/{service}-2024-05-{index + 1:02d}.log", "log", size)
        log_budget -= size
        index += 1
    return specs


# --- content ----------------------------------------------------------------------------------------


def write_file(root: Path, spec: FileSpec, *, mtime: int | None = None) -> int:
    """Writes one file as its spec says (bytes depend on the spec alone); returns its size."""
    path = root / spec.path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(spec.seed)
    with path.open("wb") as handle:
        for chunk in _content(rng, spec):
            handle.write(chunk)
        size = handle.tell()
    when = spec.mtime if mtime is None else mtime
    os.utime(path, (when, when))
    return size


def _content(rng: random.Random, spec: FileSpec) -> Iterator[bytes]:
    if spec.kind == "media":
        remaining = spec.size
        while remaining > 0:
            step = min(remaining, MIB)
            yield rng.randbytes(step)
            remaining -= step
    elif spec.kind == "log":
        yield from _log_lines(rng, spec.size, start=BASE_MTIME - 86_400 + rng.randrange(3600))
    elif spec.kind == "config":
        yield _config(rng, spec.path, spec.size).encode()
    else:
        yield _document(rng, spec.path, spec.size).encode()


def _document(rng: random.Random, path: str, size: int) -> str:
    title = datagen.prose(rng, 40).split(".")[0][:60]
    if path.endswith(".html"):
        parts = [
            f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>{title}</title></head>\n<body>'
        ]
        length = 0
        while length < size:
            paragraph = datagen.prose(rng, rng.randint(200, 900))
            project = rng.choice(_PROJECTS)
            block = f'<section class="{project}">\n  <h2>{paragraph[:40]}</h2>\n  <p>{paragraph}</p>\n</section>'
            parts.append(block)
            length += len(block)
        return "\n".join(parts) + "\n</body>\n</html>\n"
    if path.endswith(".json"):
        items = []
        length = 0
        while length < size:
            text = datagen.prose(rng, rng.randint(60, 400))
            item = {
                "id": rng.randrange(10**9),
                "author": f"user{rng.randrange(5000)}@example.com",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(BASE_MTIME - rng.randrange(10**8))),
                "tags": rng.sample(_PROJECTS, rng.randint(0, 3)),
                "score": round(rng.random() * 100, 2),
                "body": text,
            }
            items.append(item)
            length += len(text) + 140
        return json.dumps({"title": title, "items": items}, indent=2) + "\n"
    if path.endswith(".yaml"):
        lines = [f"title: {title!r}", f"owner: {rng.choice(_DEPARTMENTS)}", "sections:"]
        length = 0
        while length < size:
            text = datagen.prose(rng, rng.randint(80, 500)).replace("\n", " ")
            lines += [f"  - heading: {text[:30]!r}", f"    weight: {rng.randint(1, 99)}", f"    text: {text!r}"]
            length += len(text) + 60
        return "\n".join(lines) + "\n"
    heading = f"# {title}\n\n" if path.endswith(".md") else f"{title}\n{'=' * len(title)}\n\n"
    return heading + datagen.prose(rng, size) + "\n"


def _config(rng: random.Random, path: str, size: int) -> str:
    service = path.split("/")[1]
    lines: list[str] = []
    ini = not path.endswith(".yaml")
    section = 0
    while sum(len(line) + 1 for line in lines) < size:
        name = rng.choice(("server", "database", "cache", "logging", "limits", "tls", "queue", "storage", "metrics"))
        settings = {
            "host": f"{service}-{rng.randint(1, 9)}.internal",
            "port": str(rng.choice((80, 443, 3306, 5432, 5672, 6379, 8080, 9000))),
            "timeout_seconds": str(rng.choice((5, 10, 30, 60, 120))),
            "max_connections": str(rng.choice((16, 32, 64, 128, 256))),
            "enabled": rng.choice(("true", "false")),
            "level": rng.choice(("debug", "info", "warning", "error")),
            "path": f"/var/lib/{service}/{rng.choice(_PROJECTS)}",
            "retention_days": str(rng.choice((7, 14, 30, 90, 365))),
        }
        keys = rng.sample(sorted(settings), rng.randint(3, len(settings)))
        if ini:
            lines.append(f"[{name}.{section}]")
            lines += [f"{key} = {settings[key]}" for key in keys]
            lines.append("")
        else:
            lines.append(f"{name}_{section}:")
            lines += [f"  {key}: {settings[key]}" for key in keys]
        section += 1
    return "\n".join(lines) + "\n"


_PATHS = (
    "/api/v1/uploads/{n}", "/api/v1/uploads/{n}/thumbnail", "/api/v1/documents/{n}", "/api/v1/users/{n}/profile",
    "/api/v1/search?q={w}", "/static/js/app.{h}.js", "/static/css/site.{h}.css", "/login", "/logout",
    "/api/v2/backups/{n}/status", "/healthz", "/api/v1/projects/{w}/members", "/download/{h}/{w}.pdf",
)  # fmt: skip
_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "curl/8.5.0",
    "python-requests/2.31.0",
    "Prometheus/2.51.0",
)
_MESSAGES = (
    "request completed", "cache miss for key {h}", "slow query took {ms} ms", "retrying upstream call (attempt {a})",
    "user {n} signed in", "token refreshed for session {h}", "queued job {h}", "upstream returned 503, backing off",
    "connection pool exhausted, waiting {ms} ms", "checksum mismatch on chunk {n}, refetching",
)  # fmt: skip


def _log_lines(rng: random.Random, size: int, *, start: int) -> Iterator[bytes]:
    """Access and application lines with rising timestamps; random ids keep them from compressing too well."""
    words = [word for word in datagen.prose(rng, 4000).lower().replace(".", "").split() if word.isalpha()][:300]
    clients = [f"10.{rng.randint(0, 9)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}" for _ in range(400)]
    levels = ("INFO", "INFO", "INFO", "INFO", "INFO", "DEBUG", "DEBUG", "WARN", "ERROR")
    written = 0
    clock = float(start)
    batch: list[str] = []
    while written < size:
        clock += rng.expovariate(40.0)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(clock)) + f".{int(clock * 1000) % 1000:03d}Z"
        level = rng.choice(levels)
        request = f"{rng.getrandbits(64):016x}"
        if rng.random() < 0.75:
            template = rng.choice(_PATHS)
            path = template.format(n=rng.randint(1, 99999), w=rng.choice(words), h=f"{rng.getrandbits(32):08x}")
            status = rng.choice((200, 200, 200, 200, 200, 304, 201, 404, 500, 302))
            line = (
                f"{stamp} {level:<5} [web-{rng.randint(1, 4)}] req={request}"
                f" {rng.choice(('GET', 'GET', 'POST', 'PUT'))} {path} {status} {rng.expovariate(0.05):.1f}ms"
                f" ip={rng.choice(clients)}"
                f' bytes={rng.randint(0, 250000)} ua="{rng.choice(_AGENTS)}"'
            )
        else:
            message = rng.choice(_MESSAGES).format(
                h=f"{rng.getrandbits(32):08x}", ms=rng.randint(100, 9000), a=rng.randint(2, 5), n=rng.randint(1, 99999)
            )
            line = f"{stamp} {level:<5} [worker-{rng.randint(1, 8)}] req={request} {message}"
            if level == "ERROR" and rng.random() < 0.3:
                line += (
                    "\nTraceback (most recent call last):\n"
                    f'  File "/srv/app/{rng.choice(words)}.py", line {rng.randint(10, 900)}, in handle\n'
                    f"TimeoutError: upstream {rng.choice(_SERVICES)} did not answer within 30 s"
                )
        batch.append(line)
        written += len(line) + 1
        if len(batch) >= 2000:
            yield ("\n".join(batch) + "\n").encode()
            batch = []
    if batch:
        yield ("\n".join(batch) + "\n").encode()


# --- tree -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tree:
    root: Path
    files: int
    bytes: int
    generated_seconds: float | None  # None when reused


def _marker(seed: int, size_mib: int) -> dict[str, int]:
    return {"version": GENERATOR_VERSION, "seed": seed, "size_mib": size_mib}


def ensure_tree(
    root: Path = TREE_DIR,
    *,
    seed: int = DEFAULT_SEED,
    size_mib: int = DEFAULT_SIZE_MIB,
    force: bool = False,
    say: Callable[[str], None] = print,
) -> Tree:
    """The pristine tree: reused when its marker matches (after undoing any recorded mutation)."""
    marker_path = root / MARKER
    specs = plan(seed, size_mib)
    try:
        marker = json.loads(marker_path.read_text())
    except (OSError, ValueError):
        marker = None
    if (
        not force
        and isinstance(marker, dict)
        and {k: marker.get(k) for k in ("version", "seed", "size_mib")} == (_marker(seed, size_mib))
    ):
        revert(root, seed=seed, size_mib=size_mib, say=say)
        return Tree(root, int(marker["files"]), int(marker["bytes"]), None)
    say(f"generating {size_mib} MiB of files under {root} (seed {seed}) ...")
    started = time.monotonic()
    # Whatever is there (another version, a half-written tree) goes: the marker is written last.
    marker_path.unlink(missing_ok=True)
    for tree in TREES:
        shutil.rmtree(root / tree, ignore_errors=True)
    (root / JOURNAL).unlink(missing_ok=True)
    total = 0
    for number, spec in enumerate(specs, 1):
        total += write_file(root, spec)
        if number % 1000 == 0 or spec.kind in ("log",):
            say(f"  {number}/{len(specs)} files, {total / MIB:.0f} MiB")
    seconds = time.monotonic() - started
    marker_path.write_text(json.dumps({**_marker(seed, size_mib), "files": len(specs), "bytes": total}) + "\n")
    say(f"generated {len(specs)} files, {total / MIB:.1f} MiB in {seconds:.1f} s")
    return Tree(root, len(specs), total, seconds)


def mutate(
    root: Path = TREE_DIR,
    percent: float = 1.0,
    *,
    seed: int = DEFAULT_SEED,
    size_mib: int = DEFAULT_SIZE_MIB,
    say: Callable[[str], None] = print,
) -> Mutation:
    """Changes ``percent`` % of the files, the same way every time: 60% modified, 20% added, 20% deleted.

    Most picks are documents (they are most of the files), as in real use; one log always grows (logs
    do, all day) and one new upload is a media file. Changed files get the current time as mtime, as an
    editor would leave them. The journal is written before the first change, so that an interrupted
    mutation is still undone by :func:`revert`.
    """
    revert(root, seed=seed, size_mib=size_mib, say=say)
    specs = plan(seed, size_mib)
    rng = random.Random(f"mutate:{GENERATOR_VERSION}:{seed}:{percent}")
    count = max(3, round(len(specs) * percent / 100))
    added_count = deleted_count = max(1, count // 5)
    modified_count = count - added_count - deleted_count
    logs = [spec for spec in specs if spec.kind == "log"]
    others = [spec for spec in specs if spec.kind != "log"]
    picked = rng.sample(others, modified_count - 1 + deleted_count)
    modified = [rng.choice(logs), *picked[: modified_count - 1]]
    deleted = picked[modified_count - 1 :]
    now = int(time.time())
    added: list[FileSpec] = []
    for index in range(added_count):
        if index == 0:
            path = "uploads/media/photos/2024/IMG_new000.jpg"
            added.append(FileSpec(path, "media", rng.randint(2 * MIB, 8 * MIB), f"added:{seed}:{path}", now))
            continue
        folder = f"{rng.choice(_DEPARTMENTS)}/2024/{rng.choice(_PROJECTS)}/new"
        path = f"uploads/documents/{folder}/doc-new-{index:03d}.md"
        added.append(FileSpec(path, "document", rng.randint(1 * KIB, 30 * KIB), f"added:{seed}:{path}", now))
    mutation = Mutation([spec.path for spec in modified], added, [spec.path for spec in deleted])
    (root / JOURNAL).write_text(
        json.dumps({"modified": mutation.modified, "added": [s.path for s in added], "deleted": mutation.deleted})
    )
    for spec in modified:
        target = root / spec.path
        if spec.kind == "log":
            # Logs grow at the end: ~2% more lines, continuing after the last timestamp.
            extra = _log_lines(random.Random(f"grow:{spec.seed}"), max(spec.size // 50, MIB), start=BASE_MTIME + 60)
            with target.open("ab") as handle:
                for chunk in extra:
                    handle.write(chunk)
        elif spec.kind == "media":
            write_file(root, FileSpec(spec.path, "media", spec.size, f"edited:{spec.seed}", now), mtime=now)
        else:
            # An edit: new content of a somewhat different length.
            edited_size = max(512, int(spec.size * rng.uniform(0.8, 1.3)))
            write_file(root, FileSpec(spec.path, spec.kind, edited_size, f"edited:{spec.seed}", now), mtime=now)
        os.utime(target, (now, now))
    for spec in added:
        write_file(root, spec, mtime=now)
    for spec in deleted:
        (root / spec.path).unlink(missing_ok=True)
    say(
        f"mutated {mutation.count} of {len(specs)} files ({percent:g}%): "
        f"{len(mutation.modified)} modified, {len(added)} added, {len(mutation.deleted)} deleted"
    )
    return mutation


def revert(
    root: Path = TREE_DIR,
    *,
    seed: int = DEFAULT_SEED,
    size_mib: int = DEFAULT_SIZE_MIB,
    say: Callable[[str], None] = print,
) -> bool:
    """Undoes the recorded mutation, if any: rewrites the files it modified or deleted, removes those it added."""
    journal_path = root / JOURNAL
    try:
        journal = json.loads(journal_path.read_text())
    except FileNotFoundError:
        return False
    by_path = {spec.path: spec for spec in plan(seed, size_mib)}
    for path in journal["added"]:
        (root / path).unlink(missing_ok=True)
        _remove_empty_parents(root, root / path)
    for path in [*journal["modified"], *journal["deleted"]]:
        write_file(root, by_path[path])
    # Directories keep the mtimes the mutation gave them: only files are compared and backed up by content.
    journal_path.unlink()
    changed = len(journal["modified"]) + len(journal["added"]) + len(journal["deleted"])
    say(f"reverted the previous mutation ({changed} files)")
    return True


def _remove_empty_parents(root: Path, path: Path) -> None:
    parent = path.parent
    while parent != root and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.treegen", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--root", type=Path, default=TREE_DIR)
    parser.add_argument("--size-mib", type=int, default=DEFAULT_SIZE_MIB)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--force", action="store_true", help="generate again even when the marker matches")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--mutate", type=float, metavar="PERCENT", help="then change this percentage of the files")
    action.add_argument("--revert", action="store_true", help="only undo a recorded mutation")
    args = parser.parse_args(argv)
    if args.revert:
        revert(args.root, seed=args.seed, size_mib=args.size_mib)
        return 0
    tree = ensure_tree(args.root, seed=args.seed, size_mib=args.size_mib, force=args.force)
    print(f"{tree.root}: {tree.files} files, {tree.bytes / MIB:.1f} MiB")
    if args.mutate is not None:
        mutate(args.root, args.mutate, seed=args.seed, size_mib=args.size_mib)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the files part records about each path, shared by the archiver, the restorer and the worker.

A files part's archive holds each file larger than packs.PACK_FILE_BYTES as a member of its own,
`<tree>/<relative path>`, where <tree> is `uploads`, `configs` or `logs`; smaller files, directories,
symbolic links and hard links travel in pack members (`packs/NNNNNN.tar`, see packs.py), and their
records name the pack. So does a large file whose name a ZIP member cannot carry (not UTF-8, or with
a backslash): it gets a pack of its own, since tar takes any byte string as a name. A file an
incremental found grown from its parent's version (a log, typically) carries only the bytes appended
to it, as `appended/<tree>/<relative path>`, packed or not; its record gives the size of the version
it extends.

Its manifest (`files.json`) lists the `state` of every tree at that backup (what a restore of it must
reproduce), the `entries` this archive carries (all of them for a complete backup; new and changed
ones for an incremental) and the `deleted` paths since the parent. A hard link is the second and later
path of one file found in a tree (in path order): its record names the first path as its `target`
and carries no content. Tree roots are no entries: the manifest's `roots` gives the mode and mtime_ns
of each root the backup found (manifests written before it have none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["file", "dir", "symlink", "hardlink"]
KINDS: tuple[Kind, ...] = ("file", "dir", "symlink", "hardlink")
TREES = ("uploads", "configs", "logs")
APPENDED_PREFIX = "appended/"


@dataclass(frozen=True)
class Entry:
    """One path as the scanner found it (never following symbolic links).

    Paths are text as the os module gives them: a name that is not UTF-8 holds its undecodable bytes
    as lone surrogates (PEP 383), which os functions turn back into the same bytes.
    """

    path: str  # "<tree>/<relative posix path>", no trailing slash
    kind: Kind
    mode: int  # permission bits, stat.S_IMODE
    mtime_ns: int
    size: int  # 0 for directories; for symbolic links, the length of the target
    target: str | None = None  # a symbolic link's target; a hard link's first path


@dataclass(frozen=True)
class FileRecord:
    """One path of a files backup: as the archiver wrote it into the manifest, or as a restore read it
    back (chain_check.py). Its fields, in this order, are the manifest's record (``asdict``)."""

    path: str
    kind: Kind
    mode: int
    mtime_ns: int
    size: int
    sha256: str | None  # files only: of the bytes archived
    target: str | None = None  # as Entry.target
    stored: bool = False  # kept uncompressed (already-compressed format)
    changed_while_read: bool = False  # kept changing over every attempt; the bytes may be torn
    # Where the archive holds it: manifest entries only, a state's records have no placement.
    pack: str | None = None  # the pack member holding it; None: a member of its own, named by the path
    offset: int | None = None  # packed files only: where the content starts in the pack's bytes
    # Grown files only: the first base_size bytes are the parent backup's version, the rest is archived.
    base_size: int | None = None

    @property
    def member(self) -> str:
        """The member holding it: its pack, or one of its own."""
        if self.pack is not None:
            return self.pack
        if self.base_size is not None:
            return APPENDED_PREFIX + self.path
        return self.path + "/" if self.kind == "dir" else self.path

    @property
    def archived_size(self) -> int:
        """How many of its bytes the archive holds."""
        return self.size - (self.base_size or 0)


@dataclass(frozen=True)
class Base:
    """A file's version in the parent backup, which the file may have grown from."""

    size: int
    sha256: str


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str  # e.g. "socket", "character device", "unreadable: Permission denied"


@dataclass
class ArchiveResult:
    records: list[FileRecord] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    bytes_read: int = 0
    # Packs of their own left by files that failed while they were streamed: no record names them.
    abandoned: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RestoreSummary:
    target: str
    files: int
    directories: int
    symlinks: int
    deleted: int
    bytes_written: int
    backups_applied: list[str]
    hard_links: int = 0


@dataclass(frozen=True)
class FilesRestoreProgress:
    """How far a restore of the trees is: its phase ("checking", "writing", "swapping", "done") and the
    files and bytes written so far, of those it will write."""

    phase: str
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int

"""Finds what a files backup holds: the entries of the uploads, configs and logs trees, and the mode
and time of each tree root.

The walk never follows symbolic links (they are entries of their own) and never reads file content.
Every name is taken as the bytes it is (undecodable ones as lone surrogates, see model.Entry).
Paths of one tree that are the same file are found as hard links: the first in path order is the
file, the others link to it. What cannot be backed up (sockets, FIFOs, device files, directories
that cannot be listed) is listed as skipped, with the reason, instead of silently left out.

Synchronous: callers run it in a worker thread.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from backup_common.engine.files.model import TREES, Entry, Skipped

_SPECIAL_KINDS: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISCHR, "character device"),
)


def compile_excludes(patterns: list[str]) -> Callable[[str], bool]:
    """A predicate telling whether an entry path (``"<tree>/<relative path>"``) is excluded.

    Each glob is matched against the path relative to its tree and against the whole
    ``<tree>/<relative path>``, so both ``**/cache/**`` and ``logs/*.tmp`` work. ``*`` matches
    within one path segment, ``?`` one character other than ``/``, ``[...]`` a character class
    (``[!...]`` or ``[^...]`` negated), and a ``**`` segment any number of segments, zero included:
    ``**/*.tmp`` matches ``a.tmp`` at the top of a tree, and ``cache/**`` matches the directory
    ``cache`` itself, so the scanner leaves it out with everything below it. A leading or trailing
    ``/`` is ignored. Matching is case-sensitive. The patterns are translated to one regex, once.
    """
    alternatives = [regex for pattern in patterns if (regex := _glob_to_regex(pattern)) is not None]
    if not alternatives:
        return lambda path: False
    matcher = re.compile("(?:" + "|".join(alternatives) + r")\Z", re.DOTALL)

    def excluded(path: str) -> bool:
        if matcher.match(path):
            return True
        _, separator, relative = path.partition("/")
        return bool(separator) and matcher.match(relative) is not None

    return excluded


def _glob_to_regex(pattern: str) -> str | None:
    segments = [segment for segment in pattern.strip("/").split("/") if segment]
    # "a/**/**/b" means the same as "a/**/b".
    collapsed: list[str] = []
    for segment in segments:
        if not (segment == "**" and collapsed and collapsed[-1] == "**"):
            collapsed.append(segment)
    if not collapsed:
        return None
    out: list[str] = []
    last = len(collapsed) - 1
    for index, segment in enumerate(collapsed):
        if segment != "**":
            out.append(_segment_to_regex(segment) + ("" if index == last else "/"))
        elif index != last:
            out.append("(?:[^/]+/)*")  # zero or more whole segments
        elif index == 0:
            out.append(".*")  # the pattern is just "**"
        else:
            # "x/**": everything below x, and x itself. The previous piece ends with "/".
            out[-1] = out[-1][:-1]
            out.append("(?:/.*)?")
    return "".join(out)


def _segment_to_regex(segment: str) -> str:
    out: list[str] = []
    index = 0
    while index < len(segment):
        char = segment[index]
        index += 1
        if char == "*":
            while index < len(segment) and segment[index] == "*":
                index += 1  # "a**b" inside a segment is "a*b"
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = index
            if end < len(segment) and segment[end] in "!^":
                end += 1
            if end < len(segment) and segment[end] == "]":
                end += 1  # a "]" first in the class is a member
            end = segment.find("]", end)
            if end < 0:
                out.append(re.escape(char))  # no closing bracket: a literal "["
                continue
            body = segment[index:end]
            index = end + 1
            negated = body[:1] in ("!", "^")
            if negated:
                body = body[1:]
            body = body.replace("\\", "\\\\").replace("^", "\\^").replace("[", "\\[").replace("]", "\\]")
            out.append(f"[^/{body}]" if negated else f"(?!/)[{body}]")
        else:
            out.append(re.escape(char))
    return "".join(out)


@dataclass
class Scan:
    """What a scan found: the entries of every tree, what it skipped, and the tree roots themselves."""

    entries: list[Entry]
    skipped: list[Skipped]
    # Each tree root found, as a directory entry whose path is the tree name: a restore gives the
    # roots their mode and time back, but a root is never an entry (nothing archives it).
    roots: dict[str, Entry] = field(default_factory=dict)


def scan(roots: dict[str, Path], exclude: Callable[[str], bool]) -> Scan:
    """The entries of every tree in ``roots`` (in TREES order, then by path), what was skipped, and the roots.

    A tree missing from ``roots`` or from the disk yields nothing. Directories are entries of their
    own (so empty ones are kept), the tree root excepted. An excluded path, or the tree name itself,
    is left out with everything below it.
    """
    found = Scan([], [])
    for tree in TREES:
        root = roots.get(tree)
        if root is None or exclude(tree):
            continue
        tree_entries: list[Entry] = []
        tree_skipped: list[Skipped] = []
        inodes: dict[str, tuple[int, int]] = {}
        root_entry = _scan_tree(tree, root, exclude, tree_entries, tree_skipped, inodes)
        if root_entry is not None:
            found.roots[tree] = root_entry
        found.entries.extend(_with_hard_links(sorted(tree_entries, key=lambda entry: entry.path), inodes))
        found.skipped.extend(sorted(tree_skipped, key=lambda item: item.path))
    return found


def scan_trees(roots: dict[str, Path], exclude: Callable[[str], bool]) -> tuple[list[Entry], list[Skipped]]:
    """:func:`scan`'s entries and what it skipped, for callers that need no roots."""
    found = scan(roots, exclude)
    return found.entries, found.skipped


def _with_hard_links(entries: list[Entry], inodes: dict[str, tuple[int, int]]) -> list[Entry]:
    """``entries`` (sorted by path) with each file but the first of its inode made a hard link to it.

    ``inodes`` maps the files that have more than one name to their (device, inode).
    """
    first: dict[tuple[int, int], str] = {}
    linked: list[Entry] = []
    for entry in entries:
        inode = inodes.get(entry.path)
        if inode is not None:
            primary = first.setdefault(inode, entry.path)
            if primary != entry.path:
                entry = Entry(entry.path, "hardlink", entry.mode, entry.mtime_ns, entry.size, primary)
        linked.append(entry)
    return linked


def _scan_tree(
    tree: str,
    root: Path,
    exclude: Callable[[str], bool],
    entries: list[Entry],
    skipped: list[Skipped],
    inodes: dict[str, tuple[int, int]],
) -> Entry | None:
    """Adds the entries of one tree, and the (device, inode) of its files with several names;
    returns its root, as found before it was listed."""
    try:
        # The root itself may be a link (a mounted volume, say): the operator configured it.
        root_stat = os.stat(root)
    except FileNotFoundError:
        return None
    except OSError as exc:
        skipped.append(Skipped(tree, f"unreadable: {exc.strerror}"))
        return None
    if not stat.S_ISDIR(root_stat.st_mode):
        skipped.append(Skipped(tree, "not a directory"))
        return None
    # An explicit stack rather than recursion: trees can be deeper than Python's recursion limit.
    pending: list[tuple[str, str, os.stat_result | None]] = [(os.fspath(root), tree, None)]
    while pending:
        directory, path, directory_stat = pending.pop()
        try:
            listing = os.scandir(directory)
        except FileNotFoundError:
            continue  # removed since it was listed
        except OSError as exc:
            skipped.append(Skipped(path, f"unreadable: {exc.strerror}"))
            continue
        if directory_stat is not None:
            entries.append(Entry(path, "dir", stat.S_IMODE(directory_stat.st_mode), directory_stat.st_mtime_ns, 0))
        with listing:
            for item in listing:
                child = f"{path}/{item.name}"
                if exclude(child):
                    continue
                try:
                    item_stat = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed since it was listed
                except OSError as exc:
                    skipped.append(Skipped(child, f"unreadable: {exc.strerror}"))
                    continue
                mode = item_stat.st_mode
                if stat.S_ISDIR(mode):
                    pending.append((item.path, child, item_stat))
                elif stat.S_ISREG(mode):
                    entries.append(Entry(child, "file", stat.S_IMODE(mode), item_stat.st_mtime_ns, item_stat.st_size))
                    if item_stat.st_nlink > 1:
                        inodes[child] = (item_stat.st_dev, item_stat.st_ino)
                elif stat.S_ISLNK(mode):
                    _add_link(child, item.path, item_stat, entries, skipped)
                else:
                    reason = next((name for test, name in _SPECIAL_KINDS if test(mode)), "unsupported file type")
                    skipped.append(Skipped(child, reason))
    return Entry(tree, "dir", stat.S_IMODE(root_stat.st_mode), root_stat.st_mtime_ns, 0)


def _add_link(
    path: str, full_path: str, link_stat: os.stat_result, entries: list[Entry], skipped: list[Skipped]
) -> None:
    try:
        target = os.readlink(full_path)
    except FileNotFoundError:
        return  # removed since it was listed
    except OSError as exc:
        skipped.append(Skipped(path, f"unreadable: {exc.strerror}"))
        return
    size = len(os.fsencode(target))
    entries.append(Entry(path, "symlink", stat.S_IMODE(link_stat.st_mode), link_stat.st_mtime_ns, size, target))

"""Directories reached one path component at a time through descriptors, never following a link.

Both the archiver and the restore walk down trees that someone else may change meanwhile: opening
each component with ``O_NOFOLLOW`` relative to its parent's descriptor means a directory swapped for
a symbolic link is refused, never followed out of the tree.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from contextlib import suppress
from types import TracebackType

DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# An existing file below a directory descriptor. O_NONBLOCK: a file swapped for a FIFO must not hang
# open(); O_NOCTTY: nor may a terminal device become the process's controlling terminal.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK


class NotADirectoryOnPath(Exception):
    """A component of the path is a symbolic link, or not a directory."""

    def __init__(self, components: Sequence[str], depth: int) -> None:
        self.path = "/".join(components[:depth])  # up to and including that component
        self.component = components[depth - 1]
        super().__init__(f"{self.path!r} is a symbolic link or not a directory")


def open_below(fd: int, components: Sequence[str], *, create: bool = False) -> int:
    """A new descriptor of the directory ``components`` below the directory ``fd`` (left open).

    Missing directories are created (mode 0700) when ``create``; otherwise FileNotFoundError. Raises
    NotADirectoryOnPath for a link or non-directory on the way, OSError for anything else.
    """
    current = os.dup(fd)
    try:
        for depth, name in enumerate(components, start=1):
            try:
                child = _open_child(current, name, create=create)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise NotADirectoryOnPath(components, depth) from None
                raise
            os.close(current)
            current = child
    except BaseException:
        os.close(current)
        raise
    return current


def _open_child(parent: int, name: str, *, create: bool) -> int:
    try:
        return os.open(name, DIRECTORY_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise
    with suppress(FileExistsError):  # made meanwhile, by another restore thread say
        os.mkdir(name, 0o700, dir_fd=parent)
    return os.open(name, DIRECTORY_FLAGS, dir_fd=parent)


class ParentDirectories:
    """The directory of each path in turn, keeping the last one open: paths come sorted, so the
    entries of one directory follow each other and share its descriptor."""

    def __init__(self, open_directory: Callable[[str], int]) -> None:
        # Given a path's directory ("<tree>/<dirs>", "" for a tree root's), a new descriptor of it.
        self._open_directory = open_directory
        self._path: str | None = None
        self._fd = -1

    def __enter__(self) -> ParentDirectories:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def of(self, path: str) -> tuple[int, str]:
        """(descriptor of the path's directory, the path's name)."""
        parent, _, name = path.rpartition("/")
        if parent != self._path:
            self.close()
            self._fd = self._open_directory(parent)
            self._path = parent
        return self._fd, name

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        self._path = None

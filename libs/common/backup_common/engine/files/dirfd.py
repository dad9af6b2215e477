"""Directories reached one path component at a time through descriptors, never following a link.

Both the archiver and the restore walk down trees that someone else may change meanwhile: opening
each component with ``O_NOFOLLOW`` relative to its parent's descriptor means a directory swapped for
a symbolic link is refused, never followed out of the tree.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from contextlib import suppress

DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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

"""What the file tests compare trees by: every path below the uploads, configs and logs trees, their
roots included, with its kind, content digest or link target, mode and modification time."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

TREES = ("uploads", "configs", "logs")


def trees(root: Path) -> dict[str, tuple[Any, ...]]:
    """The trees below ``root`` (``root/uploads`` and so on), path by path."""
    found: dict[str, tuple[Any, ...]] = {}
    for tree in TREES:
        base = root / tree
        if not base.exists():
            continue
        info = base.stat()
        found[tree] = ("root", stat.S_IMODE(info.st_mode), info.st_mtime_ns)
        for directory, dirs, files in os.walk(base):
            for name in dirs + files:
                path = Path(directory) / name
                info = path.lstat()
                relative = path.relative_to(root).as_posix()
                if stat.S_ISLNK(info.st_mode):
                    found[relative] = ("link", os.readlink(path))
                elif stat.S_ISDIR(info.st_mode):
                    found[relative] = ("dir", stat.S_IMODE(info.st_mode), info.st_mtime_ns)
                else:
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                    found[relative] = ("file", digest, stat.S_IMODE(info.st_mode), info.st_mtime_ns)
    return found

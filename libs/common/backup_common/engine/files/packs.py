"""Small files, directories and links travel in packs: a few archive members instead of thousands.

WinZip AES derives a key (PBKDF2, 1000 rounds of HMAC-SHA1) for every member it encrypts, and again
for every member it decrypts. With one member per path, a tree of small documents spent most of its
backup and restore time there, and each member cost ~200 bytes of headers besides. A pack is one
archive member, ``packs/NNNNNN.tar``, holding up to PACK_BYTES of files of at most PACK_FILE_BYTES
each, and the directories, symbolic links and hard links, as a complete POSIX (pax) tar: 7-Zip, given the archive's key,
opens it like any other member, and ``tar`` reads it once extracted.

The manifest is what a restore trusts, not the tar headers: each packed path's record names its
pack, and a packed file's record gives the offset of its content in the pack's bytes. A restore
reads a pack once, from start to end, taking each file's bytes from its offset (see
:func:`read_packed`) and skipping the headers between them unread.

Already-compressed files go to packs that are stored, the rest to packs that are deflated, so that
neither kind of content costs the other anything.

A tar name is any byte string (pax ``hdrcharset=BINARY`` where it is not UTF-8), a ZIP member name is
not: a large file whose name a member cannot carry is streamed into a pack of its own
(:meth:`Packer.own_pack`).
"""

from __future__ import annotations

import re
import stat
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO

from backup_common.engine.archive import ArchiveWriter, CorruptArchive

PACK_FILE_BYTES = 1 << 20  # files up to this size are packed
PACK_BYTES = 16 << 20  # a pack is written into the archive once it holds this much
PACK_NAME = re.compile(r"packs/[0-9]{6,}\.tar")
PACK_MEMBER_MODE = stat.S_IFREG | 0o600

_BLOCK = 512
_END_OF_ARCHIVE = b"\0" * (2 * _BLOCK)
_READ_BYTES = 1 << 20


def pack_name(number: int) -> str:
    return f"packs/{number:06d}.tar"


@dataclass
class _Pack:
    name: str
    stored: bool
    buffer: bytearray = field(default_factory=bytearray)

    def add(self, info: tarfile.TarInfo, data: bytes = b"") -> int:
        """Appends a tar entry; returns the offset of its content."""
        self.buffer += _header(info)
        offset = len(self.buffer)
        if data:
            self.buffer += data
            self.buffer += b"\0" * (-len(data) % _BLOCK)
        return offset


class Packer:
    """Fills a deflated and a stored pack, each written into the archive once it holds PACK_BYTES.

    Packs are built in memory (at most about twice PACK_BYTES + PACK_FILE_BYTES), because a ZIP
    archive is written one member at a time and both kinds of pack fill up together.
    :meth:`close` writes what is left; until then, records naming a pack describe content not yet
    in the archive.
    """

    def __init__(self, writer: ArchiveWriter) -> None:
        self._writer = writer
        self._count = 0
        self._open: dict[bool, _Pack] = {}

    def add_file(self, path: str, data: bytes, *, stored: bool, mode: int, mtime_ns: int) -> tuple[str, int]:
        """Packs a file's content; returns (pack name, offset of the content in the pack)."""
        if len(data) > PACK_FILE_BYTES:
            raise ValueError(f"{path!r} holds {len(data)} bytes, more than a packed file may ({PACK_FILE_BYTES})")
        pack = self._pack(stored=stored)
        info = _info(path, tarfile.REGTYPE, mode, mtime_ns)
        info.size = len(data)
        offset = pack.add(info, data)
        self._write_if_full(pack)
        return pack.name, offset

    def add_directory(self, path: str, *, mode: int, mtime_ns: int) -> str:
        pack = self._pack(stored=False)
        pack.add(_info(path, tarfile.DIRTYPE, mode, mtime_ns))
        self._write_if_full(pack)
        return pack.name

    def add_link(self, path: str, target: str, *, mode: int, mtime_ns: int, hard: bool = False) -> str:
        """Packs a symbolic link, or a hard link to the file ``target`` names."""
        pack = self._pack(stored=False)
        info = _info(path, tarfile.LNKTYPE if hard else tarfile.SYMTYPE, mode, mtime_ns)
        info.linkname = target
        pack.add(info)
        self._write_if_full(pack)
        return pack.name

    @contextmanager
    def own_pack(
        self, path: str, size: int, *, stored: bool, mode: int, mtime_ns: int
    ) -> Iterator[tuple[str, int, BoundedWriter]]:
        """A pack holding one file of ``size`` bytes, of any size, streamed: yields the pack's name,
        the offset of the content and the stream to write at most ``size`` bytes of it into. Content
        that ends early is padded with zeros, which keeps the tar whole (the file's record says how
        many bytes are its own)."""
        self._count += 1
        name = pack_name(self._count)
        info = _info(path, tarfile.REGTYPE, mode, mtime_ns)
        info.size = size
        header = _header(info)
        with self._writer.open_member(name, compress=not stored, mtime=time.time(), mode=PACK_MEMBER_MODE) as out:
            out.write(header)
            content = BoundedWriter(out, size)
            yield name, len(header), content
            left = size - content.count
            while left > 0:
                left -= out.write(b"\0" * min(left, _READ_BYTES))
            out.write(b"\0" * (-size % _BLOCK) + _END_OF_ARCHIVE)

    def close(self) -> None:
        """Writes the packs still being filled."""
        for stored in sorted(self._open):
            self._write(self._open.pop(stored))

    def _pack(self, *, stored: bool) -> _Pack:
        pack = self._open.get(stored)
        if pack is None:
            self._count += 1
            pack = self._open[stored] = _Pack(pack_name(self._count), stored)
        return pack

    def _write_if_full(self, pack: _Pack) -> None:
        if len(pack.buffer) >= PACK_BYTES:
            del self._open[pack.stored]
            self._write(pack)

    def _write(self, pack: _Pack) -> None:
        pack.buffer += _END_OF_ARCHIVE
        self._writer.write_member(
            pack.name, pack.buffer, compress=not pack.stored, mtime=time.time(), mode=PACK_MEMBER_MODE
        )


class BoundedWriter:
    """Passes writes on, refusing more than the size a tar header declared."""

    def __init__(self, out: IO[bytes], size: int) -> None:
        self._out = out
        self._size = size
        self.count = 0

    def write(self, data: bytes) -> int:
        if self.count + len(data) > self._size:
            raise ValueError(f"{self.count + len(data)} bytes written into a pack entry of {self._size}")
        self.count += len(data)
        self._out.write(data)
        return len(data)


def _header(info: tarfile.TarInfo) -> bytes:
    # surrogateescape: a name that is not UTF-8 goes into the pax header as its own bytes.
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _info(path: str, kind: bytes, mode: int, mtime_ns: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.type = kind
    info.mode = mode
    # Whole seconds keep the headers plain ustar for ASCII names; the manifest has the nanoseconds.
    info.mtime = mtime_ns // 1_000_000_000
    return info


class PackReader:
    """Takes the content of packed files out of a pack's stream, in the order they lie in it.

    The manifest says where each file's content is; the tar headers between them are skipped
    unread. Content must be asked for in increasing offsets (the restore checks the manifest for
    that), each iterator consumed before the next is asked for.
    """

    def __init__(self, stream: IO[bytes], where: str) -> None:
        self._stream = stream
        self._where = where
        self._position = 0

    def content(self, offset: int, size: int) -> Iterator[bytes]:
        """The ``size`` bytes at ``offset``, in chunks."""
        if offset < self._position:
            raise ValueError(f"{self._where}: content asked for at {offset}, behind the position {self._position}")
        self._skip(offset - self._position)
        left = size
        while left > 0:
            data = self._next(left)
            left -= len(data)
            yield data

    def finish(self) -> None:
        """Reads the pack to its end: an encrypted member is authenticated only there."""
        while self._stream.read(_READ_BYTES):
            pass

    def _skip(self, count: int) -> None:
        while count > 0:
            count -= len(self._next(count))

    def _next(self, most: int) -> bytes:
        data = self._stream.read(min(most, _READ_BYTES))
        if not data:
            raise CorruptArchive(f"{self._where} ends before the content its manifest places in it")
        self._position += len(data)
        return data

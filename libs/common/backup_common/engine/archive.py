"""ZIP64 archives, optionally WinZip AES-256 encrypted, written atomically.

An archive is written to a hidden ``.<name>.<random>.partial`` file next to its final name and only
renamed to the final name once it is complete and durable (fsynced, then the directory fsynced), so a
name without the ``.partial`` suffix always denotes a whole archive. An existing archive is never
replaced.

Everything here is synchronous and CPU-heavy (compression, encryption, hashing): the services run it in
a worker thread, never on the event loop.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import stat
import tempfile
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, cast

import pyzipper
from isal import isal_zlib

from backup_common.engine.zip_adapters import IsalAESZipFile, IsalZipFile, KeyDeriver, ReaderZipFile

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
MIN_COMPRESSION_LEVEL = 0
MAX_COMPRESSION_LEVEL = 3  # isal's range
DEFAULT_MEMBER_MODE = stat.S_IFREG | 0o600
PARTIAL_SUFFIX = ".partial"

# ZIP stores DOS times, which cannot express anything outside these years.
_DOS_MIN_YEAR = 1980
_DOS_MAX_YEAR = 2107

# Filesystems without hard links answer os.link with one of these; there the final rename falls back
# to check-then-rename.
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK})


class ArchiveError(Exception):
    """An archive cannot be read as asked."""


class WrongPassword(ArchiveError):
    """The archive is encrypted and the password is missing or wrong."""


class CorruptArchive(ArchiveError):
    """The archive is damaged or was tampered with (bad structure, checksum or AES authentication)."""


@dataclass(frozen=True)
class ArchiveInfo:
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class MemberInfo:
    name: str
    size: int
    compressed_size: int  # bytes stored in the archive, including any encryption overhead
    compressed: bool
    encrypted: bool
    mode: int  # permission bits
    mtime: float  # seconds since the epoch; ZIP keeps local time to 2 s


def check_member_name(name: str) -> str:
    """Returns ``name`` when it is a safe relative member path (a directory's ends with '/');
    raises ValueError otherwise."""
    if not name:
        raise ValueError("a member name must not be empty")
    if "\x00" in name:
        raise ValueError(f"member name {name!r} contains a NUL character")
    if "\\" in name:
        raise ValueError(f"member name {name!r} contains a backslash; use '/' between directories")
    if name.startswith("/"):
        raise ValueError(f"member name {name!r} is absolute; member names are relative paths")
    if len(name) >= 2 and name[1] == ":" and name[0].isalpha():
        raise ValueError(f"member name {name!r} starts with a drive letter")
    # A directory member ends with one '/', as zip tools expect.
    parts = name.removesuffix("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"member name {name!r} has an empty, '.' or '..' path component")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"member name {name!r} is not valid Unicode (undecodable file name?)") from None
    if len(encoded) > 0xFFFF:
        raise ValueError("a member name is at most 65535 bytes in UTF-8")
    return name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        while count := file.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


class ArchiveWriter:
    """Writes one archive; nothing appears under ``final_path`` until :meth:`commit` succeeds.

    Used as a context manager, leaving the block without :meth:`commit` (on an error or not) discards
    the partial archive. The directory of ``final_path`` must exist. The archive is readable by its
    owner only, like the temporary file it was written as.
    """

    def __init__(self, final_path: Path, *, password: str | None, compression_level: int = 1) -> None:
        if not MIN_COMPRESSION_LEVEL <= compression_level <= MAX_COMPRESSION_LEVEL:
            raise ValueError(
                f"compression_level must be {MIN_COMPRESSION_LEVEL} to {MAX_COMPRESSION_LEVEL}, got {compression_level}"
            )
        if password is not None and (not password or not password.isascii()):
            # Tools encode non-ASCII passwords differently, so such an archive might not open elsewhere.
            raise ValueError("an archive password must be non-empty ASCII")
        self.final_path = final_path
        self.compression_level = compression_level
        self.encrypted = password is not None
        if final_path.exists():
            # Checked again, atomically, at commit; this spares writing a whole archive in vain.
            raise FileExistsError(errno.EEXIST, "an archive already exists there; refusing to replace it", final_path)
        fd, temp_name = tempfile.mkstemp(prefix=f".{final_path.name}.", suffix=PARTIAL_SUFFIX, dir=final_path.parent)
        self.temp_path = Path(temp_name)
        self._state = "open"
        self._member: Any = None
        self._names: set[str] = set()
        try:
            self._file = open(fd, "wb", buffering=CHUNK_BYTES)  # noqa: SIM115 - closed by commit/abort
        except BaseException:
            os.close(fd)
            self.temp_path.unlink(missing_ok=True)
            raise
        try:
            if password is None:
                self._zip: Any = IsalZipFile(self._file, "w", compression=pyzipper.ZIP_DEFLATED, allowZip64=True)
            else:
                self._zip = IsalAESZipFile(
                    self._file,
                    "w",
                    compression=pyzipper.ZIP_DEFLATED,
                    allowZip64=True,
                    encryption=pyzipper.WZ_AES,
                    encryption_kwargs={"nbits": 256},
                )
                self._zip.setpassword(password.encode("ascii"))
                self._zip.key_deriver = KeyDeriver(password.encode("ascii"))
        except BaseException:
            self._file.close()
            self.temp_path.unlink(missing_ok=True)
            raise

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._state == "open":
            self.abort()

    def open_member(
        self, name: str, *, compress: bool = True, mtime: float | None = None, mode: int | None = None
    ) -> IO[bytes]:
        """A stream to write one member into; close it before opening the next member.

        Its size is unknown up front, so it always gets ZIP64 fields (any size up to 16 EiB).
        """
        zinfo = self._new_member(name, compress=compress, mtime=mtime, mode=mode)
        return self._open(zinfo, force_zip64=True)

    def write_member(
        self,
        name: str,
        data: bytes | bytearray,
        *,
        compress: bool = True,
        mtime: float | None = None,
        mode: int | None = None,
    ) -> None:
        zinfo = self._new_member(name, compress=compress, mtime=mtime, mode=mode)
        zinfo.file_size = len(data)  # known: pyzipper picks ZIP64 fields only when needed
        with self._open(zinfo, force_zip64=False) as stream:
            stream.write(data)

    def _new_member(self, name: str, *, compress: bool, mtime: float | None, mode: int | None) -> Any:
        self._check_open()
        if self._member is not None and not self._member.closed:
            raise RuntimeError(
                f"member {self._member.name!r} is still open: close it before adding {name!r}"
                " (a ZIP archive is written one member at a time)"
            )
        check_member_name(name)
        if name in self._names:
            raise ValueError(f"member {name!r} is already in the archive")
        zinfo = self._zip.zipinfo_cls(name, date_time=_dos_date_time(time.time() if mtime is None else mtime))
        zinfo.compress_type = pyzipper.ZIP_DEFLATED if compress else pyzipper.ZIP_STORED
        zinfo._compresslevel = self.compression_level
        if mode is None:
            mode = DEFAULT_MEMBER_MODE
        zinfo.external_attr = ((stat.S_IFMT(mode) or stat.S_IFREG) | stat.S_IMODE(mode)) << 16
        return zinfo

    def _open(self, zinfo: Any, *, force_zip64: bool) -> IO[bytes]:
        self._names.add(zinfo.filename)
        self._member = _MemberWriter(self._zip.open(zinfo, mode="w", force_zip64=force_zip64), zinfo.filename)
        return cast(IO[bytes], self._member)

    def commit(self) -> ArchiveInfo:
        """Finishes the archive, makes it durable and gives it its final name.

        Raises FileExistsError, after discarding this archive, when the final name exists by now.
        """
        self._check_open()
        if self._member is not None and not self._member.closed:
            raise RuntimeError(f"member {self._member.name!r} is still open: close it before commit()")
        published = False
        try:
            self._zip.close()
            self._close_key_deriver()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            size = self.temp_path.stat().st_size
            digest = sha256_file(self.temp_path)
            _publish(self.temp_path, self.final_path)
            published = True
            _fsync_directory(self.final_path.parent)
        except BaseException:
            if published:
                # The caller is told the archive failed, so it must not stay behind under its final name.
                with suppress(OSError):
                    self.final_path.unlink()
            self.abort()
            raise
        self._state = "committed"
        log.debug("archive %s committed: %d bytes, sha256 %s", self.final_path, size, digest)
        return ArchiveInfo(self.final_path, size, digest)

    def abort(self) -> None:
        """Discards the partial archive. Does nothing once committed or aborted."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._close_key_deriver()
        # Closing the file first makes everything pyzipper still tries to write below fail at once, so
        # an abort caused by a full disk does not write anything more.
        with suppress(Exception):
            self._file.close()
        if self._member is not None:
            with suppress(Exception):
                self._member.close()
        # A member whose close failed leaves pyzipper's "writing" flag set, and then close() refuses to
        # release the file; the archive is being thrown away, so the flag no longer matters.
        self._zip._writing = False
        with suppress(Exception):
            self._zip.close()
        self.temp_path.unlink(missing_ok=True)

    def _close_key_deriver(self) -> None:
        deriver = getattr(self._zip, "key_deriver", None)
        if deriver is not None:
            deriver.close()

    def _check_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"the archive {self.final_path} was already {self._state}")


class _WrappedMember(io.BufferedIOBase):
    """A stream over one of pyzipper's member streams, closing it with itself."""

    _inner: Any

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._inner.close()
        finally:
            super().close()


class _MemberWriter(_WrappedMember):
    """pyzipper's member stream, with the member's name for error messages."""

    def __init__(self, inner: Any, name: str) -> None:
        self._inner = inner
        self.name = name

    def writable(self) -> bool:
        return True

    def write(self, data: Any, /) -> int:
        count: int = self._inner.write(data)
        return count


class _MemberReader(_WrappedMember):
    """pyzipper's member stream, with damage reported as CorruptArchive.

    Encrypted members are authenticated (HMAC) only once read to the end: until then, data read may be
    forged. Whoever restores from a stream must read it whole and treat an error as fatal.
    """

    def __init__(self, inner: Any, where: str) -> None:
        self._inner = inner
        self._where = where

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        with _damage_reported(self._where):
            data: bytes = self._inner.read(size)
        return data

    def read1(self, size: int = -1, /) -> bytes:
        with _damage_reported(self._where):
            data: bytes = self._inner.read1(size)
        return data


class ArchiveReader:
    """Reads an archive written by :class:`ArchiveWriter` (or any ZIP, encrypted with WinZip AES or not)."""

    def __init__(self, path: Path, *, password: str | None) -> None:
        self.path = path
        with _damage_reported(str(path)):
            self._zip: Any = ReaderZipFile(path, "r")
        if password is not None:
            self._zip.setpassword(password.encode("utf-8"))

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    def names(self) -> list[str]:
        return [str(info.filename) for info in self._zip.infolist()]

    def infos(self) -> list[MemberInfo]:
        return [
            MemberInfo(
                name=info.filename,
                size=info.file_size,
                compressed_size=info.compress_size,
                compressed=info.compress_type != pyzipper.ZIP_STORED,
                encrypted=bool(info.flag_bits & 0x1),
                mode=stat.S_IMODE(info.external_attr >> 16),
                mtime=time.mktime((*info.date_time, 0, 0, -1)),
            )
            for info in self._zip.infolist()
        ]

    def open_member(self, name: str) -> IO[bytes]:
        """A stream of the member's content; KeyError when there is no such member."""
        where = f"{self.path} member {name!r}"
        try:
            with _damage_reported(where):
                inner = self._zip.open(name)
        except RuntimeError as exc:
            # pyzipper tells password problems apart only by their message.
            message = str(exc)
            if "Bad password" in message:
                raise WrongPassword(f"{where}: wrong password") from None
            if "password" in message:
                raise WrongPassword(f"{where}: the member is encrypted and no password was given") from None
            raise
        return cast(IO[bytes], _MemberReader(inner, where))


# isal's inflate (see ReaderExtFile) raises its own error, not zlib's.
_DAMAGE_ERRORS: tuple[type[BaseException], ...] = (
    pyzipper.BadZipFile,
    zlib.error,
    cast("type[BaseException]", isal_zlib.error),
    EOFError,
)


@contextmanager
def _damage_reported(where: str) -> Iterator[None]:
    try:
        yield
    except _DAMAGE_ERRORS as exc:
        raise CorruptArchive(f"{where} is damaged or was tampered with: {exc or type(exc).__name__}") from exc


def _dos_date_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    year, month, day, hour, minute, second = time.localtime(mtime)[:6]
    if year < _DOS_MIN_YEAR:
        return (_DOS_MIN_YEAR, 1, 1, 0, 0, 0)
    if year > _DOS_MAX_YEAR:
        return (_DOS_MAX_YEAR, 12, 31, 23, 59, 58)
    return (year, month, day, hour, minute, second)


def _publish(temp_path: Path, final_path: Path) -> None:
    """Gives the finished file its final name, never replacing an existing file."""
    try:
        # A hard link fails atomically when the name exists, unlike a rename, which would replace it.
        os.link(temp_path, final_path)
    except FileExistsError:
        raise FileExistsError(
            errno.EEXIST, "an archive already exists there; refusing to replace it", final_path
        ) from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if final_path.exists():
            raise FileExistsError(
                errno.EEXIST, "an archive already exists there; refusing to replace it", final_path
            ) from None
        os.rename(temp_path, final_path)
        return
    temp_path.unlink()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""Proves a part's archive intact without writing anything: the archive file, then its members.

:func:`check_archive_file` proves the file on disk is, byte for byte, the one its manifest (and the
catalog) recorded when the backup was made: same size, same SHA-256. It cannot tell whether the
manifest itself was replaced along with the archive; comparing with the catalog's copy covers that.

:func:`check_archive_members` proves the archive opens as a ZIP, keeps the restore limits (checked on
the sizes it declares, before anything is decompressed), and that every member reads to its end
without error: an encrypted member's WinZip AES HMAC proves its bytes were written by someone who
knew the password and not altered since; a plain member's CRC-32 (an AES AE-1 member has one too)
only catches accidental damage. Neither says the content makes sense: a database dump that loads,
a files chain that rebuilds its trees; those are the restore drill's and engine/files/verify.py's.

Both are synchronous and read whole archives: callers run them in a worker thread. They report what
they find wrong as a failed Check and raise only for programming errors.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import time
from pathlib import Path

from backup_common.domain.documents import RestoreLimits
from backup_common.domain.verification import Check
from backup_common.engine.archive import CHUNK_BYTES, ArchiveError, ArchiveReader, sha256_file
from backup_common.engine.database.load import limits_breach

ARCHIVE_DIGEST = "archive_digest"
MEMBERS_AUTHENTIC = "members_authentic"


def check_archive_file(
    archive: Path,
    *,
    size_bytes: int | None,
    sha256: str | None,
    catalog_size: int | None = None,
    catalog_sha256: str | None = None,
) -> Check:
    """``archive_digest``: the archive exists and its size and SHA-256 are those the manifest (and,
    when given, the catalog) recorded. Every difference found is named, the SHA-256 one included when
    the size already differs: a truncated archive and another backup's archive read apart."""
    started = time.monotonic()

    def done(ok: bool, detail: str) -> Check:
        return Check(ARCHIVE_DIGEST, ok, detail, time.monotonic() - started)

    records = _records(size_bytes, sha256, catalog_size, catalog_sha256)
    try:
        st = os.stat(archive)
        if not stat.S_ISREG(st.st_mode):
            return done(False, f"{archive} is not a regular file")
        if not any(digest is not None for _, _, digest in records):
            # A size alone proves nothing about the bytes.
            return done(
                False, "neither the manifest nor the catalog records the archive's SHA-256: it cannot be proven"
            )
        actual_sha256 = sha256_file(archive)
    except FileNotFoundError:
        return done(False, f"{archive} is missing")
    except OSError as exc:
        return done(False, f"{archive} cannot be read: {exc.strerror or exc}")
    sizes = _disagreeing(st.st_size, [(source, size) for source, size, _ in records])
    digests = _disagreeing(actual_sha256, [(source, digest) for source, _, digest in records])
    problems = [f"the archive holds {st.st_size} bytes, {said}" for said in sizes]
    problems += [f"the archive's SHA-256 is {actual_sha256}, {said}" for said in digests]
    if problems:
        return done(False, f"{'; '.join(problems)}: it is damaged, truncated or was replaced")
    sources = " and ".join(source for source, _, digest in records if digest is not None)
    return done(True, f"{st.st_size} bytes, SHA-256 {actual_sha256}, as {sources} recorded")


def _disagreeing(actual: object, said: list[tuple[str, object]]) -> list[str]:
    """ "<who> say(s) <value>" for each recorded value other than ``actual``, sources that agree on
    one value named together."""
    by_value: dict[object, list[str]] = {}
    for source, value in said:
        if value is not None and value != actual:
            by_value.setdefault(value, []).append(source)
    return [
        f"{' and '.join(sources)} {'say' if len(sources) > 1 else 'says'} {value}"
        for value, sources in by_value.items()
    ]


def _records(
    size_bytes: int | None, sha256: str | None, catalog_size: int | None, catalog_sha256: str | None
) -> list[tuple[str, int | None, str | None]]:
    """(who says it, size, SHA-256) of each record given."""
    records: list[tuple[str, int | None, str | None]] = [("the manifest", size_bytes, sha256)]
    if catalog_size is not None or catalog_sha256 is not None:
        records.append(("the catalog", catalog_size, catalog_sha256))
    return records


# What reading a member raises besides ArchiveError: the file's errors, and what pyzipper raises,
# besides the BadZipFile that ArchiveReader reports as CorruptArchive, for a member whose headers were
# damaged (a compression method, version, encryption strength or salt that makes no sense). The
# member names come from the archive's own listing, so a KeyError is no missing member.
MEMBER_READ_ERRORS = (OSError, NotImplementedError, struct.error, KeyError)


def member_failure(archive: Path, member: str, exc: Exception) -> str:
    """Why a member could not be read, from one of MEMBER_READ_ERRORS."""
    if isinstance(exc, OSError) and exc.errno == errno.EINVAL:
        # The ZIP reader seeks where the central directory places the member: a negative position
        # means the offsets no longer match the file, bytes having been cut out or added before it.
        return f"{archive} member {member!r} is damaged or was tampered with: it lies outside the archive's bytes"
    if isinstance(exc, OSError):
        return f"{archive} member {member!r} cannot be read: {exc.strerror or exc}"
    return f"{archive} member {member!r} is damaged or was tampered with: its header makes no sense ({exc!r})"


def check_archive_members(archive: Path, *, password: str | None, limits: RestoreLimits) -> Check:
    """``members_authentic``: the archive opens, keeps ``limits`` and every member reads to its end,
    which checks its HMAC (encrypted) or CRC-32. With a password, every member must be encrypted: a
    plain member slipped into an encrypted archive has nothing to authenticate it.

    The detail names the first member that fails and why (wrong password, or damage). One chunk of
    one member is held at a time.
    """
    started = time.monotonic()

    def done(ok: bool, detail: str) -> Check:
        return Check(MEMBERS_AUTHENTIC, ok, detail, time.monotonic() - started)

    total = 0
    try:
        with ArchiveReader(archive, password=password) as reader:
            infos = reader.infos()
            # Before any member is decompressed: a member claiming more than its compressed bytes
            # could hold (a zip bomb) is refused on its claim alone.
            if (breach := limits_breach(infos, limits)) is not None:
                return done(False, f"{archive}: {breach}")
            for info in infos:
                if password is not None and not info.encrypted:
                    return done(
                        False,
                        f"{archive} member {info.name!r} is not encrypted, though the archive is: nothing"
                        " authenticates it",
                    )
                count = 0
                try:
                    with reader.open_member(info.name) as stream:
                        while chunk := stream.read(CHUNK_BYTES):
                            count += len(chunk)
                except MEMBER_READ_ERRORS as exc:
                    return done(False, member_failure(archive, info.name, exc))
                if count != info.size:
                    # The reader never returns more than declared; fewer means the data ended early.
                    return done(
                        False, f"{archive} member {info.name!r} holds {count} bytes, its archive declares {info.size}"
                    )
                total += count
    except FileNotFoundError:
        return done(False, f"{archive} is missing")
    except ArchiveError as exc:
        # WrongPassword and CorruptArchive name the archive and the member, and say which it is.
        return done(False, str(exc))
    except OSError as exc:
        return done(False, f"{archive} cannot be read: {exc.strerror or exc}")
    except (NotImplementedError, struct.error) as exc:
        # Raised by pyzipper's reading of the listing, like the member headers' (MEMBER_READ_ERRORS).
        return done(False, f"{archive} is damaged or was tampered with: its listing makes no sense ({exc})")
    if password is None:
        return done(
            True,
            f"{len(infos)} members, {total} bytes read, all intact by their CRC-32 (not encrypted:"
            " nothing proves who wrote them)",
        )
    return done(True, f"{len(infos)} members, {total} bytes read, all authentic")

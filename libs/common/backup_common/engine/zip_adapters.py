"""pyzipper, made faster: isal deflate and inflate, WinZip AES keys derived ahead in threads while
writing, and OpenSSL's HMAC while reading.

Used by archive.py only. Each class replaces one piece pyzipper builds per member, without changing
what is written: archives stay ordinary ZIP64 with WinZip AES-256, read by any tool.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyzipper
from Cryptodome.Cipher import AES
from Cryptodome.Util import Counter
from isal import isal_zlib
from pyzipper.zipfile import _ZipWriteFile
from pyzipper.zipfile_aes import AESZipDecrypter, AESZipEncrypter, AESZipExtFile

AES_SALT_BYTES = 16  # AES-256 in WinZip's AE-x format
AES256_STRENGTH = 3  # WinZip's code for AES-256 in the member's extra field
_KEY_MATERIAL_BYTES = 66  # AES key (32), HMAC key (32), password verifier (2)


def _derive_key_material(password: bytes, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha1", password, salt, 1000, _KEY_MATERIAL_BYTES)


# isal's raw deflate at levels 0-3 runs at 300-400 MB/s where zlib's default level 6 manages 23 MB/s
# (and isal even compresses SQL dumps slightly better), so compression stops being the bottleneck of a
# backup. pyzipper offers no option for it: its ZipFile builds each member's writer from
# `zipwritefile_cls` in `_open_to_write`, and that writer takes its compressor from zlib in __init__,
# which is replaced here before any data is written. The output is ordinary deflate, read by any tool.
class _IsalZipWriteFile(_ZipWriteFile):  # type: ignore[misc]
    def __init__(self, zf: Any, zinfo: Any, zip64: bool, encrypter: Any = None) -> None:
        super().__init__(zf, zinfo, zip64, encrypter)
        if zinfo.compress_type == pyzipper.ZIP_DEFLATED:
            level = zinfo._compresslevel
            self._compressor = isal_zlib.compressobj(1 if level is None else level, isal_zlib.DEFLATED, -zlib.MAX_WBITS)


class IsalZipFile(pyzipper.ZipFile):  # type: ignore[misc]
    zipwritefile_cls = _IsalZipWriteFile


class _PrecomputedKeyEncrypter(AESZipEncrypter):  # type: ignore[misc]
    """pyzipper's AES-256 member encrypter, given key material derived beforehand.

    Its own __init__ is deliberately not called: it would derive the key again, on this thread.
    """

    def __init__(self, salt: bytes, keymaterial: bytes) -> None:
        self.force_wz_aes_version = None
        self.conditionally_include_crc = None
        self.min_bytes_to_include_crc = None
        self.salt_length = AES_SALT_BYTES
        self.aes_strength = 3  # AES-256
        self.salt = salt
        self.encpwdverify = keymaterial[64:66]
        self.encrypter = AES.new(keymaterial[:32], AES.MODE_CTR, counter=Counter.new(nbits=128, little_endian=True))
        self.hmac = hmac.new(keymaterial[32:64], digestmod="sha1")  # OpenSSL: faster than pycryptodome


class KeyDeriver:
    """Derives the WinZip AES key material of upcoming members in worker threads.

    Each member needs PBKDF2 (1000 rounds of HMAC-SHA1, about 2 ms here): for thousands of small
    files that dominated the whole backup. hashlib releases the GIL, so keys are derived while the
    archive is being written. Every member still gets its own random salt, hence its own key: AES-CTR
    must never reuse a keystream.
    """

    def __init__(self, password: bytes, *, ahead: int = 8) -> None:
        self._password = password
        self._ahead = ahead
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future[tuple[bytes, bytes]]] = deque()

    def _derive(self) -> tuple[bytes, bytes]:
        salt = os.urandom(AES_SALT_BYTES)
        return salt, _derive_key_material(self._password, salt)

    def next(self) -> tuple[bytes, bytes]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="zip-kdf")
        while len(self._pending) <= self._ahead:
            self._pending.append(self._pool.submit(self._derive))
        return self._pending.popleft().result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._pending.clear()


class IsalAESZipFile(pyzipper.AESZipFile):  # type: ignore[misc]
    zipwritefile_cls = _IsalZipWriteFile
    key_deriver: KeyDeriver | None = None

    def get_encrypter(self) -> Any:
        # pyzipper asks once per member; AES-256 is the only strength ArchiveWriter writes.
        if self.encryption == pyzipper.WZ_AES and self.key_deriver is not None:
            return _PrecomputedKeyEncrypter(*self.key_deriver.next())
        return super().get_encrypter()


class _OpenSSLKeyDecrypter(AESZipDecrypter):  # type: ignore[misc]
    """pyzipper's AES-256 member decrypter, with the key derived and the HMAC computed by OpenSSL
    (hashlib), which authenticates about twice as fast as pycryptodome's (SHA-1 in hardware). The
    password verifier and the HMAC are checked exactly as pyzipper checks them.

    Its own __init__ is deliberately not called: it would derive the key again.
    """

    def __init__(self, zinfo: Any, password: bytes, encryption_header: bytes) -> None:
        self.filename = zinfo.filename
        keymaterial = _derive_key_material(password, bytes(encryption_header[:AES_SALT_BYTES]))
        if keymaterial[64:66] != encryption_header[AES_SALT_BYTES:]:
            raise RuntimeError(f"Bad password for file {zinfo.filename!r}")
        self.decypter = AES.new(keymaterial[:32], AES.MODE_CTR, counter=Counter.new(nbits=128, little_endian=True))
        self.hmac = hmac.new(keymaterial[32:64], digestmod="sha1")


class _ReaderExtFile(AESZipExtFile):  # type: ignore[misc]
    """pyzipper's member stream, inflating with isal (about three times zlib's speed) and decrypting
    through :class:`_OpenSSLKeyDecrypter`."""

    def get_decompressor(self, compress_type: int) -> Any:
        if compress_type == pyzipper.ZIP_DEFLATED:
            return isal_zlib.decompressobj(-zlib.MAX_WBITS)
        return super().get_decompressor(compress_type)

    def get_decrypter(self) -> Any:
        if (
            self._pwd
            and self._decrypter_cls is AESZipDecrypter
            and self._zinfo.wz_aes_strength == AES256_STRENGTH
            and len(self.encryption_header) == AES_SALT_BYTES + 2
        ):
            return _OpenSSLKeyDecrypter(self._zinfo, self._pwd, self.encryption_header)
        return super().get_decrypter()


class ReaderZipFile(pyzipper.AESZipFile):  # type: ignore[misc]
    zipextfile_cls = _ReaderExtFile

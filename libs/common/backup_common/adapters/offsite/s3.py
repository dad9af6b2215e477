"""``OffsiteStore`` on S3 (AWS, or an S3-compatible store such as MinIO) with aiobotocore.

A backup's directory is copied under ``<prefix>/<storage path>/``, one object per file. Each object
carries the SHA-256 of its whole file in its metadata (``x-amz-meta-sha256``) beside the checksums S3
checks on upload (``ChecksumSHA256`` of a small object, or of each part of a multipart one, whose own
checksum is then a checksum of checksums): a resumed copy skips what the store already holds whole,
and a download is checked against the file as it was copied.

The client is made on first use, inside the running loop, from the default AWS credential chain
(variables, files, instance roles), and ``close`` ends it. Botocore retries a failed request a few
times; retrying later is the caller's business. Every store or network failure surfaces as
OffsiteError naming the operation, the ``s3://`` location and the store's reason.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import string
import tempfile
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Self, TypeVar
from urllib.parse import urlsplit

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from backup_common.adapters.settings import Settings, offsite_location
from backup_common.domain.ports import OffsiteError, OffsiteLocked, OffsiteObject, UploadProgress
from backup_common.engine.archive import PARTIAL_SUFFIX
from backup_common.engine.storage import MANIFEST, fsync_directory

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef, ObjectIdentifierTypeDef

log = logging.getLogger(__name__)

T = TypeVar("T")

MIB = 1 << 20
MIN_PART_SIZE = 5 * MIB  # S3's smallest part (but the last)
MAX_PARTS = 10_000  # S3's most parts of one upload
CHUNK_SIZE = MIB  # read from a download's stream at a time
WRITE_BATCH = 4 * MIB  # written and hashed in one worker-thread call
DELETE_BATCH = 1000  # S3's most keys of one DeleteObjects
# When none is configured: what MinIO and moto expect, and on AWS botocore follows S3's redirect to
# a bucket in another region.
DEFAULT_REGION = "us-east-1"
SHA256_METADATA = "sha256"  # x-amz-meta-sha256: hex SHA-256 of the whole file
TOMBSTONES = ".deleted"
# What S3 and MinIO answer when Object Lock keeps an object version from being deleted.
LOCKED_CODES = frozenset({"AccessDenied", "ObjectLocked"})
MISSING_CODES = frozenset({"NoSuchKey", "NoSuchVersion", "NotFound", "404"})
# What a request to the store may raise: botocore's own errors (it wraps most of aiohttp's), and the
# network errors that escape it while a response body is read.
STORE_ERRORS: tuple[type[BaseException], ...] = (
    BotoCoreError,
    ClientError,
    aiohttp.ClientError,
    TimeoutError,
    ConnectionError,
)


class S3Offsite:
    """An ``OffsiteStore`` on one bucket, under one key prefix (may be empty)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        storage_class: str | None = None,
        part_size: int = 16 * MIB,
        concurrency: int = 4,
    ) -> None:
        if not bucket or "/" in bucket:
            raise ValueError(f"not a bucket name: {bucket!r}")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"the part size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        if concurrency < 1:
            raise ValueError("the concurrency must be at least 1")
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        self._endpoint_url = endpoint_url
        self._storage_class = storage_class
        self._part_size = part_size
        self._concurrency = concurrency
        self._s3: S3Client | None = None
        self._stack: AsyncExitStack | None = None
        self._opening = asyncio.Lock()

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def prefix(self) -> str:
        return self._prefix

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the client and its connections; a later call opens a new one."""
        async with self._opening:
            stack, self._stack, self._s3 = self._stack, None, None
            if stack is not None:
                await stack.aclose()

    # --- names ------------------------------------------------------------------------------------

    def key(self, storage_path: str, name: str) -> str:
        """The object key of one file of a backup: ``<prefix>/<storage path>/<name>``."""
        _check_name(name)
        return self._directory_key(storage_path) + name

    def location(self, storage_path: str) -> str:
        return self._url(self._directory_key(storage_path))

    def _directory_key(self, storage_path: str) -> str:
        """``<prefix>/<storage path>/``. An empty storage path is refused: it would name every backup."""
        path = storage_path.strip("/")
        if not path or any(segment in ("", ".", "..") for segment in path.split("/")):
            raise ValueError(f"not a storage path: {storage_path!r}")
        return f"{self._root_key()}{path}/"

    def _root_key(self) -> str:
        return f"{self._prefix}/" if self._prefix else ""

    def _url(self, key: str) -> str:
        return f"s3://{self._bucket}/{key}"

    # --- the client -------------------------------------------------------------------------------

    async def _client(self) -> S3Client:
        if self._s3 is not None:
            return self._s3
        async with self._opening:
            if self._s3 is None:
                with _failing("opening", self._url(self._root_key())):
                    # Reading the AWS config files is blocking: done in a thread, with the region lookup.
                    session, region = await asyncio.to_thread(_session_and_region)
                    stack = AsyncExitStack()
                    self._s3 = await stack.enter_async_context(
                        session.create_client(
                            "s3", region_name=region, endpoint_url=self._endpoint_url, config=self._config()
                        )
                    )
                    self._stack = stack
            return self._s3

    def _config(self) -> AioConfig:
        options: dict[str, Any] = {
            # Botocore's retries cover a dropped connection or a throttled request; a copier calls
            # upload again later for anything longer.
            "retries": {"max_attempts": 3, "mode": "standard"},
            "connect_timeout": 5,
            "read_timeout": 60,
            "max_pool_connections": max(10, self._concurrency + 4),
            # Loads botocore's JSON models in a thread rather than on the loop.
            "warm_up_loader_caches": True,
        }
        if self._endpoint_url is not None:
            # S3-compatible stores seldom have a DNS name per bucket.
            options["s3"] = {"addressing_style": "path"}
        return AioConfig(**options)

    # --- upload -----------------------------------------------------------------------------------

    async def upload(
        self,
        storage_path: str,
        directory: Path,
        names: Sequence[str],
        *,
        retain_until: datetime | None = None,
        progress: UploadProgress | None = None,
        expected: Mapping[str, str] | None = None,
    ) -> list[OffsiteObject]:
        for name in names:
            _check_name(name)
        if retain_until is not None and retain_until.tzinfo is None:
            raise ValueError("retain_until must be an aware datetime")
        # manifest.json last whatever the order given: a copy without it is recognisably unfinished.
        ordered = [name for name in dict.fromkeys(names) if name != MANIFEST]
        if MANIFEST in names:
            ordered.append(MANIFEST)
        prefix = self._directory_key(storage_path)
        client = await self._client()
        with _failing("uploading", self._url(prefix)):
            held = await self._listing(client, prefix)
            # An earlier attempt that was killed mid-way left its multipart uploads: parts S3 keeps
            # (and bills) until they are aborted.
            await self._abort_unfinished(client, prefix)
        sent = _Sent(progress)
        for name in ordered:
            options = self._object_options(name, retain_until)
            recorded = (expected or {}).get(name)
            local = await asyncio.to_thread(_inspect, directory / name, self._part_size, recorded)
            if recorded is not None and local.sha256 != recorded:
                raise OffsiteError(
                    f"uploading {self._url(prefix + name)}: {directory / name} has SHA-256 {local.sha256},"
                    f" not the {recorded} recorded"
                )
            known = held.get(name)
            version: str | None = None  # the current one
            if known is None or known.size != local.size or known.sha256 != local.sha256:
                if local.data is not None:
                    version = await self._put_whole(client, prefix + name, local, options, sent)
                else:
                    version = await self._put_parts(client, prefix + name, directory / name, local, options, sent)
            if retain_until is not None:
                await self._keep_until(client, prefix + name, version, retain_until)
        with _failing("uploading", self._url(prefix)):
            return list((await self._listing(client, prefix)).values())

    def _object_options(self, name: str, retain_until: datetime | None) -> dict[str, Any]:
        options: dict[str, Any] = {}
        # Manifests stay in the bucket's default class: a catalog rebuild and every read start from
        # them, and an archival class would make them unreadable until restored.
        if self._storage_class is not None and not name.endswith(".json"):
            options["StorageClass"] = self._storage_class
        if retain_until is not None:
            # Governance, not compliance: an administrator with the right permission can still lift it.
            options["ObjectLockMode"] = "GOVERNANCE"
            options["ObjectLockRetainUntilDate"] = retain_until
        return options

    async def _put_whole(
        self, client: S3Client, key: str, local: _LocalFile, options: dict[str, Any], sent: _Sent
    ) -> str | None:
        """Sends the file in one request; returns the new object's version id (None: unversioned)."""
        assert local.data is not None
        where = self._url(key)
        checksum = _base64_digest(local.sha256)
        with _failing("uploading", where):
            answer = await client.put_object(
                Bucket=self._bucket,
                Key=key,
                Body=local.data,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,
                Metadata={SHA256_METADATA: local.sha256},
                **options,
            )
        _confirm(where, "the object", checksum, answer.get("ChecksumSHA256"))
        await sent.add(local.size)
        return answer.get("VersionId")

    async def _put_parts(
        self, client: S3Client, key: str, path: Path, local: _LocalFile, options: dict[str, Any], sent: _Sent
    ) -> str | None:
        """Sends the file in parts; returns the new object's version id (None: unversioned)."""
        where = self._url(key)
        with _failing("uploading", where):
            created = await client.create_multipart_upload(
                Bucket=self._bucket,
                Key=key,
                ChecksumAlgorithm="SHA256",
                Metadata={SHA256_METADATA: local.sha256},
                **options,
            )
        upload_id = created["UploadId"]
        try:
            parts = await self._send_parts(client, key, upload_id, path, local, sent)
            with _failing("uploading", where):
                completed = await client.complete_multipart_upload(
                    Bucket=self._bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            await self._abort_quietly(client, key, upload_id)
            raise
        return completed.get("VersionId")

    async def _keep_until(self, client: S3Client, key: str, version_id: str | None, until: datetime) -> None:
        """Makes sure Object Lock keeps the object until at least ``until``: a store may ignore the
        retention a multipart upload asked for (moto does), and an object a resumed copy found
        already there may have been sent without it."""
        where = self._url(key)
        version: dict[str, Any] = {"VersionId": version_id} if version_id else {}
        with _failing("setting the Object Lock retention of", where):
            head = await client.head_object(Bucket=self._bucket, Key=key, **version)
            kept = head.get("ObjectLockRetainUntilDate")
            # The store may keep the date to the second only.
            if kept is None or kept < until - timedelta(seconds=1):
                await client.put_object_retention(
                    Bucket=self._bucket, Key=key, Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until}, **version
                )

    async def _send_parts(
        self, client: S3Client, key: str, upload_id: str, path: Path, local: _LocalFile, sent: _Sent
    ) -> list[CompletedPartTypeDef]:
        """Reads the parts in order, one at a time in a thread, and sends up to ``concurrency`` at once."""
        where = self._url(key)
        # Larger parts for a file S3's 10,000 parts of the configured size would not hold.
        part_size = max(self._part_size, math.ceil(local.size / MAX_PARTS / MIB) * MIB)
        count = math.ceil(local.size / part_size)
        done: dict[int, CompletedPartTypeDef] = {}
        # One slot per part in memory, taken before it is read and given back once it is sent.
        slots = asyncio.Semaphore(self._concurrency)
        # The whole file's SHA-256, from the parts read in order: what the object's metadata says.
        whole = hashlib.sha256()
        handle = await asyncio.to_thread(path.open, "rb")
        try:
            with _first_error():
                async with asyncio.TaskGroup() as group:
                    for number in range(1, count + 1):
                        length = min(part_size, local.size - (number - 1) * part_size)
                        await slots.acquire()
                        try:
                            data, size, digest = await asyncio.to_thread(_read_buffer, handle, length, whole)
                        except BaseException:
                            slots.release()
                            raise
                        if size != length:
                            slots.release()
                            raise OffsiteError(f"uploading {where}: {path} shrank while it was being copied")
                        checksum = base64.b64encode(digest).decode()
                        group.create_task(
                            self._send_part(client, key, upload_id, number, data, size, checksum, slots, done, sent)
                        )
                        del data  # the task holds the part now; freed once it is sent
                    stat = await asyncio.to_thread(os.fstat, handle.fileno())
                    if (stat.st_size, stat.st_mtime_ns) != local.stamp:
                        raise OffsiteError(f"uploading {where}: {path} changed while it was being copied")
                    if whole.hexdigest() != local.sha256:
                        raise OffsiteError(
                            f"uploading {where}: {path} has SHA-256 {whole.hexdigest()}, not the {local.sha256}"
                            " recorded"
                        )
        finally:
            await asyncio.to_thread(handle.close)
        return [done[number] for number in sorted(done)]

    async def _send_part(
        self,
        client: S3Client,
        key: str,
        upload_id: str,
        number: int,
        data: io.BytesIO,
        size: int,
        checksum: str,
        slots: asyncio.Semaphore,
        done: dict[int, CompletedPartTypeDef],
        sent: _Sent,
    ) -> None:
        where = self._url(key)
        try:
            with _failing("uploading", where):
                answer = await client.upload_part(
                    Bucket=self._bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data,
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=checksum,
                )
        finally:
            del data
            slots.release()
        _confirm(where, f"part {number}", checksum, answer.get("ChecksumSHA256"))
        done[number] = {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum}
        await sent.add(size)

    async def _abort_quietly(self, client: S3Client, key: str, upload_id: str) -> None:
        """Best effort, after a failure that is the one to report: what this leaves, the next copy's
        sweep of unfinished uploads aborts."""
        try:
            await client.abort_multipart_upload(Bucket=self._bucket, Key=key, UploadId=upload_id)
        except STORE_ERRORS as exc:
            log.warning("could not abort the multipart upload of %s: %s", self._url(key), _reason(exc))

    async def _abort_unfinished(self, client: S3Client, prefix: str) -> int:
        """Aborts every multipart upload under ``prefix``; returns how many there were."""
        paginator = client.get_paginator("list_multipart_uploads")
        unfinished = [
            (upload["Key"], upload["UploadId"])
            async for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix)
            for upload in page.get("Uploads", [])
        ]
        for key, upload_id in unfinished:
            try:
                await client.abort_multipart_upload(Bucket=self._bucket, Key=key, UploadId=upload_id)
            except ClientError as exc:
                if _code(exc) != "NoSuchUpload":  # aborted meanwhile
                    raise
        return len(unfinished)

    # --- reading ----------------------------------------------------------------------------------

    async def listing(self, storage_path: str) -> dict[str, OffsiteObject]:
        prefix = self._directory_key(storage_path)
        client = await self._client()
        with _failing("listing", self._url(prefix)):
            return await self._listing(client, prefix)

    async def _listing(self, client: S3Client, prefix: str) -> dict[str, OffsiteObject]:
        names = [key[len(prefix) :] for key in await self._keys(client, prefix)]
        described = await _all(
            (self._describe(client, prefix, name) for name in names if "/" not in name),
            limit=self._concurrency + 4,
        )
        return {found.name: found for found in described if found is not None}

    async def _keys(self, client: S3Client, prefix: str) -> list[str]:
        paginator = client.get_paginator("list_objects_v2")
        return [
            item["Key"]
            async for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        ]

    async def _describe(self, client: S3Client, prefix: str, name: str) -> OffsiteObject | None:
        try:
            head = await client.head_object(Bucket=self._bucket, Key=prefix + name, ChecksumMode="ENABLED")
        except ClientError as exc:
            if _code(exc) in MISSING_CODES:  # removed since it was listed
                return None
            raise
        sha256 = _recorded_sha256(
            head.get("Metadata", {}), head.get("ChecksumSHA256"), head.get("ChecksumType"), head.get("ETag")
        )
        return OffsiteObject(name, head["ContentLength"], sha256)

    async def download(self, storage_path: str, names: Sequence[str], directory: Path) -> None:
        for name in names:
            _check_name(name)
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        client = await self._client()
        for name in names:
            await self._download(client, self.key(storage_path, name), directory, name)

    async def _download(self, client: S3Client, key: str, directory: Path, name: str) -> None:
        where = self._url(key)
        with _failing("downloading", where):
            answer = await client.get_object(Bucket=self._bucket, Key=key, ChecksumMode="ENABLED")
        expected = _recorded_sha256(
            answer.get("Metadata", {}), answer.get("ChecksumSHA256"), answer.get("ChecksumType"), answer.get("ETag")
        )
        async with answer["Body"] as body:
            partial = await asyncio.to_thread(_PartialFile, directory, name)
            try:
                pending: list[bytes] = []
                pending_size = 0
                with _failing("downloading", where):
                    # Botocore checks the length and, for an object S3 holds a whole-object checksum
                    # of, that checksum too; the SHA-256 from the metadata is checked below.
                    async for chunk in body.iter_chunks(CHUNK_SIZE):
                        pending.append(chunk)
                        pending_size += len(chunk)
                        if pending_size >= WRITE_BATCH:
                            await asyncio.to_thread(partial.write, pending)
                            pending, pending_size = [], 0
                await asyncio.to_thread(partial.write, pending)
                if expected is not None and partial.sha256() != expected:
                    raise OffsiteError(
                        f"downloading {where}: the bytes received have SHA-256 {partial.sha256()}, "
                        f"not the {expected} recorded when it was copied"
                    )
                await asyncio.to_thread(partial.commit, directory / name)
            except BaseException:
                await asyncio.to_thread(partial.discard)
                raise

    async def stream(self, storage_path: str, name: str) -> AsyncIterator[bytes]:
        key = self.key(storage_path, name)
        where = self._url(key)
        client = await self._client()
        with _failing("reading", where):
            answer = await client.get_object(Bucket=self._bucket, Key=key)
        async with answer["Body"] as body:
            while True:
                with _failing("reading", where):
                    chunk = await body.read(CHUNK_SIZE)
                if not chunk:
                    return
                yield chunk

    async def read_json(self, storage_path: str, name: str) -> dict[str, Any]:
        key = self.key(storage_path, name)
        where = self._url(key)
        client = await self._client()
        with _failing("reading", where):
            try:
                answer = await client.get_object(Bucket=self._bucket, Key=key)
            except ClientError as exc:
                if _code(exc) in MISSING_CODES:
                    raise OffsiteError(f"reading {where}: there is no such object") from None
                raise
            async with answer["Body"] as body:
                data = await body.read()
        try:
            # Parsed in a thread: a part manifest listing every file of a tree is not that small.
            document = await asyncio.to_thread(json.loads, data)
        except ValueError as exc:  # UnicodeDecodeError is one
            raise OffsiteError(f"reading {where}: not JSON ({exc})") from None
        if not isinstance(document, dict):
            raise OffsiteError(f"reading {where}: not a JSON object")
        return document

    # --- removal and tombstones -------------------------------------------------------------------

    async def remove(self, storage_path: str) -> int:
        """Deletes every version of the backup's objects (Object Lock implies a versioned bucket, where
        deleting a key only hides it), ``manifest.json``'s first; returns how many object versions it
        deleted (not counting delete markers)."""
        prefix = self._directory_key(storage_path)
        where = self._url(prefix)
        client = await self._client()
        with _failing("removing", where):
            await self._abort_unfinished(client, prefix)
            versioning = await client.get_bucket_versioning(Bucket=self._bucket)
            if versioning.get("Status") in ("Enabled", "Suspended"):
                found = await self._versions(client, prefix)
            else:
                found = [_Version(key, None) for key in await self._keys(client, prefix)]
            manifest = [version for version in found if version.key == prefix + MANIFEST]
            rest = [version for version in found if version.key != prefix + MANIFEST]
            removed = 0
            for batch in [*_batches(manifest, DELETE_BATCH), *_batches(rest, DELETE_BATCH)]:
                refused = await self._delete(client, batch)
                removed += sum(1 for version in batch if not version.marker and version not in refused)
                if refused:
                    # Stops at the first refusal: while its manifest stays, the backup is whole, and recognisably so.
                    raise await self._refusal(client, where, refused)
        return removed

    async def _versions(self, client: S3Client, prefix: str) -> list[_Version]:
        paginator = client.get_paginator("list_object_versions")
        found: list[_Version] = []
        async for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
            found += [_Version(item["Key"], item["VersionId"]) for item in page.get("Versions", [])]
            found += [_Version(item["Key"], item["VersionId"], True) for item in page.get("DeleteMarkers", [])]
        return found

    async def _delete(self, client: S3Client, batch: list[_Version]) -> dict[_Version, str]:
        """Deletes the batch (governance retention is not bypassed); returns the versions the store
        refused to delete, each with its error code and message."""
        objects: list[ObjectIdentifierTypeDef] = [
            {"Key": version.key, "VersionId": version.version_id} if version.version_id else {"Key": version.key}
            for version in batch
        ]
        answer = await client.delete_objects(Bucket=self._bucket, Delete={"Objects": objects, "Quiet": True})
        by_name = {(version.key, version.version_id): version for version in batch}
        refused: dict[_Version, str] = {}
        for error in answer.get("Errors", []):
            code = error.get("Code", "")
            if code in MISSING_CODES:
                continue
            key = error.get("Key", "")
            version = by_name.get((key, error.get("VersionId"))) or _Version(key, error.get("VersionId"))
            refused[version] = f"{code}: {error.get('Message', '')}".rstrip(": ")
        return refused

    async def _refusal(self, client: S3Client, where: str, refused: dict[_Version, str]) -> OffsiteError:
        """OffsiteLocked when Object Lock is what keeps the refused versions, else OffsiteError."""
        if all(reason.split(":")[0] in LOCKED_CODES for reason in refused.values()):
            until = await self._retained_until(client, list(refused))
            # AccessDenied is also a missing permission: it means Object Lock only where there is one.
            if until is not None or await self._lock_configured(client):
                when = f"until {until.isoformat()}" if until is not None else "(until an unknown date)"
                return OffsiteLocked(f"removing {where}: Object Lock keeps {len(refused)} objects {when}", until)
        version, reason = next(iter(refused.items()))
        return OffsiteError(f"removing {where}: the store refused to delete {version.key}: {reason}")

    async def _retained_until(self, client: S3Client, versions: list[_Version]) -> datetime | None:
        async def retained(version: _Version) -> datetime | None:
            try:
                if version.version_id is None:
                    head = await client.head_object(Bucket=self._bucket, Key=version.key)
                else:
                    head = await client.head_object(Bucket=self._bucket, Key=version.key, VersionId=version.version_id)
            except ClientError:
                return None  # unknown, as the port allows
            return head.get("ObjectLockRetainUntilDate")

        dates = await _all((retained(version) for version in versions), limit=self._concurrency + 4)
        return max((date for date in dates if date is not None), default=None)

    async def mark_deleted(self, backup_id: str) -> None:
        _check_name(backup_id)
        key = f"{self._root_key()}{TOMBSTONES}/{backup_id}"
        where = self._url(key)
        body = f"{backup_id}\n".encode()
        checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
        client = await self._client()
        with _failing("marking deleted", where):
            # A checksum, as a bucket with default Object Lock retention requires of every upload.
            await client.put_object(
                Bucket=self._bucket, Key=key, Body=body, ChecksumAlgorithm="SHA256", ChecksumSHA256=checksum
            )

    async def deleted(self) -> set[str]:
        prefix = f"{self._root_key()}{TOMBSTONES}/"
        client = await self._client()
        with _failing("listing", self._url(prefix)):
            names = [key[len(prefix) :] for key in await self._keys(client, prefix)]
        return {name for name in names if name and "/" not in name}

    async def backups(self) -> list[str]:
        root = self._root_key()
        client = await self._client()
        with _failing("listing", self._url(root)):
            keys = await self._keys(client, root)
        paths = set()
        for key in keys:
            segments = key[len(root) :].split("/")
            if len(segments) == 3 and segments[2] == MANIFEST and segments[0] and not segments[0].startswith("."):
                paths.add(f"{segments[0]}/{segments[1]}")
        return sorted(paths)

    async def lock_enabled(self) -> bool:
        client = await self._client()
        with _failing("reading the Object Lock configuration of", self._url("")):
            return await self._lock_configured(client)

    async def _lock_configured(self, client: S3Client) -> bool:
        try:
            answer = await client.get_object_lock_configuration(Bucket=self._bucket)
        except ClientError as exc:
            if _code(exc) == "ObjectLockConfigurationNotFoundError":
                return False
            raise
        return answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"


def s3_offsite(settings: Settings) -> S3Offsite | None:
    """The store BACKUP_OFFSITE_URL names; None when it is unset."""
    if settings.offsite_url is None:
        return None
    bucket, prefix = offsite_location(settings.offsite_url)
    return S3Offsite(
        bucket,
        prefix,
        endpoint_url=settings.offsite_endpoint_url,
        storage_class=settings.offsite_storage_class,
        part_size=settings.offsite_part_size_mib * MIB,
        concurrency=settings.offsite_concurrency,
    )


# --- helpers ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Version:
    """One object version to delete; ``version_id`` None in a bucket that never had versioning."""

    key: str
    version_id: str | None
    marker: bool = False


@dataclass(frozen=True)
class _LocalFile:
    size: int
    sha256: str  # hex, of the whole file
    data: io.BytesIO | None  # the whole file when smaller than a part, else None (read part by part)
    stamp: tuple[int, int]  # size and mtime when hashed: a file changed since is not copied


class _Sent:
    """Bytes sent so far in one copy, reported after every object or part."""

    def __init__(self, progress: UploadProgress | None) -> None:
        self.total = 0
        self._progress = progress

    async def add(self, count: int) -> None:
        self.total += count
        if self._progress is not None:
            await self._progress(self.total)


class _PartialFile:
    """A download written to a temporary name next to its final one (which the partial-file sweeper
    recognises), hashed as it is written. Every method blocks: each is called in a worker thread."""

    def __init__(self, directory: Path, name: str) -> None:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=PARTIAL_SUFFIX, dir=directory)
        self.path = Path(temporary)
        self._handle: IO[bytes] = os.fdopen(descriptor, "wb")
        self._digest = hashlib.sha256()

    def write(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self._handle.write(chunk)
            self._digest.update(chunk)

    def sha256(self) -> str:
        return self._digest.hexdigest()

    def commit(self, final: Path) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self.path, final)
        fsync_directory(final.parent)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._handle.close()
        self.path.unlink(missing_ok=True)


def _session_and_region() -> tuple[AioSession, str]:
    """A session on the default credential chain, and its region (blocking: reads the config files)."""
    session = AioSession()
    region = session.get_config_variable("region")
    return session, region if isinstance(region, str) and region else DEFAULT_REGION


def _inspect(path: Path, part_size: int, recorded: str | None) -> _LocalFile:
    """Size and SHA-256 of a file to upload, and its bytes when it is sent in one request. Blocking.

    A file sent in parts whose SHA-256 is ``recorded`` is not read here: the parts are hashed as they
    are read, and the upload is not completed unless they add up to it."""
    with path.open("rb") as handle:
        stat = os.fstat(handle.fileno())
        if stat.st_size < part_size:
            data, size, digest = _read_buffer(handle, stat.st_size)
            return _LocalFile(size, digest.hex(), data, (stat.st_size, stat.st_mtime_ns))
        if recorded is not None:
            return _LocalFile(stat.st_size, recorded, None, (stat.st_size, stat.st_mtime_ns))
        whole = hashlib.file_digest(handle, "sha256")
    return _LocalFile(stat.st_size, whole.hexdigest(), None, (stat.st_size, stat.st_mtime_ns))


def _read_buffer(
    handle: io.BufferedReader, length: int, whole: hashlib._Hash | None = None
) -> tuple[io.BytesIO, int, bytes]:
    """The next ``length`` bytes (fewer at the end of the file), how many, and their SHA-256 digest.
    Blocking.

    They are read straight into a BytesIO that owns its memory, the body aiohttp then sends a chunk
    at a time: bytes would be copied whole into the transport's buffer, and a BytesIO made from bytes
    copied when aiohttp takes its buffer, either way a second copy of every part in flight.
    """
    buffer = io.BytesIO()
    if length:
        buffer.seek(length - 1)
        buffer.write(b"\0")  # sizes the buffer once
    with buffer.getbuffer() as view:
        size = handle.readinto(view)
        with view[:size] as filled:
            digest = hashlib.sha256(filled).digest()
            if whole is not None:
                whole.update(filled)
    buffer.truncate(size)
    buffer.seek(0)
    return buffer, size, digest


def _base64_digest(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _confirm(where: str, what: str, ours: str, theirs: str | None) -> None:
    """The store answers with the checksum it checked the bytes against: it must be ours."""
    if theirs != ours:
        answered = f"answered {theirs}" if theirs else "did not answer with one: does it support checksums?"
        raise OffsiteError(f"uploading {where}: the store did not confirm {what}'s SHA-256 {ours} ({answered})")


def _recorded_sha256(
    metadata: Mapping[str, str], checksum: str | None, checksum_type: str | None, etag: str | None
) -> str | None:
    """The whole file's hex SHA-256: from the metadata an upload wrote, else from the store's own
    checksum when it is of the whole object (a multipart upload's is a checksum of its parts')."""
    recorded = metadata.get(SHA256_METADATA, "").lower()
    if len(recorded) == 64 and all(character in string.hexdigits for character in recorded):
        return recorded
    multipart = checksum_type == "COMPOSITE" or "-" in (checksum or "") or "-" in (etag or "")
    if checksum is None or multipart:
        return None
    try:
        raw = base64.b64decode(checksum, validate=True)
    except binascii.Error:
        return None
    return raw.hex() if len(raw) == 32 else None


def _check_name(name: str) -> None:
    """A file name of a backup's directory (or a backup id): one path segment."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"not a file name: {name!r}")


def _batches(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def _failing(doing: str, where: str) -> Iterator[None]:
    """Turns the store's and the network's errors into OffsiteError: "<doing> <where>: <reason>"."""
    try:
        yield
    except STORE_ERRORS as exc:
        raise OffsiteError(f"{doing} {where}: {_reason(exc)}") from exc


@contextlib.contextmanager
def _first_error() -> Iterator[None]:
    """Raises a task group's first failure as it is, not wrapped in an exception group."""
    try:
        yield
    except BaseExceptionGroup as errors:
        first = errors.exceptions[0]
        raise first from first.__cause__  # its own cause, not the group


async def _all(coroutines: Iterable[Coroutine[Any, Any, T]], *, limit: int) -> list[T]:
    """Runs the coroutines, at most ``limit`` at once; the first failure cancels the rest."""
    slots = asyncio.Semaphore(limit)

    async def bounded(coroutine: Coroutine[Any, Any, T]) -> T:
        async with slots:
            return await coroutine

    with _first_error():
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(bounded(coroutine)) for coroutine in coroutines]
    return [task.result() for task in tasks]


def _reason(exc: BaseException) -> str:
    """The store's code and message, or what kept the request from it, in one line."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = error.get("Code") or f"HTTP {status}"
        message = error.get("Message")
        return f"{code}: {message}" if message and message != code else code
    if isinstance(exc, ConnectTimeoutError):
        return f"could not connect to the endpoint {_endpoint(exc)} within the timeout"
    if isinstance(exc, EndpointConnectionError):
        return f"could not connect to the endpoint {_endpoint(exc)}: {_cause(exc.kwargs.get('error'))}"
    if isinstance(exc, ReadTimeoutError):
        return f"the endpoint {_endpoint(exc)} did not answer within the timeout"
    if isinstance(exc, NoCredentialsError):
        return (
            "no AWS credentials found (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, "
            "or an instance or task role)"
        )
    if isinstance(exc, BotoCoreError):
        return str(exc)
    return _cause(exc)


def _endpoint(exc: BotoCoreError) -> str:
    """The scheme and host of the request's URL (not its bucket and key, which the message names)."""
    url = urlsplit(str(exc.kwargs.get("endpoint_url", "")))
    return f"{url.scheme}://{url.netloc}" if url.netloc else "?"


def _cause(error: object) -> str:
    os_error = getattr(error, "os_error", error)
    if isinstance(os_error, OSError) and os_error.errno:
        return os.strerror(os_error.errno)
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__

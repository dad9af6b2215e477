"""The S3 off-site store against an S3 endpoint (moto_server on loopback, or BACKUP_TEST_S3_ENDPOINT):
copies checked by SHA-256 with the manifest last, resumed copies sending only what is missing,
downloads checked and renamed into place, removal manifest first and every version, tombstones, the
backups a store holds, Object Lock, and a store that is down."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backup_common.adapters.offsite.s3 import S3Offsite, s3_offsite
from backup_common.adapters.settings import Settings
from backup_common.domain.ports import OffsiteError, OffsiteLocked, OffsiteStore
from backup_common.engine.storage import MANIFEST
from tests.integration.s3_support import ENDPOINT_VARIABLE, free_port, make_bucket, remove_bucket, s3_client

pytestmark = pytest.mark.integration

MIB = 1 << 20
PART_SIZE = 5 * MIB
PREFIX = "offsite"
ARCHIVE = "database.zip"
PART_MANIFEST = "database.json"
NAMES = [MANIFEST, ARCHIVE, PART_MANIFEST]  # the manifest first on purpose: the store sends it last

MakeBucket = Callable[..., Awaitable[str]]
MakeStore = Callable[..., S3Offsite]


@pytest.fixture
async def new_bucket(moto_endpoint: str) -> AsyncIterator[MakeBucket]:
    """Makes buckets of the test's own; a store that outlives the run gets them removed afterwards."""
    made: list[str] = []

    async def make(*, lock: bool = False) -> str:
        made.append(await make_bucket(moto_endpoint, lock=lock))
        return made[-1]

    yield make
    if os.environ.get(ENDPOINT_VARIABLE):
        for name in made:
            await remove_bucket(moto_endpoint, name)


@pytest.fixture
async def new_store(moto_endpoint: str) -> AsyncIterator[MakeStore]:
    """Makes stores with 5 MiB parts on the endpoint; every one is closed at the end."""
    made: list[S3Offsite] = []

    def make(bucket: str, prefix: str = PREFIX, **options: Any) -> S3Offsite:
        options.setdefault("endpoint_url", moto_endpoint)
        options.setdefault("part_size", PART_SIZE)
        options.setdefault("concurrency", 3)
        made.append(S3Offsite(bucket, prefix, **options))
        return made[-1]

    yield make
    for store in made:
        await store.close()


@pytest.fixture
async def bucket(new_bucket: MakeBucket) -> str:
    return await new_bucket()


@pytest.fixture
def store(new_store: MakeStore, bucket: str) -> S3Offsite:
    return new_store(bucket)


@pytest.fixture
def s3(moto_endpoint: str) -> Iterator[Any]:
    """A blocking boto3 client to set up and inspect the store behind the adapter's back."""
    client = s3_client(moto_endpoint)
    yield client
    client.close()


def storage_path() -> str:
    return f"2026-12-08/{uuid.uuid4()}"


def write_backup(directory: Path, archive_size: int = 40 * MIB) -> dict[str, bytes]:
    """A backup's directory: an archive sent in parts, a part manifest and the manifest, each sent whole."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        ARCHIVE: os.urandom(archive_size),
        PART_MANIFEST: json.dumps({"part": "database", "tables": ["t"] * 200}).encode(),
        MANIFEST: json.dumps({"format": "backup-system/manifest", "parts": ["database"]}).encode(),
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return files


def digests(files: dict[str, bytes]) -> dict[str, tuple[int, str]]:
    return {name: (len(data), hashlib.sha256(data).hexdigest()) for name, data in files.items()}


async def held(store: S3Offsite, path: str) -> dict[str, tuple[int, str | None]]:
    return {name: (found.size, found.sha256) for name, found in (await store.listing(path)).items()}


async def unfinished_uploads(s3: Any, bucket: str) -> list[str]:
    answer = await asyncio.to_thread(s3.list_multipart_uploads, Bucket=bucket)
    return [upload["Key"] for upload in answer.get("Uploads", [])]


class Interrupted(Exception):
    pass


async def test_a_backup_is_copied_with_the_sha256_of_every_file_and_its_manifest_last(
    store: S3Offsite, bucket: str, s3: Any, tmp_path: Path
) -> None:
    path = storage_path()
    files = write_backup(tmp_path / "backup")
    manifest_seen: list[bool] = []

    async def progress(sent: int) -> None:
        # What the store holds after each part or object: the manifest only after the last.
        manifest_seen.append(MANIFEST in await store.listing(path))

    copied = await store.upload(path, tmp_path / "backup", NAMES, progress=progress)

    assert {found.name: (found.size, found.sha256) for found in copied} == digests(files)
    assert await held(store, path) == digests(files)
    assert manifest_seen[-1]
    assert not any(manifest_seen[:-1])
    assert len(manifest_seen) == 40 // 5 + 2  # every part of the archive, then each small file
    assert store.location(path) == f"s3://{bucket}/{PREFIX}/{path}/"
    listed = await asyncio.to_thread(s3.list_objects_v2, Bucket=bucket)
    assert sorted(item["Key"] for item in listed["Contents"]) == sorted(f"{PREFIX}/{path}/{name}" for name in files)
    head = await asyncio.to_thread(s3.head_object, Bucket=bucket, Key=store.key(path, ARCHIVE))
    assert head["ETag"].endswith('-8"')  # 8 parts of 5 MiB
    assert head["Metadata"]["sha256"] == hashlib.sha256(files[ARCHIVE]).hexdigest()


async def test_files_with_a_recorded_sha256_are_copied_only_when_they_still_have_it(
    store: S3Offsite, bucket: str, s3: Any, tmp_path: Path
) -> None:
    path = storage_path()
    files = write_backup(tmp_path / "backup")
    recorded = {name: digest for name, (_, digest) in digests(files).items()}

    copied = await store.upload(path, tmp_path / "backup", NAMES, expected=recorded)
    assert {found.name: (found.size, found.sha256) for found in copied} == digests(files)

    for name, size in ((ARCHIVE, 40 * MIB), (PART_MANIFEST, len(files[PART_MANIFEST]))):
        other = storage_path()
        changed = write_backup(tmp_path / other, archive_size=40 * MIB)
        # Same size, other bytes: only the SHA-256 tells, read from the parts as they are sent.
        (tmp_path / other / name).write_bytes(os.urandom(size))
        wanted = {name: hashlib.sha256(changed[name]).hexdigest()}
        with pytest.raises(OffsiteError, match=f"{name} has SHA-256 [0-9a-f]{{64}}, not the {wanted[name]} recorded"):
            await store.upload(other, tmp_path / other, NAMES, expected=wanted)
        assert name not in await store.listing(other)
        assert MANIFEST not in await store.listing(other)
    assert await unfinished_uploads(s3, bucket) == []


async def test_an_interrupted_copy_leaves_no_manifest_and_the_next_one_sends_only_what_is_missing(
    store: S3Offsite, bucket: str, s3: Any, tmp_path: Path
) -> None:
    path = storage_path()
    files = write_backup(tmp_path / "backup")

    async def interrupt(sent: int) -> None:
        if sent > len(files[PART_MANIFEST]) + 2 * PART_SIZE:
            raise Interrupted  # in the middle of the archive's parts

    with pytest.raises(Interrupted):
        await store.upload(path, tmp_path / "backup", [MANIFEST, PART_MANIFEST, ARCHIVE], progress=interrupt)
    assert set(await store.listing(path)) == {PART_MANIFEST}
    assert await unfinished_uploads(s3, bucket) == []

    # As a copier killed mid-way would leave it: a multipart upload of the archive nobody aborted.
    key = store.key(path, ARCHIVE)
    started = await asyncio.to_thread(s3.create_multipart_upload, Bucket=bucket, Key=key)
    await asyncio.to_thread(
        s3.upload_part, Bucket=bucket, Key=key, UploadId=started["UploadId"], PartNumber=1, Body=b"x" * PART_SIZE
    )
    assert await unfinished_uploads(s3, bucket) == [key]

    reported: list[int] = []

    async def count(sent: int) -> None:
        reported.append(sent)

    await store.upload(path, tmp_path / "backup", NAMES, progress=count)

    assert reported[-1] == len(files[ARCHIVE]) + len(files[MANIFEST])
    assert await held(store, path) == digests(files)
    assert await unfinished_uploads(s3, bucket) == []


async def test_a_copy_whose_last_file_failed_is_finished_without_sending_the_others_again(
    store: S3Offsite, tmp_path: Path
) -> None:
    path = storage_path()
    files = write_backup(tmp_path / "backup", archive_size=12 * MIB)
    (tmp_path / "backup" / MANIFEST).unlink()

    with pytest.raises(FileNotFoundError):
        await store.upload(path, tmp_path / "backup", NAMES)
    assert set(await store.listing(path)) == {ARCHIVE, PART_MANIFEST}

    (tmp_path / "backup" / MANIFEST).write_bytes(files[MANIFEST])
    changed = files[PART_MANIFEST] + b" "
    (tmp_path / "backup" / PART_MANIFEST).write_bytes(changed)
    reported: list[int] = []

    async def count(sent: int) -> None:
        reported.append(sent)

    await store.upload(path, tmp_path / "backup", NAMES, progress=count)

    # The archive (in parts) was held whole already; the part manifest changed, so it is sent again.
    assert reported == [len(changed), len(changed) + len(files[MANIFEST])]
    assert await held(store, path) == digests({**files, PART_MANIFEST: changed})


async def test_a_download_writes_every_file_whole_into_a_new_directory_and_leaves_no_partial_file(
    store: S3Offsite, tmp_path: Path
) -> None:
    path = storage_path()
    files = write_backup(tmp_path / "backup", archive_size=12 * MIB + 7)
    await store.upload(path, tmp_path / "backup", NAMES)
    target = tmp_path / "fetched" / path

    await store.download(path, NAMES, target)

    assert sorted(item.name for item in target.iterdir()) == sorted(files)
    assert {name: (target / name).read_bytes() for name in files} == files
    assert [chunk async for chunk in store.stream(path, ARCHIVE)] != []
    assert b"".join([chunk async for chunk in store.stream(path, ARCHIVE)]) == files[ARCHIVE]
    assert await store.read_json(path, MANIFEST) == json.loads(files[MANIFEST])


async def test_a_download_of_an_object_changed_in_the_store_fails_and_leaves_nothing(
    store: S3Offsite, bucket: str, s3: Any, tmp_path: Path
) -> None:
    path = storage_path()
    files = write_backup(tmp_path / "backup", archive_size=6 * MIB)
    await store.upload(path, tmp_path / "backup", NAMES)
    key = store.key(path, ARCHIVE)
    head = await asyncio.to_thread(s3.head_object, Bucket=bucket, Key=key)
    corrupted = bytearray(files[ARCHIVE])
    corrupted[len(corrupted) // 2] ^= 0xFF
    await asyncio.to_thread(s3.put_object, Bucket=bucket, Key=key, Body=bytes(corrupted), Metadata=head["Metadata"])
    target = tmp_path / "fetched"

    with pytest.raises(OffsiteError, match=f"downloading s3://{bucket}/{key}: .*SHA-256"):
        await store.download(path, [ARCHIVE], target)

    assert list(target.iterdir()) == []


async def test_reading_a_missing_or_unparsable_document_fails_with_the_reason(
    store: S3Offsite, bucket: str, s3: Any
) -> None:
    path = storage_path()
    with pytest.raises(OffsiteError, match=f"reading s3://{bucket}/{PREFIX}/{path}/manifest.json: there is no such"):
        await store.read_json(path, MANIFEST)
    await asyncio.to_thread(s3.put_object, Bucket=bucket, Key=store.key(path, MANIFEST), Body=b"{not json")
    with pytest.raises(OffsiteError, match="not JSON"):
        await store.read_json(path, MANIFEST)


async def test_removing_a_backup_removes_every_object(store: S3Offsite, bucket: str, s3: Any, tmp_path: Path) -> None:
    path, other = storage_path(), storage_path()
    write_backup(tmp_path / "backup", archive_size=6 * MIB)
    await store.upload(path, tmp_path / "backup", NAMES)
    await store.upload(other, tmp_path / "backup", NAMES)

    assert await store.remove(path) == 3

    assert await store.listing(path) == {}
    assert await store.backups() == [other]
    listed = await asyncio.to_thread(s3.list_objects_v2, Bucket=bucket, Prefix=f"{PREFIX}/{path}/")
    assert listed.get("Contents", []) == []
    assert await store.remove(path) == 0


async def test_removing_from_a_versioned_bucket_deletes_every_version(
    new_bucket: MakeBucket, new_store: MakeStore, s3: Any, tmp_path: Path
) -> None:
    bucket = await new_bucket(lock=True)  # Object Lock implies versioning
    store = new_store(bucket)
    path = storage_path()
    files = write_backup(tmp_path / "backup", archive_size=6 * MIB)
    await store.upload(path, tmp_path / "backup", NAMES)
    (tmp_path / "backup" / PART_MANIFEST).write_bytes(files[PART_MANIFEST] + b"\n")
    await store.upload(path, tmp_path / "backup", NAMES)  # a second version of the part manifest

    assert await store.remove(path) == 4

    versions = await asyncio.to_thread(s3.list_object_versions, Bucket=bucket, Prefix=f"{PREFIX}/{path}/")
    assert versions.get("Versions", []) == []
    assert versions.get("DeleteMarkers", []) == []


async def test_object_lock_is_seen_and_an_upload_sets_the_retention_that_keeps_the_backup(
    new_bucket: MakeBucket, new_store: MakeStore, bucket: str, s3: Any, tmp_path: Path
) -> None:
    locked = new_store(await new_bucket(lock=True))
    assert await locked.lock_enabled()
    assert not await new_store(bucket).lock_enabled()
    path = storage_path()
    write_backup(tmp_path / "backup", archive_size=6 * MIB)
    until = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)

    await locked.upload(path, tmp_path / "backup", NAMES, retain_until=until)

    for name in NAMES:
        head = await asyncio.to_thread(s3.head_object, Bucket=locked.bucket, Key=locked.key(path, name))
        assert (head["ObjectLockMode"], head["ObjectLockRetainUntilDate"]) == ("GOVERNANCE", until)
    with pytest.raises(OffsiteLocked, match=f"removing s3://{locked.bucket}/{PREFIX}/{path}/: Object Lock") as caught:
        await locked.remove(path)
    assert caught.value.until == until
    assert set(await locked.listing(path)) == set(NAMES)


async def test_removal_deletes_the_manifest_first_so_a_locked_remainder_is_no_backup(
    new_bucket: MakeBucket, new_store: MakeStore, tmp_path: Path
) -> None:
    store = new_store(await new_bucket(lock=True))
    path = storage_path()
    write_backup(tmp_path / "backup", archive_size=6 * MIB)
    until = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    await store.upload(path, tmp_path / "backup", [ARCHIVE, PART_MANIFEST], retain_until=until)
    await store.upload(path, tmp_path / "backup", [MANIFEST])  # the one object without retention
    assert await store.backups() == [path]

    with pytest.raises(OffsiteLocked) as caught:
        await store.remove(path)

    assert caught.value.until == until
    assert set(await store.listing(path)) == {ARCHIVE, PART_MANIFEST}
    assert await store.backups() == []


async def test_tombstones_and_the_backups_a_store_holds_are_listed(
    new_store: MakeStore, bucket: str, tmp_path: Path
) -> None:
    store = new_store(bucket)
    first, second, unfinished = sorted(storage_path() for _ in range(3))
    write_backup(tmp_path / "backup", archive_size=0)
    for path in (first, second):
        await store.upload(path, tmp_path / "backup", NAMES)
    await store.upload(unfinished, tmp_path / "backup", [ARCHIVE, PART_MANIFEST])
    ids = [str(uuid.uuid4()) for _ in range(2)]

    assert await store.deleted() == set()
    for backup_id in ids:
        await store.mark_deleted(backup_id)

    assert await store.deleted() == set(ids)
    assert await store.backups() == [first, second]
    # Another prefix of the same bucket holds none of them; the empty prefix is the bucket's root.
    assert await new_store(bucket, "elsewhere").backups() == []
    assert await new_store(bucket, "elsewhere").deleted() == set()
    root = new_store(bucket, "")
    assert root.location(first) == f"s3://{bucket}/{first}/"
    assert root.key(first, MANIFEST) == f"{first}/{MANIFEST}"
    assert await root.backups() == []


@pytest.mark.usefixtures("moto_endpoint")  # for the credentials it sets
async def test_a_store_that_is_down_fails_quickly_with_a_readable_reason(tmp_path: Path) -> None:
    path = storage_path()
    write_backup(tmp_path / "backup", archive_size=0)
    port = free_port()  # nothing listens there
    started = time.monotonic()

    async with S3Offsite("b", "p", endpoint_url=f"http://127.0.0.1:{port}") as store:
        with pytest.raises(OffsiteError) as caught:
            await store.upload(path, tmp_path / "backup", NAMES)

    assert str(caught.value) == (
        f"uploading s3://b/p/{path}/: could not connect to the endpoint http://127.0.0.1:{port}: Connection refused"
    )
    assert time.monotonic() - started < 15


def test_the_store_is_made_from_the_settings_only_when_an_offsite_url_is_set() -> None:
    assert s3_offsite(Settings(offsite_url=None)) is None
    made = s3_offsite(
        Settings(offsite_url="s3://backups/site-a/", offsite_part_size_mib=8, offsite_endpoint_url="http://minio:9000")
    )
    assert made is not None
    store: OffsiteStore = made
    assert (made.bucket, made.prefix) == ("backups", "site-a")
    assert store.location("2026-12-08/x") == "s3://backups/site-a/2026-12-08/x/"


async def test_a_cancelled_copy_aborts_its_multipart_upload(
    store: S3Offsite, bucket: str, s3: Any, tmp_path: Path
) -> None:
    path = storage_path()
    write_backup(tmp_path / "backup", archive_size=20 * MIB)
    first_part = asyncio.Event()

    async def progress(sent: int) -> None:
        first_part.set()

    copy = asyncio.create_task(store.upload(path, tmp_path / "backup", [ARCHIVE], progress=progress))
    await asyncio.wait_for(first_part.wait(), 30)
    copy.cancel()
    with pytest.raises(asyncio.CancelledError):
        await copy

    assert await unfinished_uploads(s3, bucket) == []
    assert await store.listing(path) == {}

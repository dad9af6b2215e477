"""An S3 endpoint for the off-site tests: moto's server, started once for the run on a free loopback
port, or the store ``BACKUP_TEST_S3_ENDPOINT`` names (a MinIO, say); and a fresh bucket per test.

With moto the run uses dummy credentials (``testing``), whatever the environment holds, so that no
test ever signs a request with real ones; with an endpoint of one's own, the environment's
credentials are used when it has some. The region is ``us-east-1`` unless one is set.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import boto3  # type: ignore[import-untyped]
import pytest
from botocore.exceptions import ClientError

ENDPOINT_VARIABLE = "BACKUP_TEST_S3_ENDPOINT"
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
DEFAULT_REGION = "us-east-1"
DEFAULT_REGION_VARIABLE = "AWS_DEFAULT_REGION"
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def moto_server(timeout: float = START_TIMEOUT_S) -> Iterator[str]:
    """Runs ``moto_server`` (from the interpreter's own bin directory) on a free loopback port until the
    block ends; yields its endpoint URL once it answers. Needs no pytest: the benchmark uses it too."""
    program = Path(sys.executable).parent / "moto_server"
    if not program.exists():
        raise RuntimeError(f"{program} is missing: install the dev extras (moto[server])")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # Its log goes to a file: it writes a line per request, and a pipe nobody reads would fill and
    # stall it mid-run.
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [str(program), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=log
        )
        try:
            _wait_answering(endpoint, process, log, timeout)
            yield endpoint
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_answering(endpoint: str, process: subprocess.Popen[bytes], log: IO[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            log.seek(0)
            output = log.read().decode(errors="replace")
            raise RuntimeError(f"moto_server exited with {process.returncode}: {output[-2000:]}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):  # noqa: S310 -- our own loopback URL
                return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not answer at {endpoint} within {timeout:g} s") from None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The run's S3 endpoint URL, with credentials and a region in the environment for the run."""
    with pytest.MonkeyPatch.context() as patch:
        if DEFAULT_REGION_VARIABLE not in os.environ and "AWS_REGION" not in os.environ:
            patch.setenv(DEFAULT_REGION_VARIABLE, DEFAULT_REGION)
        explicit = os.environ.get(ENDPOINT_VARIABLE)
        if explicit:
            for name, value in DUMMY_CREDENTIALS.items():
                if name not in os.environ:
                    patch.setenv(name, value)
            yield explicit.rstrip("/")
            return
        for name, value in DUMMY_CREDENTIALS.items():
            patch.setenv(name, value)
        # A session token or profile of the environment's would go with the dummy keys: not wanted.
        patch.delenv("AWS_SESSION_TOKEN", raising=False)
        patch.delenv("AWS_PROFILE", raising=False)
        with moto_server() as endpoint:
            yield endpoint


def s3_client(endpoint: str) -> Any:
    """A plain (blocking) boto3 client on the endpoint, to set up and inspect what the tests check."""
    return boto3.client("s3", endpoint_url=endpoint)


async def make_bucket(endpoint: str, lock: bool = False) -> str:
    """Creates a bucket of a unique name (``backups-<hex>``), with Object Lock on when ``lock``."""
    name = f"backups-{secrets.token_hex(6)}"

    def create() -> None:
        client = s3_client(endpoint)
        try:
            options: dict[str, Any] = {"ObjectLockEnabledForBucket": True} if lock else {}
            region = client.meta.region_name
            if region and region != "us-east-1":
                options["CreateBucketConfiguration"] = {"LocationConstraint": region}
            client.create_bucket(Bucket=name, **options)
        finally:
            client.close()

    await asyncio.to_thread(create)
    return name


async def remove_bucket(endpoint: str, name: str) -> None:
    """Empties the bucket (every version, governance retention bypassed) and deletes it; for a store
    that outlives the run. Best effort: a compliance-mode lock keeps what it keeps."""

    def remove() -> None:
        client = s3_client(endpoint)
        try:
            for page in client.get_paginator("list_object_versions").paginate(Bucket=name):
                found = [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
                if found:
                    objects = [{"Key": item["Key"], "VersionId": item["VersionId"]} for item in found]
                    client.delete_objects(
                        Bucket=name, Delete={"Objects": objects, "Quiet": True}, BypassGovernanceRetention=True
                    )
            for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=name):
                for upload in page.get("Uploads", []):
                    client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
            client.delete_bucket(Bucket=name)
        except ClientError:
            pass
        finally:
            client.close()

    await asyncio.to_thread(remove)

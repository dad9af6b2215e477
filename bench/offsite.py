"""Off-site copy benchmark: our S3 upload against boto3's upload_file and the aws CLI, same file, same store.

    .venv/bin/python -m bench.offsite [--size-mib 512] [--part-size-mib 16] [--concurrency 4]
                                      [--endpoint URL --bucket NAME] [--runs N] [--no-drop-caches]

Writes a file of random bytes once (in a temporary directory, removed at the end), starts moto_server
on loopback (as the integration tests do, tests/integration/s3_support.py) unless ``--endpoint``
names a store (MinIO, say, with the environment's AWS credentials and an existing ``--bucket``), and
uploads the file, in this fixed order, each in a process of its own:

  ours:               S3Offsite.upload, as the off-site copier calls it: the SHA-256 of the whole file
                      first (the resume check and the metadata), then parts of --part-size-mib,
                      --concurrency at once, each with the SHA-256 the store checks (defaults: the
                      BACKUP_OFFSITE_PART_SIZE_MIB and BACKUP_OFFSITE_CONCURRENCY defaults)
  boto3 upload_file:  boto3's managed transfer with its default TransferConfig (8 MiB parts, 10 threads)
  aws s3 cp:          the AWS CLI, when it is installed

Before every run the file system is synced and, when permitted (root), the page cache dropped, so each
reads the file cold. Wall time and peak RSS come from bench/measure.py (GNU time per process); MiB/s
is the file's size over the wall time, process start included. Each object is checked (its size; ours
also its recorded SHA-256) and deleted after its run, so that moto holds one copy at a time. With moto
the store itself (one Python process) is likely the bottleneck: the figures compare the clients
against the same store, not against S3.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# boto3, the store and moto's support are imported where they are used: each measured process then
# imports only what it runs (start-up time is part of its wall time).
from bench.database import Harness, Row, _mib, _notes, _read_json, _repeat, _short, _spread
from bench.measure import MIB, gnu_time_available, which

ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = ROOT / "var" / "bench"
RESULTS = WORK_DIR / "offsite-results.json"
FILE_NAME = "database.zip"
OURS_STORAGE_PATH = "2026-01-01/00000000-0000-4000-8000-000000000000"
BOTO3_KEY = "boto3/database.zip"
AWS_CLI_KEY = "awscli/database.zip"


def write_random_file(path: Path, size: int) -> str:
    """Writes ``size`` random bytes; returns their hex SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        remaining = size
        while remaining:
            chunk = os.urandom(min(remaining, 8 * MIB))
            handle.write(chunk)
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


@dataclass
class OffsiteBench(Harness):
    endpoint: str
    bucket: str
    file: Path
    sha256: str
    part_size_mib: int
    concurrency: int
    drop_caches: bool
    env: dict[str, str]
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.file.stat().st_size

    def log(self, name: str) -> Path:
        return WORK_DIR / "logs" / f"offsite-{name}.log"

    def _child(self, tool: str) -> list[str]:
        argv = [sys.executable, "-m", "bench.offsite", "child", tool, "--endpoint", self.endpoint]
        argv += ["--bucket", self.bucket, "--file", str(self.file)]
        argv += ["--part-size-mib", str(self.part_size_mib), "--concurrency", str(self.concurrency)]
        # As the copier sends an archive: with the SHA-256 the catalog recorded, so it is read once.
        return [*argv, "--sha256", self.sha256] if tool == "ours" else argv

    def upload_ours(self) -> Row:
        report = self.log("ours.out")
        report.parent.mkdir(parents=True, exist_ok=True)
        tool = f"ours ({self.part_size_mib} MiB parts x{self.concurrency})"
        row = self.measured(tool, self.log("ours"), [self._child("ours")], stdout=report, env=self.env)
        row.detail = _read_json(report)
        return self._checked(row, f"bench/{OURS_STORAGE_PATH}/{FILE_NAME}", ours=True)

    def upload_boto3(self) -> Row:
        report = self.log("boto3.out")
        report.parent.mkdir(parents=True, exist_ok=True)
        row = self.measured("boto3 upload_file", self.log("boto3"), [self._child("boto3")], stdout=report, env=self.env)
        row.detail = _read_json(report)
        return self._checked(row, BOTO3_KEY)

    def upload_aws_cli(self) -> Row:
        if which("aws") is None:
            return Row("aws s3 cp", status="not available: the aws CLI is not installed")
        argv = ["aws", "s3", "cp", str(self.file), f"s3://{self.bucket}/{AWS_CLI_KEY}"]
        argv += ["--endpoint-url", self.endpoint, "--only-show-errors"]
        return self._checked(self.measured("aws s3 cp", self.log("aws"), [argv], env=self.env), AWS_CLI_KEY)

    def _checked(self, row: Row, key: str, *, ours: bool = False) -> Row:
        """Checks the object the run left (its size, and our recorded SHA-256), then deletes it."""
        with self.client() as client:
            try:
                if row.ok:
                    head = client.head_object(Bucket=self.bucket, Key=key)
                    row.size_bytes = head["ContentLength"]
                    problems = []
                    if head["ContentLength"] != self.size:
                        problems.append(f"{head['ContentLength']} bytes, not {self.size}")
                    if ours and head.get("Metadata", {}).get("sha256") != self.sha256:
                        problems.append("its recorded SHA-256 differs from the file's")
                    row.verified = "; ".join(problems) or ("size and SHA-256 checked" if ours else "size checked")
                    if problems:
                        row.status = f"wrong data: {row.verified}"
            finally:
                client.delete_object(Bucket=self.bucket, Key=key)
        return row

    @contextmanager
    def client(self) -> Iterator[Any]:
        client = s3_client(self.endpoint, self.env)
        try:
            yield client
        finally:
            client.close()


def mib_per_second(row: Row, size: int) -> str:
    return "-" if not row.ok or not row.wall_seconds else f"{size / MIB / row.wall_seconds:.1f}"


def print_report(rows: list[Row], header: str, size: int, notes: list[str]) -> None:
    print()
    print(header)
    print()
    print(f"{'upload':<30} {'wall s':>8} {'MiB/s':>8} {'peak RSS MiB':>13}  note")
    for row in rows:
        if row.wall_seconds is None:
            print(f"{row.tool:<30} {_short(row.status)}")
            continue
        inside = row.detail.get("seconds")
        in_process = f"{inside:.1f} s in the upload call" if inside else ""
        note = _short(row.status) if not row.ok else _notes(_spread(row), row.verified, in_process)
        rate, rss = mib_per_second(row, size), _mib(row.peak_rss_bytes)
        print(f"{row.tool:<30} {row.wall_seconds:>8.1f} {rate:>8} {rss:>13}  {note}")
    for note in notes:
        print(f"note: {note}")


# --- the measured processes -----------------------------------------------------------------------


async def _upload_ours(
    endpoint: str, bucket: str, file: Path, part_size_mib: int, concurrency: int, sha256: str | None
) -> dict[str, Any]:
    from backup_common.adapters.offsite.s3 import S3Offsite

    store = S3Offsite(bucket, "bench", endpoint_url=endpoint, part_size=part_size_mib * MIB, concurrency=concurrency)
    started = time.monotonic()
    expected = {file.name: sha256} if sha256 else None
    async with store:
        copied = await store.upload(OURS_STORAGE_PATH, file.parent, [file.name], expected=expected)
    return {"seconds": time.monotonic() - started, "objects": [asdict(found) for found in copied]}


def child(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.offsite child")
    parser.add_argument("tool", choices=("ours", "boto3"))
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--part-size-mib", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--sha256", help="the file's SHA-256 as recorded (ours: the file is then read once)")
    args = parser.parse_args(argv)
    if args.tool == "ours":
        upload = _upload_ours(args.endpoint, args.bucket, args.file, args.part_size_mib, args.concurrency, args.sha256)
        result = asyncio.run(upload)
    else:
        started = time.monotonic()
        client = _boto3().client("s3", endpoint_url=args.endpoint)
        client.upload_file(str(args.file), args.bucket, BOTO3_KEY)
        client.close()
        result = {"seconds": time.monotonic() - started}
    print(json.dumps(result))
    return 0


# --- main -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["child"]:
        return child(arguments[1:])
    from backup_common.adapters.settings import Settings

    part_size_mib = int(Settings.model_fields["offsite_part_size_mib"].default)
    concurrency = int(Settings.model_fields["offsite_concurrency"].default)
    parser = argparse.ArgumentParser(
        prog="python -m bench.offsite",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join((__doc__ or "").splitlines()[1:]),
    )
    parser.add_argument("--size-mib", type=int, default=512, help="MiB of random bytes to upload (default 512)")
    parser.add_argument("--part-size-mib", type=int, default=part_size_mib, help="our part size")
    parser.add_argument("--concurrency", type=int, default=concurrency, help="our parts in flight")
    parser.add_argument("--endpoint", default=os.environ.get("BENCH_S3_ENDPOINT"), help="a store instead of moto")
    parser.add_argument("--bucket", help="an existing bucket of --endpoint (default: a new one in moto)")
    parser.add_argument("--runs", type=int, default=1, help="repeat each upload, report the median")
    parser.add_argument("--no-drop-caches", action="store_true", help="leave the OS page cache alone between runs")
    args = parser.parse_args(arguments)
    if args.runs < 1 or args.size_mib < 1 or args.concurrency < 1 or args.part_size_mib < 5:
        parser.error("--runs, --size-mib and --concurrency must be at least 1, --part-size-mib at least 5")
    if args.endpoint and not args.bucket:
        parser.error("--endpoint needs --bucket (an existing bucket of that store)")
    if not gnu_time_available():
        raise SystemExit("/usr/bin/time (GNU time) is missing: run bench/setup.sh")
    WORK_DIR.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="bench-offsite-") as scratch, store(args.endpoint) as (endpoint, env):
        file = Path(scratch) / FILE_NAME
        print(f"writing {args.size_mib} MiB of random bytes to {file}", flush=True)
        sha256 = write_random_file(file, args.size_mib * MIB)
        bucket = args.bucket or new_bucket(endpoint, env)
        bench = OffsiteBench(
            endpoint, bucket, file, sha256, args.part_size_mib, args.concurrency, not args.no_drop_caches, env
        )
        where = "moto_server on loopback" if not args.endpoint else endpoint
        order = "runs in the order listed" + (f", round-robin x{args.runs}" if args.runs > 1 else "")
        cold = ", each after the page cache was dropped" if bench.drop_caches else ""
        header = f"upload of {args.size_mib} MiB of random bytes to {where}; {os.cpu_count()} CPUs; {order}{cold}"
        print(header, flush=True)
        rows = _repeat(args.runs, [bench.upload_ours, bench.upload_boto3, bench.upload_aws_cli])
        print_report(rows, header, args.size_mib * MIB, bench.notes)
    results = {
        "header": header,
        "size_bytes": args.size_mib * MIB,
        "uploads": [asdict(row) | {"mib_per_second": mib_per_second(row, args.size_mib * MIB)} for row in rows],
        "notes": bench.notes,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"results: {RESULTS.relative_to(ROOT)}; logs: {(WORK_DIR / 'logs').relative_to(ROOT)}/offsite-*")
    return 1 if any(not row.ok and not row.status.startswith("not available") for row in rows) else 0


@contextmanager
def store(endpoint: str | None) -> Iterator[tuple[str, dict[str, str]]]:
    """The endpoint and the environment of the measured processes: moto with dummy credentials (and
    us-east-1), or the given store with the environment's own."""
    from tests.integration.s3_support import DUMMY_CREDENTIALS, moto_server

    if endpoint:
        yield endpoint, dict(os.environ)
        return
    env = {**os.environ, **DUMMY_CREDENTIALS, "AWS_DEFAULT_REGION": "us-east-1"}
    env.pop("AWS_SESSION_TOKEN", None)
    env.pop("AWS_PROFILE", None)
    with moto_server() as started:
        yield started, env


def s3_client(endpoint: str, env: dict[str, str]) -> Any:
    """A boto3 client with the credentials the measured processes get (not necessarily ours)."""
    return _boto3().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=env.get("AWS_SESSION_TOKEN"),
        region_name=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1",
    )


def _boto3() -> Any:
    import boto3  # type: ignore[import-untyped]

    return boto3


def new_bucket(endpoint: str, env: dict[str, str]) -> str:
    client = s3_client(endpoint, env)
    try:
        client.create_bucket(Bucket="bench-offsite")
    finally:
        client.close()
    return "bench-offsite"


if __name__ == "__main__":
    sys.exit(main())

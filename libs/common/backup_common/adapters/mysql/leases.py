"""Job leases (see ``domain.jobs``) in the catalog's ``job_leases`` table: claim, heartbeat, fence,
finish, reap. ``LeaseStore`` is the ``Leases`` port (its own transactions); ``MysqlJobLeases`` is the
``JobLeases`` port, in a unit of work's transaction, so fencing and results commit together.

Every time is taken from the database clock (``NOW(6)``), never the worker's, so replicas whose
clocks disagree still agree on who holds a lease and when it expires.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from datetime import UTC
from types import TracebackType
from typing import Any

from asyncmy.connection import Connection
from asyncmy.errors import OperationalError

from backup_common.adapters.mysql import db
from backup_common.adapters.waiting import cancel_and_wait, wait_event
from backup_common.domain.jobs import Lease, LeaseLost, ReapedJob, ReapResult

log = logging.getLogger(__name__)

MAX_JOB_KEY_LENGTH = 128
MAX_HOLDER_LENGTH = 255

# InnoDB may pick a claim as a deadlock victim (or time it out) when many workers upsert one new row
# at once; the whole transaction was rolled back, so running it again is safe.
_RETRYABLE_ERRORS = frozenset({1205, 1213})  # ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK
_CLAIM_TRIES = 5

_COLUMNS = "job_key, holder, version, state, attempts, expires_at"


class LeaseStore:
    def __init__(self, pool: db.Pool, lease_seconds: float) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self._pool = pool
        self.lease_seconds = lease_seconds
        # Whole microseconds, so the server computes expiry with DATETIME(6) precision.
        self._lease_us = max(1, round(lease_seconds * 1_000_000))

    async def claim(self, job_key: str, holder: str, payload: dict[str, Any] | None = None) -> Lease | None:
        """Takes the job's lease; None when another holder's lease is live or the job is finished.

        A job is claimable when it has no row yet, was released, or its holder let the lease expire.
        ``payload`` (what is needed to re-emit the job) is kept; None keeps the stored one.
        """
        if not job_key or len(job_key) > MAX_JOB_KEY_LENGTH:
            raise ValueError(f"job_key must be 1 to {MAX_JOB_KEY_LENGTH} characters")
        if not holder or len(holder) > MAX_HOLDER_LENGTH:
            raise ValueError(f"holder must be 1 to {MAX_HOLDER_LENGTH} characters")
        payload_json = None if payload is None else json.dumps(payload)
        for attempt in range(1, _CLAIM_TRIES + 1):
            try:
                return await self._claim_once(job_key, holder, payload_json)
            except OperationalError as exc:
                if exc.args[0] not in _RETRYABLE_ERRORS or attempt == _CLAIM_TRIES:
                    raise
                log.debug("claim of %s collided (%s); retrying", job_key, exc.args[0])
                await asyncio.sleep(random.uniform(0.005, 0.02) * attempt)
        raise AssertionError("unreachable")

    async def _claim_once(self, job_key: str, holder: str, payload_json: str | None) -> Lease | None:
        async with db.transaction(self._pool) as conn:
            # Makes sure the row exists and, either way, leaves it exclusively locked by this
            # transaction: concurrent claimers queue here and each sees its predecessor's outcome.
            await db.execute(
                conn,
                "INSERT INTO job_leases (job_key, version, state, attempts, updated_at)"
                " VALUES (%s, 0, 'released', 0, NOW(6))"
                " ON DUPLICATE KEY UPDATE job_key = job_key",
                (job_key,),
            )
            row = await db.fetch_one(
                conn,
                "SELECT holder, state, expires_at <= NOW(6) AS expired FROM job_leases WHERE job_key = %s FOR UPDATE",
                (job_key,),
            )
            assert row is not None  # inserted or locked just above
            claimable = row["state"] == "released" or (row["state"] == "held" and bool(row["expired"]))
            if not claimable:
                return None
            await db.execute(
                conn,
                "UPDATE job_leases SET holder = %s, version = version + 1, state = 'held',"
                " attempts = attempts + 1, payload = COALESCE(%s, payload), claimed_at = NOW(6),"
                " heartbeat_at = NOW(6), expires_at = NOW(6) + INTERVAL %s MICROSECOND,"
                " updated_at = NOW(6) WHERE job_key = %s",
                (holder, payload_json, self._lease_us, job_key),
            )
            lease = await self._read(conn, job_key)
        if row["state"] == "held":
            log.warning("took over %s from %s, whose lease expired", job_key, row["holder"])
        else:
            log.info("claimed %s as %s (attempt %d)", job_key, holder, lease.attempts)
        return lease

    async def held(self, prefix: str) -> list[str]:
        """The keys starting with ``prefix`` of jobs a live holder has now."""
        async with db.transaction(self._pool) as conn:
            rows = await db.fetch_all(
                conn,
                "SELECT job_key FROM job_leases WHERE job_key LIKE %s AND state = 'held' AND expires_at > NOW(6)",
                (prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",),
            )
        return [row["job_key"] for row in rows]

    async def heartbeat(self, lease: Lease) -> Lease:
        """Extends the lease by ``lease_seconds`` from now; raises LeaseLost if it is no longer held.

        A lease that expired but was not taken over yet is still extended: nobody else wrote under
        a newer version, so its holder may carry on.
        """
        async with db.transaction(self._pool) as conn:
            await self.fence(conn, lease)
            await db.execute(
                conn,
                "UPDATE job_leases SET heartbeat_at = NOW(6), expires_at = NOW(6) + INTERVAL %s MICROSECOND,"
                " updated_at = NOW(6) WHERE job_key = %s",
                (self._lease_us, lease.job_key),
            )
            return await self._read(conn, lease.job_key)

    async def fence(self, conn: Connection, lease: Lease) -> None:
        """Inside the caller's transaction, before it writes a job's results: raises LeaseLost
        unless this lease is still the current one.

        The row stays locked until the caller's transaction ends, so no claim or reap can slip in
        between this check and the caller's commit.
        """
        row = await db.fetch_one(
            conn,
            "SELECT holder, version, state FROM job_leases WHERE job_key = %s FOR UPDATE",
            (lease.job_key,),
        )
        if row is None:
            raise LeaseLost(lease.job_key, "the lease row is gone")
        if row["holder"] != lease.holder or int(row["version"]) != lease.version:
            raise LeaseLost(
                lease.job_key,
                f"taken over by {row['holder']} (version {row['version']}, ours was {lease.version})",
            )
        if row["state"] != "held":
            raise LeaseLost(lease.job_key, f"it is {row['state']}")

    async def complete(self, lease: Lease, *, conn: Connection | None = None) -> None:
        """Marks the job done, so it can never be claimed again.

        Pass ``conn`` to do it in the transaction that records the job's results.
        """
        await self._finish(lease, "done", None, conn)
        log.info("%s done (version %d)", lease.job_key, lease.version)

    async def fail(self, lease: Lease, reason: str, *, conn: Connection | None = None) -> None:
        """Marks the job failed for good, keeping the reason."""
        await self._finish(lease, "failed", reason, conn)
        log.warning("%s failed: %s", lease.job_key, reason)

    async def release(self, lease: Lease, reason: str, *, conn: Connection | None = None) -> None:
        """Gives the job back (e.g. on shutdown) so another worker may claim it at once."""
        await self._finish(lease, "released", reason, conn)
        log.info("%s released: %s", lease.job_key, reason)

    async def _finish(self, lease: Lease, state: str, reason: str | None, conn: Connection | None) -> None:
        if conn is None:
            async with db.transaction(self._pool) as own:
                await self._finish_in(own, lease, state, reason)
        else:
            await self._finish_in(conn, lease, state, reason)

    async def _finish_in(self, conn: Connection, lease: Lease, state: str, reason: str | None) -> None:
        await self.fence(conn, lease)
        await db.execute(
            conn,
            "UPDATE job_leases SET state = %s, last_error = %s, expires_at = NULL, updated_at = NOW(6)"
            " WHERE job_key = %s",
            (state, reason, lease.job_key),
        )

    async def reap(self, max_attempts: int, *, limit: int = 100, conn: Connection | None = None) -> ReapResult:
        """Deals with held leases past their expiry, whose worker is presumably gone.

        Those claimed fewer than ``max_attempts`` times are released and returned in ``requeue``;
        the others are failed. Rows another reaper (or a claimer) has locked are skipped, so several
        reapers can run at once. Pass ``conn`` to re-emit the requeued jobs (an outbox row) in the
        same transaction, so a crash cannot leave a job released with nobody told to pick it up.
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if conn is None:
            async with db.transaction(self._pool) as own:
                return await self._reap_in(own, max_attempts, limit)
        return await self._reap_in(conn, max_attempts, limit)

    async def _reap_in(self, conn: Connection, max_attempts: int, limit: int) -> ReapResult:
        rows = await db.fetch_all(
            conn,
            "SELECT job_key, holder, version, attempts, payload FROM job_leases"
            " WHERE state = 'held' AND expires_at <= NOW(6)"
            " ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED",
            (limit,),
        )
        result = ReapResult()
        for row in rows:
            job = ReapedJob(
                job_key=row["job_key"],
                holder=row["holder"],
                version=int(row["version"]),
                attempts=int(row["attempts"]),
                payload=_load_payload(row["payload"]),
            )
            if job.attempts < max_attempts:
                state, reason = "released", f"lease expired on attempt {job.attempts}; the worker was lost"
                result.requeue.append(job)
            else:
                state, reason = "failed", f"lease expired {job.attempts} times; the worker was lost"
                result.failed.append(job)
            await db.execute(
                conn,
                "UPDATE job_leases SET state = %s, last_error = %s, expires_at = NULL, updated_at = NOW(6)"
                " WHERE job_key = %s",
                (state, reason, job.job_key),
            )
            log.warning("reaped %s held by %s: %s (%s)", job.job_key, job.holder, reason, state)
        return result

    def keep_alive(self, lease: Lease) -> Heartbeat:
        """``async with store.keep_alive(lease) as keeper:`` heartbeats in the background."""
        return Heartbeat(self, lease)

    async def _read(self, conn: Connection, job_key: str) -> Lease:
        row = await db.fetch_one(conn, f"SELECT {_COLUMNS} FROM job_leases WHERE job_key = %s", (job_key,))
        # Only called right after this transaction took or extended the lease.
        assert row is not None
        assert row["state"] == "held"
        return Lease(
            job_key=row["job_key"],
            holder=row["holder"],
            version=int(row["version"]),
            expires_at=row["expires_at"].replace(tzinfo=UTC),  # sessions run in UTC (db.py)
            attempts=int(row["attempts"]),
        )


def _load_payload(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    loaded = json.loads(value)
    return loaded if isinstance(loaded, dict) else {"value": loaded}


class Heartbeat:
    """Extends a lease every ``lease_seconds / 3`` until the ``async with`` block ends.

    When the lease is lost the keeper only records it (``lost``, ``check()``): the worker decides
    how to stop, and fencing stops its writes regardless. A failed heartbeat for any other reason
    (the database restarting) is logged and retried; there are two more chances before expiry.
    """

    def __init__(self, store: LeaseStore, lease: Lease) -> None:
        self._store = store
        self._lease = lease
        self._lost: LeaseLost | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.interval = store.lease_seconds / 3

    @property
    def lease(self) -> Lease:
        """The lease as last extended; pass this one to ``fence``/``complete``."""
        return self._lease

    @property
    def lost(self) -> bool:
        return self._lost is not None

    def check(self) -> None:
        """Raises LeaseLost if a heartbeat found the lease gone."""
        if self._lost is not None:
            raise self._lost

    async def __aenter__(self) -> Heartbeat:
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name=f"heartbeat {self._lease.job_key}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        # Let a heartbeat in flight finish: cancelling it mid-query would leave its pooled
        # connection half-read. Only a heartbeat that hangs is cancelled.
        self._stop.set()
        try:
            await asyncio.wait([task], timeout=self.interval)
        finally:
            await cancel_and_wait([task])

    async def _run(self) -> None:
        while not await wait_event(self._stop, self.interval):
            try:
                self._lease = await self._store.heartbeat(self._lease)
            except LeaseLost as exc:
                log.error("%s; stopping its heartbeat", exc)
                self._lost = exc
                return
            except Exception as exc:
                log.warning("heartbeat of %s failed, retrying: %r", self._lease.job_key, exc)


class MysqlJobLeases:
    """The lease operations of one unit of work, on its connection."""

    def __init__(self, store: LeaseStore, conn: Connection) -> None:
        self._store = store
        self._conn = conn

    async def fence(self, lease: Lease) -> None:
        await self._store.fence(self._conn, lease)

    async def complete(self, lease: Lease) -> None:
        await self._store.complete(lease, conn=self._conn)

    async def fail(self, lease: Lease, reason: str) -> None:
        await self._store.fail(lease, reason, conn=self._conn)

    async def release(self, lease: Lease, reason: str) -> None:
        await self._store.release(lease, reason, conn=self._conn)

    async def reopen(self, job_key: str) -> None:
        # Released with no attempt counted: the next run is a new job, not a retry of this one.
        await db.execute(
            self._conn,
            "UPDATE job_leases SET state = 'released', holder = NULL, attempts = 0, last_error = NULL,"
            " expires_at = NULL, updated_at = NOW(6) WHERE job_key = %s",
            (job_key,),
        )

    async def reap(self, max_attempts: int) -> ReapResult:
        return await self._store.reap(max_attempts, conn=self._conn)

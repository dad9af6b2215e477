"""Job leases against a real catalog: one winner per claim, expiry, takeover, fencing, reaping."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.leases import LeaseStore
from backup_common.adapters.settings import Settings
from backup_common.domain.jobs import Lease, LeaseLost

pytestmark = pytest.mark.integration

SHORT = 0.3  # seconds; long enough for a round trip, short enough to wait out


def new_key() -> str:
    return f"test:{uuid.uuid4()}"


async def lease_row(pool: db.Pool, job_key: str) -> dict[str, Any]:
    async with db.transaction(pool) as conn:
        row = await db.fetch_one(
            conn,
            "SELECT holder, version, state, attempts, payload, last_error FROM job_leases WHERE job_key = %s",
            (job_key,),
        )
    assert row is not None
    return row


async def claim_once_expired(store: LeaseStore, job_key: str, holder: str) -> Lease:
    """Polls until the current lease has expired and ``holder`` takes it over."""
    for _ in range(100):
        lease = await store.claim(job_key, holder)
        if lease is not None:
            return lease
        await asyncio.sleep(0.05)
    raise AssertionError(f"{holder} could not take over {job_key} within 5 s")


async def test_the_first_claim_wins_and_another_holder_gets_none(catalog_pool: db.Pool) -> None:
    store = LeaseStore(catalog_pool, lease_seconds=30)
    key = new_key()

    lease = await store.claim(key, "worker-a", {"backup_id": "b1"})

    assert lease is not None
    assert (lease.job_key, lease.holder, lease.version, lease.attempts) == (key, "worker-a", 1, 1)
    assert await store.claim(key, "worker-b") is None
    row = await lease_row(catalog_pool, key)
    assert (row["holder"], row["state"], row["version"]) == ("worker-a", "held", 1)


async def test_twenty_concurrent_claims_of_one_job_yield_exactly_one_lease(catalog_pool: db.Pool) -> None:
    store = LeaseStore(catalog_pool, lease_seconds=30)
    key = new_key()

    results = await asyncio.gather(*(store.claim(key, f"worker-{n}") for n in range(20)))

    winners = [lease for lease in results if lease is not None]
    assert len(winners) == 1
    row = await lease_row(catalog_pool, key)
    assert (row["holder"], row["version"], row["attempts"]) == (winners[0].holder, 1, 1)


async def test_a_heartbeat_extends_the_expiry_past_the_original_one(catalog_pool: db.Pool) -> None:
    store = LeaseStore(catalog_pool, lease_seconds=1.0)
    key = new_key()
    lease = await store.claim(key, "worker-a")
    assert lease is not None

    await asyncio.sleep(0.6)
    extended = await store.heartbeat(lease)
    await asyncio.sleep(0.6)  # past the original expiry, not the extended one

    assert extended.expires_at > lease.expires_at
    assert (extended.holder, extended.version) == (lease.holder, lease.version)
    assert await store.claim(key, "worker-b") is None


async def test_an_expired_lease_is_claimed_by_another_worker_with_a_higher_version(
    catalog_pool: db.Pool,
) -> None:
    store = LeaseStore(catalog_pool, lease_seconds=SHORT)
    key = new_key()
    first = await store.claim(key, "worker-a", {"backup_id": "b1"})
    assert first is not None

    second = await claim_once_expired(store, key, "worker-b")

    assert second.holder == "worker-b"
    assert second.version == first.version + 1
    assert second.attempts == 2
    row = await lease_row(catalog_pool, key)
    assert (row["holder"], row["version"], row["state"]) == ("worker-b", 2, "held")
    assert row["payload"] is not None  # kept, so the job can still be re-emitted


async def test_a_stale_holder_can_neither_heartbeat_nor_write_once_its_lease_is_taken_over(
    catalog_pool: db.Pool,
) -> None:
    store = LeaseStore(catalog_pool, lease_seconds=SHORT)
    key = new_key()
    backup_id = str(uuid.uuid4())
    async with db.transaction(catalog_pool) as conn:
        await db.execute(
            conn,
            "INSERT INTO backups (id, type, status, requested_by, storage_path, created_at, updated_at)"
            " VALUES (%s, 'database', 'running', 'test', %s, NOW(6), NOW(6))",
            (backup_id, f"test/{backup_id}"),
        )
        await db.execute(
            conn,
            "INSERT INTO backup_parts (backup_id, part, status, updated_at) VALUES (%s, 'database', 'running', NOW(6))",
            (backup_id,),
        )
    stale = await store.claim(key, "worker-a")
    assert stale is not None
    current = await claim_once_expired(store, key, "worker-b")
    record = "UPDATE backup_parts SET file_name = %s WHERE backup_id = %s AND part = 'database'"
    async with db.transaction(catalog_pool) as conn:
        await store.fence(conn, current)
        await db.execute(conn, record, ("written-by-b.zip", backup_id))

    async def stale_write() -> None:
        async with db.transaction(catalog_pool) as conn:
            await db.execute(conn, record, ("written-by-a.zip", backup_id))
            await store.fence(conn, stale)

    with pytest.raises(LeaseLost):
        await store.heartbeat(stale)
    with pytest.raises(LeaseLost, match="taken over by worker-b"):
        await stale_write()

    async with db.transaction(catalog_pool) as conn:
        part = await db.fetch_one(
            conn, "SELECT file_name FROM backup_parts WHERE backup_id = %s AND part = 'database'", (backup_id,)
        )
    assert part == {"file_name": "written-by-b.zip"}


async def test_a_completed_job_can_no_longer_be_claimed_or_extended(catalog_pool: db.Pool) -> None:
    store = LeaseStore(catalog_pool, lease_seconds=SHORT)
    key = new_key()
    lease = await store.claim(key, "worker-a")
    assert lease is not None

    await store.complete(lease)
    await asyncio.sleep(SHORT + 0.1)  # expiry does not reopen a finished job

    assert await store.claim(key, "worker-b") is None
    with pytest.raises(LeaseLost):
        await store.heartbeat(lease)
    assert (await lease_row(catalog_pool, key))["state"] == "done"


async def test_a_failed_job_keeps_its_reason_and_can_no_longer_be_claimed(catalog_pool: db.Pool) -> None:
    store = LeaseStore(catalog_pool, lease_seconds=30)
    key = new_key()
    lease = await store.claim(key, "worker-a")
    assert lease is not None

    await store.fail(lease, "disk full")

    assert await store.claim(key, "worker-b") is None
    row = await lease_row(catalog_pool, key)
    assert (row["state"], row["last_error"]) == ("failed", "disk full")


async def test_a_released_job_can_be_claimed_by_another_worker_at_once(catalog_pool: db.Pool) -> None:
    store = LeaseStore(catalog_pool, lease_seconds=30)
    key = new_key()
    lease = await store.claim(key, "worker-a")
    assert lease is not None

    await store.release(lease, "shutting down")
    again = await store.claim(key, "worker-b")

    assert again is not None
    assert (again.holder, again.version, again.attempts) == ("worker-b", 2, 2)
    with pytest.raises(LeaseLost):
        await store.complete(lease)


async def test_the_reaper_requeues_a_lost_job_under_the_attempt_limit_and_fails_one_at_it(
    catalog_pool: db.Pool,
) -> None:
    store = LeaseStore(catalog_pool, lease_seconds=SHORT)
    once, twice = new_key(), new_key()
    assert await store.claim(once, "worker-a", {"backup_id": "b-once"}) is not None
    assert await store.claim(twice, "worker-a", {"backup_id": "b-twice"}) is not None
    await claim_once_expired(store, twice, "worker-b")
    await asyncio.sleep(SHORT + 0.1)

    result = await store.reap(max_attempts=2)

    requeued = {job.job_key: job for job in result.requeue}
    failed = {job.job_key: job for job in result.failed}
    assert once in requeued
    assert once not in failed
    assert requeued[once].payload == {"backup_id": "b-once"}
    assert twice in failed
    assert twice not in requeued
    assert failed[twice].attempts == 2
    assert (await lease_row(catalog_pool, once))["state"] == "released"
    row = await lease_row(catalog_pool, twice)
    assert (row["state"], row["last_error"]) == ("failed", "lease expired 2 times; the worker was lost")
    retried = await store.claim(once, "worker-c")
    assert retried is not None
    assert retried.attempts == 2
    assert await store.claim(twice, "worker-c") is None


async def test_a_second_reaper_finds_nothing_left_to_reap(catalog_pool: db.Pool) -> None:
    store = LeaseStore(catalog_pool, lease_seconds=SHORT)
    key = new_key()
    assert await store.claim(key, "worker-a") is not None
    await asyncio.sleep(SHORT + 0.1)

    first, second = await asyncio.gather(store.reap(max_attempts=3), store.reap(max_attempts=3))

    reaped = [job.job_key for job in first.requeue + second.requeue if job.job_key == key]
    assert reaped == [key]


async def test_keep_alive_holds_a_lease_over_several_lease_periods(catalog_pool: db.Pool) -> None:
    store = LeaseStore(catalog_pool, lease_seconds=SHORT)
    key = new_key()
    lease = await store.claim(key, "worker-a")
    assert lease is not None

    async with store.keep_alive(lease) as keeper:
        await asyncio.sleep(SHORT * 5)
        assert await store.claim(key, "worker-b") is None
        assert not keeper.lost
        keeper.check()
        assert keeper.lease.expires_at > lease.expires_at
        assert keeper.lease.version == lease.version
    await store.complete(keeper.lease)

    assert (await lease_row(catalog_pool, key))["state"] == "done"


async def test_keep_alive_reports_the_loss_when_a_stalled_holders_lease_is_taken_over(
    catalog_pool: db.Pool, settings: Settings
) -> None:
    # The holder reaches the catalog through a one-connection pool; the test keeps that connection
    # busy, so its heartbeats stall (as on a network partition) while another worker takes over.
    holder_pool = await db.create_pool(settings.catalog, minsize=1, maxsize=1)
    try:
        holder_store = LeaseStore(holder_pool, lease_seconds=SHORT)
        other_store = LeaseStore(catalog_pool, lease_seconds=30)
        key = new_key()
        lease = await holder_store.claim(key, "worker-a")
        assert lease is not None

        async with holder_store.keep_alive(lease) as keeper:
            async with holder_pool.acquire():
                thief = await claim_once_expired(other_store, key, "worker-b")
            for _ in range(250):
                if keeper.lost:
                    break
                await asyncio.sleep(0.02)
            with pytest.raises(LeaseLost):
                keeper.check()

        assert thief.version == lease.version + 1
        assert (await other_store.heartbeat(thief)).holder == "worker-b"
    finally:
        await db.close_pool(holder_pool)

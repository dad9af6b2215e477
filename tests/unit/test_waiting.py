"""Waiting with a time limit, and stopping tasks, without losing or outliving a cancellation."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from backup_common.adapters import waiting
from backup_common.adapters.waiting import cancel_and_wait, wait_event


async def test_wait_event_tells_a_set_event_from_a_timeout() -> None:
    event = asyncio.Event()
    assert not await wait_event(event, 0.01)
    event.set()
    assert await wait_event(event, 60)


async def test_a_wait_cancelled_in_the_turn_its_event_is_set_is_still_cancelled() -> None:
    # asyncio.wait_for returns True here on Python 3.11, and a loop built on it outlives its cancel.
    event = asyncio.Event()
    task = asyncio.create_task(wait_event(event, 60))
    await asyncio.sleep(0)
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancel_and_wait_cancels_again_a_task_that_swallowed_its_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(waiting, "RECANCEL_SECONDS", 0.01)
    cancels = 0

    async def stubborn() -> None:
        nonlocal cancels
        while True:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancels += 1
                if cancels == 3:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await cancel_and_wait([task])
    assert task.cancelled()
    assert cancels == 3


async def test_cancel_and_wait_logs_a_tasks_own_error_rather_than_raising_it(caplog: pytest.LogCaptureFixture) -> None:
    async def failing() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(60)
        raise RuntimeError("broken on the way out")

    task = asyncio.create_task(failing(), name="failing task")
    await asyncio.sleep(0)
    await cancel_and_wait([task])
    assert "failing task failed while being stopped" in caplog.text

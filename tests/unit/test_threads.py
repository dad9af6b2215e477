from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from backup_common.adapters.runtime.threads import Stopped, in_thread


async def test_the_work_runs_in_a_thread_and_its_result_is_returned() -> None:
    def work(check: Callable[[], None]) -> str:
        check()
        return threading.current_thread().name

    assert await in_thread(work) != threading.current_thread().name


async def test_a_cancelled_call_stops_its_thread_at_the_next_check() -> None:
    started, ended = threading.Event(), threading.Event()
    raised: list[BaseException] = []

    def work(check: Callable[[], None]) -> None:
        started.set()
        try:
            while True:  # an archive being written, reporting its progress
                check()
                time.sleep(0.01)
        except Stopped as exc:
            raised.append(exc)
        finally:
            ended.set()

    task = asyncio.create_task(in_thread(work))
    assert await asyncio.to_thread(started.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await asyncio.to_thread(ended.wait, 30)
    assert [type(exc) for exc in raised] == [Stopped]

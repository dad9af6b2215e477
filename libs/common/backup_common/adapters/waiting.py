"""Waiting with a time limit without ever swallowing a cancellation.

On Python 3.11, ``asyncio.wait_for`` returns the awaited result when its caller is cancelled in the
same turn as the awaited thing completes: a loop that waits that way can outlive its cancel, and a
stop that awaits the loop then hangs. ``asyncio.timeout`` tells its own cancel from another's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

RECANCEL_SECONDS = 1.0


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Whether ``event`` was set within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancels the tasks and returns once every one has ended.

    A task that caught its cancellation (a driver waiting with ``wait_for`` can) is cancelled again
    every RECANCEL_SECONDS, so a stop never hangs on it. The tasks' own errors are logged, not raised:
    the caller is stopping them.
    """
    stopping = list(tasks)
    pending = {task for task in stopping if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_SECONDS)
        if pending:
            names = ", ".join(sorted(task.get_name() for task in pending))
            log.warning("still running after being cancelled, cancelling again: %s", names)
    for task in stopping:
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("%s failed while being stopped", task.get_name(), exc_info=error)

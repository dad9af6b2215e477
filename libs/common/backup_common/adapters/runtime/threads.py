"""Blocking work run in a worker thread that stops when the task awaiting it is cancelled.

Cancelling a task that awaits ``asyncio.to_thread`` stops the awaiting, not the thread: a worker that
stopped and handed its job back would go on archiving or restoring in the background while another
worker does the same job, both writing the same files. The work is handed a ``check`` to call as it
goes (from its progress reports, typically), which raises Stopped once the awaiting task was
cancelled, so the thread gives up and cleans up as on any other error.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Stopped(Exception):
    """The task awaiting this work was cancelled: the work gives up."""


async def in_thread(work: Callable[[Callable[[], None]], T]) -> T:
    """``work(check)`` in a worker thread; ``check()`` raises Stopped once this call was cancelled."""
    stopped = threading.Event()

    def check() -> None:
        if stopped.is_set():
            raise Stopped("stopped: the job was handed back")

    try:
        return await asyncio.to_thread(work, check)
    except asyncio.CancelledError:
        stopped.set()
        raise

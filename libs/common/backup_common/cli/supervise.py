"""`backupctl run`'s supervision: every service in its own process, one that exits started again
with a growing delay, all stopped together on Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Protocol

from backup_common.adapters.waiting import wait_event


async def run_services(services: Mapping[str, str], env: dict[str, str]) -> int:
    """Runs the services (name: package) in the foreground until Ctrl-C or SIGTERM, starting again
    one that exits (see :func:`supervise`)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    async def spawn(name: str) -> Child:
        return await asyncio.create_subprocess_exec(sys.executable, "-m", services[name], env=env)

    await supervise(list(services), spawn, stop)
    return 0


STOP_GRACE_SECONDS = 15.0  # between asking a service to stop and killing it


@dataclass
class RestartPolicy:
    """How long to wait before starting again a service that exited: ``first`` seconds, doubled
    after each exit up to ``limit``, and ``first`` again once it had run ``stable`` seconds (it was
    working; what stopped it is news, not the same crash again)."""

    first: float = 1.0
    limit: float = 30.0
    stable: float = 60.0
    _next: float | None = field(default=None, init=False, repr=False)

    def delay(self, ran_for: float) -> float:
        """The pause before the next start of a service that exited after running ``ran_for`` seconds."""
        if self._next is None or ran_for >= self.stable:
            self._next = self.first
        delay = self._next
        self._next = min(delay * 2, self.limit)
        return delay


class Child(Protocol):
    """A service's process, as asyncio.subprocess.Process gives it."""

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


async def supervise(
    names: Sequence[str],
    spawn: Callable[[str], Awaitable[Child]],
    stop: asyncio.Event,
    *,
    policy: Callable[[], RestartPolicy] = RestartPolicy,
    clock: Callable[[], float] = time.monotonic,
    grace: float = STOP_GRACE_SECONDS,
) -> None:
    """Runs each named service (``spawn`` starts one) until ``stop`` is set: one that exits is
    logged and started again after its policy's delay, the others run on. Then stops them all:
    SIGTERM, and SIGKILL for one still running ``grace`` seconds later."""
    async with asyncio.TaskGroup() as group:
        for name in names:
            group.create_task(_keep_running(name, spawn, stop, policy(), clock, grace), name=f"supervise {name}")


async def _keep_running(
    name: str,
    spawn: Callable[[str], Awaitable[Child]],
    stop: asyncio.Event,
    policy: RestartPolicy,
    clock: Callable[[], float],
    grace: float,
) -> None:
    while not stop.is_set():
        child = await spawn(name)
        started = clock()
        exited = asyncio.ensure_future(child.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([exited, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not exited.done():
            await _stop_child(name, child, exited, grace)
            return
        if stop.is_set():
            return  # Ctrl-C reaches the services too: this one stopped as asked
        delay = policy.delay(clock() - started)
        print(
            f"backupctl run: {name} exited with status {child.returncode}; starting it again in {delay:g} s",
            file=sys.stderr,
            flush=True,
        )
        if await wait_event(stop, delay):
            return


async def _stop_child(name: str, child: Child, exited: asyncio.Future[int], grace: float) -> None:
    with suppress(ProcessLookupError):  # it may exit on its own meanwhile
        child.terminate()
    # wait(), not a timeout around the future: that would cancel the wait it must then wait on again.
    done, _ = await asyncio.wait([exited], timeout=grace)
    if not done:
        print(f"backupctl run: {name} did not stop within {grace:g} s; killing it", file=sys.stderr, flush=True)
        with suppress(ProcessLookupError):
            child.kill()
        await exited

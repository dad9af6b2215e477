"""`backupctl run`'s supervision: a service that exits is started again after a growing pause, the
others run on, and a stop ends them all (killing one that will not stop)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from backup_common.cli.supervise import Child, RestartPolicy, supervise


class FakeChild:
    """A service process that runs until told to exit, terminated, or killed (``stubborn``: not
    by a terminate)."""

    def __init__(self, name: str, *, stubborn: bool = False) -> None:
        self.name = name
        self.stubborn = stubborn
        self.returncode: int | None = None
        self.signals: list[str] = []
        self._exited = asyncio.Event()

    def exit(self, code: int) -> None:
        self.returncode = code
        self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def terminate(self) -> None:
        self.signals.append("SIGTERM")
        if not self.stubborn:
            self.exit(-15)

    def kill(self) -> None:
        self.signals.append("SIGKILL")
        self.exit(-9)


class Services:
    """Spawns FakeChild processes and keeps every one, by service, in start order."""

    def __init__(self, *, stubborn: bool = False) -> None:
        self.started: dict[str, list[FakeChild]] = {}
        self.stubborn = stubborn
        self._spawned = asyncio.Condition()

    async def spawn(self, name: str) -> Child:
        child = FakeChild(name, stubborn=self.stubborn)
        async with self._spawned:
            self.started.setdefault(name, []).append(child)
            self._spawned.notify_all()
        return child

    async def until(self, condition: Callable[[], bool]) -> None:
        """Returns once ``condition()`` holds, checked after every start."""
        async with asyncio.timeout(10), self._spawned:
            await self._spawned.wait_for(condition)

    def current(self, name: str) -> FakeChild:
        return self.started[name][-1]


def quick() -> RestartPolicy:
    """Restarts without a noticeable pause (the delays themselves are tested on RestartPolicy)."""
    return RestartPolicy(first=0.001, limit=0.001)


def test_restart_delays_double_from_one_second_up_to_thirty() -> None:
    policy = RestartPolicy()

    delays = [policy.delay(ran_for=0.5) for _ in range(8)]

    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]


def test_a_service_that_ran_a_while_before_exiting_is_restarted_after_the_first_delay_again() -> None:
    policy = RestartPolicy(first=1, limit=30, stable=60)
    for _ in range(4):
        policy.delay(ran_for=1)

    assert policy.delay(ran_for=60) == 1
    assert policy.delay(ran_for=1) == 2


async def test_a_service_that_exits_is_started_again_and_the_others_run_on(capsys: pytest.CaptureFixture[str]) -> None:
    services, stop = Services(), asyncio.Event()
    running = asyncio.create_task(supervise(["gateway", "database_backup"], services.spawn, stop, policy=quick))
    await services.until(lambda: len(services.started) == 2)
    gateway = services.current("gateway")

    services.current("database_backup").exit(1)
    await services.until(lambda: len(services.started["database_backup"]) == 2)

    assert services.started["gateway"] == [gateway]
    assert gateway.returncode is None
    assert gateway.signals == []
    assert "database_backup exited with status 1; starting it again" in capsys.readouterr().err
    stop.set()
    await running


async def test_a_stop_terminates_every_service_and_starts_none_again() -> None:
    services, stop = Services(), asyncio.Event()
    running = asyncio.create_task(supervise(["gateway", "retention"], services.spawn, stop, policy=quick))
    await services.until(lambda: len(services.started) == 2)

    stop.set()
    await running

    for children in services.started.values():
        [child] = children
        assert (child.signals, child.returncode) == (["SIGTERM"], -15)


async def test_a_service_that_exits_as_the_stop_comes_is_not_started_again() -> None:
    services, stop = Services(), asyncio.Event()
    running = asyncio.create_task(supervise(["gateway"], services.spawn, stop, policy=quick))
    await services.until(lambda: "gateway" in services.started)

    stop.set()
    services.current("gateway").exit(0)  # Ctrl-C reached it too
    await running

    assert len(services.started["gateway"]) == 1


async def test_a_service_that_ignores_the_terminate_is_killed_after_the_grace_period(
    capsys: pytest.CaptureFixture[str],
) -> None:
    services, stop = Services(stubborn=True), asyncio.Event()
    running = asyncio.create_task(supervise(["verification"], services.spawn, stop, policy=quick, grace=0.01))
    await services.until(lambda: "verification" in services.started)

    stop.set()
    await running

    child = services.current("verification")
    assert (child.signals, child.returncode) == (["SIGTERM", "SIGKILL"], -9)
    assert "verification did not stop" in capsys.readouterr().err


async def test_a_service_that_keeps_crashing_is_restarted_with_growing_pauses() -> None:
    services, stop = Services(), asyncio.Event()
    pauses: list[float] = []

    class Recorded(RestartPolicy):
        def delay(self, ran_for: float) -> float:
            pauses.append(super().delay(ran_for))
            return 0.001

    running = asyncio.create_task(supervise(["file_backup"], services.spawn, stop, policy=Recorded))

    def started(count: int) -> Callable[[], bool]:
        return lambda: len(services.started.get("file_backup", [])) == count

    for attempt in range(1, 5):
        await services.until(started(attempt))
        services.current("file_backup").exit(1)
    await services.until(started(5))

    assert pauses == [1, 2, 4, 8]
    stop.set()
    await running

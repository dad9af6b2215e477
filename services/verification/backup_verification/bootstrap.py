"""The verification service's composition root: its handlers and drill schedule, given the ports and
the server restore drills load into."""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CollectorRegistry

from backup_common.adapters.mysql.source import AsyncmySqlServer
from backup_common.adapters.runtime.jobs import JobMetrics
from backup_common.adapters.runtime.service import Service, bind, job_worker_service, serve, worker_app
from backup_common.adapters.runtime.stored import StoredPart
from backup_common.adapters.settings import Settings
from backup_common.domain.documents import RestoreLimits
from backup_common.domain.jobs import VERIFY_JOB_PREFIX
from backup_common.domain.ports import Ports
from backup_common.domain.verification import Check
from backup_common.engine.database.drill import restore_drill, sweep_scratch_databases
from backup_common.engine.database.sql import SqlServer
from backup_verification import handlers
from backup_verification.handlers import (
    HANDLERS,
    Dependencies,
    DrillRunner,
    DrillSchedule,
    VerificationMetrics,
    Verifier,
    drill_prefix,
    scratch_database,
)

NAME = "verification"
log = logging.getLogger(__name__)


def bootstrap(
    settings: Settings,
    ports: Ports,
    registry: CollectorRegistry,
    *,
    drill_server: SqlServer | None = None,
    drill: DrillRunner | None = None,
    tick_seconds: float | None = None,
) -> Service:
    """``drill_server`` defaults to BACKUP_DRILL_MYSQL_URL's server, else the source's; ``drill`` to
    the engine's restore drill on it (unit tests pass their own)."""
    server = drill_server or AsyncmySqlServer(settings.drill_server)

    async def restore_drill_on_server(part: StoredPart, scratch: str, limits: RestoreLimits) -> Check:
        return await restore_drill(part.archive, part.manifest, server, scratch, password=part.password, limits=limits)

    catalog = settings.catalog
    prefix = drill_prefix(f"{catalog.host}:{catalog.port}/{catalog.database}")
    verifier = Verifier(
        ports,
        JobMetrics(registry, NAME),
        VerificationMetrics(registry),
        drill or restore_drill_on_server,
        scratch_prefix=prefix,
    )
    schedule = DrillSchedule(ports, verifier, tick_seconds=tick_seconds or handlers.TICK_SECONDS)

    async def sweep_then_schedule() -> None:
        # Scratch databases a crashed drill left behind, except those a live replica is using.
        live = {
            scratch_database(prefix, key.removeprefix(VERIFY_JOB_PREFIX))
            for key in await ports.leases.held(VERIFY_JOB_PREFIX)
        }
        try:
            swept = await sweep_scratch_databases(server, prefix=prefix, keep=lambda name: name in live)
        except Exception:
            log.exception("could not sweep leftover scratch databases")
        else:
            if swept:
                log.warning("dropped scratch databases a crashed drill left behind: %s", ", ".join(swept))
        await schedule.run()

    service = job_worker_service(NAME, bind(HANDLERS, Dependencies(ports, verifier)), verifier)
    service.loops = (sweep_then_schedule,)
    return service


def create_app(settings: Settings) -> web.Application:
    return worker_app(settings, NAME, bootstrap)


def main() -> None:
    serve(NAME, create_app, lambda settings: (settings.worker_host, settings.verification_port))

"""The queues every process declares: generated from the services' handler tables, never edited by hand."""

from __future__ import annotations

from backup_common.adapters.amqp.topology import TOPOLOGY_FILE, load_service_queues, routing_keys
from backup_common.domain.events import BackupCompleted, BackupRequested, RestoreRequested, VerifyRequested
from backup_database.handlers import HANDLERS as DATABASE_BACKUP
from backup_files.handlers import HANDLERS as FILE_BACKUP
from backup_gateway.handlers import HANDLERS as GATEWAY
from tools.topology import TABLES, render

REGENERATE = "the handler tables and infra/rabbitmq/topology.json differ: run `make schemas` and commit the result"


def test_the_committed_topology_is_the_one_the_handler_tables_give() -> None:
    assert TOPOLOGY_FILE.read_text() == render(), REGENERATE


def test_both_workers_take_backup_and_restore_requests_so_both_queues_are_declared_for_them() -> None:
    queues = load_service_queues()

    assert queues["database_backup"] == routing_keys(DATABASE_BACKUP)
    assert queues["file_backup"] == routing_keys(FILE_BACKUP)
    for table in (DATABASE_BACKUP, FILE_BACKUP):
        assert {BackupRequested, RestoreRequested} <= set(table)


def test_verification_takes_completed_backups_and_verify_requests() -> None:
    assert set(load_service_queues()["verification"]) == {BackupCompleted.routing_key, VerifyRequested.routing_key}


def test_the_gateway_s_queue_takes_the_commands_automation_sends_and_no_event() -> None:
    assert load_service_queues()["gateway"] == ["command.backup.create", "command.backup.verify"]
    assert load_service_queues()["gateway"] == routing_keys(GATEWAY)


def test_a_service_that_consumes_nothing_has_no_queue() -> None:
    assert {name for name, table in TABLES.items() if table} == set(load_service_queues())

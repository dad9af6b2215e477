"""The one line `backupctl migrate`, `backupctl run` and a service print when MySQL or RabbitMQ cannot be
used at start: where (host and port, the variable that set them), and why, never the password."""

from __future__ import annotations

import socket

import pytest
from aiormq.exceptions import AMQPConnectionError, ProbableAuthenticationError
from asyncmy.errors import OperationalError

from backup_common.adapters.mysql.migrations import MigrationError
from backup_common.adapters.runtime.service import amqp_problem, mysql_problem
from backup_common.engine.database.target import MysqlTarget

CATALOG = MysqlTarget("mysql://backup:s3cret@db.internal:3307/backup_catalog")
CANNOT_CONNECT = "Can't connect to MySQL server on 'db.internal'"
MYSQL = "MySQL at db.internal:3307 (BACKUP_MYSQL_URL)"


def caused(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            OperationalError(2003, f"{CANNOT_CONNECT} ([Errno 111] Connect call failed)"),
            f"cannot reach {MYSQL}: Connection refused",
        ),
        (
            caused(
                OperationalError(2003, f"{CANNOT_CONNECT} ([Errno -2] Name or service not known)"),
                socket.gaierror(-2, "Name or service not known"),
            ),
            f"cannot reach {MYSQL}: Name or service not known",
        ),
        (
            OperationalError(2013, "Lost connection to MySQL server during query ([Errno 104] Connection reset)"),
            f"cannot reach {MYSQL}: Connection reset by peer",
        ),
        (
            OperationalError(1045, "Access denied for user 'backup'@'10.0.0.2' (using password: YES)"),
            f"cannot use {MYSQL}: Access denied for user 'backup'@'10.0.0.2' (using password: YES) (error 1045)",
        ),
        (
            MigrationError("another process held the migration lock for 60 s"),
            f"cannot migrate the catalog backup_catalog on {MYSQL}: another process held the migration lock for 60 s",
        ),
        (TimeoutError(), f"cannot reach {MYSQL}: no answer in time"),
        (ConnectionRefusedError(111, "Connect call failed"), f"cannot reach {MYSQL}: Connection refused"),
    ],
)
def test_a_mysql_that_cannot_be_used_is_one_line_naming_the_variable(error: BaseException, line: str) -> None:
    said = mysql_problem(CATALOG, "BACKUP_MYSQL_URL", error)

    assert said == line
    assert "s3cret" not in said


@pytest.mark.parametrize(
    ("url", "error", "line"),
    [
        (
            "amqp://guest:guest@127.0.0.1:1/",
            caused(AMQPConnectionError(111, "Connect call failed ('127.0.0.1', 1)"), ConnectionRefusedError(111, "x")),
            "cannot reach RabbitMQ at 127.0.0.1:1 (BACKUP_AMQP_URL): Connection refused",
        ),
        (
            "amqps://backup:s3cret@mq.internal/prod",
            AMQPConnectionError(-2, "Name or service not known"),
            "cannot reach RabbitMQ at mq.internal:5671 (BACKUP_AMQP_URL): Name or service not known",
        ),
        (
            "amqp://backup:s3cret@mq.internal/",
            ProbableAuthenticationError("ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN."),
            "cannot reach RabbitMQ at mq.internal:5672 (BACKUP_AMQP_URL): ACCESS_REFUSED - Login was refused using"
            " authentication mechanism PLAIN.",
        ),
        (
            "amqp://mq.internal/",
            TimeoutError(),
            "cannot reach RabbitMQ at mq.internal:5672 (BACKUP_AMQP_URL): no answer in time",
        ),
    ],
)
def test_a_rabbitmq_that_cannot_be_used_is_one_line_naming_the_variable(
    url: str, error: BaseException, line: str
) -> None:
    said = amqp_problem(url, "BACKUP_AMQP_URL", error)

    assert said == line
    assert "s3cret" not in said

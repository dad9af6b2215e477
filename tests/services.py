"""The MySQL/MariaDB and RabbitMQ servers the integration and end-to-end tests run against.

With a Docker engine, throwaway containers (testcontainers); without one, the servers named by
BACKUP_TEST_MYSQL_URL and BACKUP_TEST_AMQP_URL, defaulting to the local ones. Each test run works in
its own database and its own exchange and queue names, and removes them at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

DEFAULT_MYSQL_URL = "mysql://root@127.0.0.1:3306/"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass(frozen=True)
class ServiceEndpoints:
    mysql_server_url: str  # without a database name
    amqp_url: str
    run_id: str

    def mysql_url(self, database: str) -> str:
        return self.mysql_server_url.rstrip("/") + "/" + database


def docker_engine_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=2)
        client.ping()
    except Exception:
        return False
    return True


@contextmanager
def test_servers() -> Iterator[ServiceEndpoints]:
    run_id = uuid.uuid4().hex[:10]
    explicit = "BACKUP_TEST_MYSQL_URL" in os.environ or "BACKUP_TEST_AMQP_URL" in os.environ
    if explicit or not docker_engine_answers():
        yield ServiceEndpoints(
            os.environ.get("BACKUP_TEST_MYSQL_URL", DEFAULT_MYSQL_URL),
            os.environ.get("BACKUP_TEST_AMQP_URL", DEFAULT_AMQP_URL),
            run_id,
        )
        return
    from testcontainers.community.mysql import MySqlContainer
    from testcontainers.community.rabbitmq import RabbitMqContainer

    with ExitStack() as stack:
        mysql = stack.enter_context(MySqlContainer("mysql:8.4", root_password="test"))
        rabbit = stack.enter_context(RabbitMqContainer("rabbitmq:3.13"))
        yield ServiceEndpoints(
            f"mysql://root:test@{mysql.get_container_host_ip()}:{mysql.get_exposed_port(3306)}/",
            f"amqp://guest:guest@{rabbit.get_container_host_ip()}:{rabbit.get_exposed_port(5672)}/",
            run_id,
        )

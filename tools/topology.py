"""Writes infra/rabbitmq/topology.json: each service's queue and the routing keys its handler table
binds it to. `make schemas` runs it; a unit test fails while the file and the tables differ.

Every process declares these queues when it connects, so an event published before the service that
takes it has ever run waits in its queue rather than reaching only the services already declared.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from backup_common.adapters.amqp.topology import TOPOLOGY_FILE, ServiceQueues, routing_keys
from backup_database import bootstrap as database_backup
from backup_database.handlers import HANDLERS as DATABASE_BACKUP
from backup_files import bootstrap as file_backup
from backup_files.handlers import HANDLERS as FILE_BACKUP
from backup_gateway import bootstrap as gateway
from backup_gateway.handlers import HANDLERS as GATEWAY
from backup_retention import bootstrap as retention
from backup_retention.handlers import HANDLERS as RETENTION
from backup_verification import bootstrap as verification
from backup_verification.handlers import HANDLERS as VERIFICATION

TABLES = {
    gateway.NAME: GATEWAY,
    database_backup.NAME: DATABASE_BACKUP,
    file_backup.NAME: FILE_BACKUP,
    verification.NAME: VERIFICATION,
    retention.NAME: RETENTION,
}


def service_queues() -> ServiceQueues:
    """Each consuming service's routing keys, from its handler table."""
    return {name: routing_keys(table) for name, table in sorted(TABLES.items()) if table}


def render() -> str:
    document = {
        "comment": "Generated from the services' handler tables by `make schemas`: do not edit by hand.",
        "queues": service_queues(),
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else TOPOLOGY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The catalog's ENUM columns, as the migrations leave them, take every value of the model's enums."""

from __future__ import annotations

import re

from backup_common.adapters.mysql.migrations import load_migrations
from backup_common.domain.model import Trigger


def enum_values(column: str) -> set[str]:
    """The values of ``column``'s ENUM as the last migration that (re)defines it says."""
    definition = re.compile(rf"\b{column}\s+ENUM\(([^)]*)\)", re.IGNORECASE)
    found: set[str] | None = None
    for migration in load_migrations():
        for statement in migration.statements():
            for match in definition.finditer(statement):
                found = set(re.findall(r"'([^']*)'", match.group(1)))
    assert found is not None, f"no migration defines {column}"
    return found


def test_every_trigger_fits_the_catalog_s_trigger_column() -> None:
    missing = {trigger.value for trigger in Trigger} - enum_values("trigger_source")

    assert not missing, f"backups.trigger_source cannot hold {sorted(missing)}: add a migration that widens its ENUM"

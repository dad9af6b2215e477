"""``DocumentRepository`` on the catalog's ``settings`` table, seeded from the shipped defaults."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from asyncmy.connection import Connection

from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.db import utc
from backup_common.domain.documents import DOCUMENTS, Document
from backup_common.domain.ports import StoredDocument
from backup_common.paths import CONFIG_DIR

DEFAULT_FILES = {"schedule": "backup-schedule.json", "settings": "backup-settings.json"}


def default_document(name: str, config_dir: Path = CONFIG_DIR) -> Document:
    """The document as shipped in infra/config/ (blocking: a file read)."""
    return DOCUMENTS[name].model_validate(json.loads((config_dir / DEFAULT_FILES[name]).read_text()))


def _stored(name: str, row: dict[str, Any]) -> StoredDocument:
    model = DOCUMENTS[name]
    document = row["document"]
    parsed = (
        model.model_validate_json(document) if isinstance(document, str | bytes) else model.model_validate(document)
    )
    return StoredDocument(name, parsed, int(row["revision"]), row["updated_by"], utc(row["updated_at"]))


class MysqlDocuments:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def get(self, name: str, *, for_update: bool = False) -> StoredDocument:
        row = await self._read(name, for_update=for_update)
        if row is None:
            default = await asyncio.to_thread(default_document, name)
            # Several services may seed at once: IGNORE makes the losers wait for the winner's row,
            # which the read below sees (units of work run at READ COMMITTED).
            await db.execute(
                self._conn,
                "INSERT IGNORE INTO settings (name, document, revision, updated_by, updated_at)"
                " VALUES (%s, %s, 1, 'defaults', NOW(6))",
                (name, default.model_dump_json()),
            )
            row = await self._read(name, for_update=for_update)
        assert row is not None
        return _stored(name, row)

    async def put(self, name: str, document: Document, updated_by: str) -> StoredDocument:
        await db.execute(
            self._conn,
            "INSERT INTO settings (name, document, revision, updated_by, updated_at)"
            " VALUES (%s, %s, 1, %s, NOW(6))"
            " ON DUPLICATE KEY UPDATE document = VALUES(document), revision = revision + 1,"
            " updated_by = VALUES(updated_by), updated_at = VALUES(updated_at)",
            (name, document.model_dump_json(), updated_by),
        )
        row = await self._read(name)
        assert row is not None
        return _stored(name, row)

    async def _read(self, name: str, *, for_update: bool = False) -> dict[str, Any] | None:
        lock = " FOR UPDATE" if for_update else ""
        return await db.fetch_one(self._conn, f"SELECT * FROM settings WHERE name = %s{lock}", (name,))

"""The database_backup worker: turns a BackupRequested with a database part into a durable archive."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any

from backup_common.adapters.mysql.leases import Lease
from backup_common.adapters.mysql.parts import BackupRecord, PartResult
from backup_common.adapters.mysql.source import AsyncmySqlServer
from backup_common.adapters.runtime.part_worker import PartFailure, PartWorker, prepare_directory
from backup_common.domain.events import BackupPart
from backup_common.engine.database.dump import DumpError, dump_database
from backup_common.engine.database.model import DumpOptions, DumpProgress
from backup_common.engine.storage import archive_name, part_manifest_name, tool_info, write_json_durably


class DatabaseBackupWorker(PartWorker):
    part = BackupPart.DATABASE

    async def produce(self, record: BackupRecord, lease: Lease) -> PartResult:
        context = self.context
        settings = context.settings
        document = await self.settings_document()
        password, encryption = await self.archive_key(record.id, bool(document["encryption"]["enabled"]))
        directory = self.directory(record)
        archive = directory / archive_name(self.part)
        await asyncio.to_thread(prepare_directory, directory, archive)
        options = DumpOptions(
            keep_definers=bool(document["database"]["keep_definers"]),
            compression_level=int(document["compression"]["level"]),
        )

        async def report(progress: DumpProgress) -> None:
            await context.parts.progress(lease, record.id, self.part, asdict(progress))

        begun = time.time()
        try:
            result = await dump_database(
                AsyncmySqlServer(settings.source), archive, password=password, options=options, progress=report
            )
        except DumpError as exc:
            raise PartFailure(str(exc)) from exc
        source = settings.source
        progress = {
            "bytes_done": sum(t.sql_bytes for t in result.tables),
            "rows_done": result.rows,
            "tables_done": len(result.tables),
            "tables_total": len(result.tables),
        }
        part_manifest: dict[str, Any] = {
            "part": self.part.value,
            "file": archive.name,
            "size_bytes": result.archive_bytes,
            "sha256": result.sha256,
            "rows": result.rows,
            "tables": [asdict(table) for table in result.tables],
            "members": result.members,
            "server_version": result.server_version,
            "consistency": result.consistency,
            "consistency_note": result.consistency_note,
            "binlog": result.binlog,
            "source": {"host": source.host, "port": source.port, "database": source.database},
            "options": asdict(options),
            "encryption": encryption,
            "started_at": begun,
            "finished_at": time.time(),
            "tool": tool_info(),
            "progress": progress,
        }
        await asyncio.to_thread(write_json_durably, directory / part_manifest_name(self.part), part_manifest)
        return PartResult(archive.name, result.archive_bytes, result.sha256, result.rows, progress)

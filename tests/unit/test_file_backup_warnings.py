"""What the file_backup worker reports of the paths a files part left out: text that the catalog
(utf8mb4) and a JSON client can hold, whatever bytes the names were."""

from __future__ import annotations

import os

from backup_common.domain.model import PartWarning
from backup_common.engine.files.model import Skipped
from backup_files.handlers import part_warnings


def test_a_skipped_name_that_is_not_utf8_is_shown_with_its_bytes_escaped() -> None:
    not_utf8 = os.fsdecode(b"uploads/caf\xe9/app.sock")  # as os.scandir gives it: a lone surrogate

    warnings = part_warnings([Skipped(not_utf8, "socket"), Skipped("uploads/zoë ✓/queue", "fifo")])

    assert warnings == (
        PartWarning("uploads/caf\\xe9/app.sock", "socket"),
        PartWarning("uploads/zoë ✓/queue", "fifo"),
    )
    assert all(warning.path.encode("utf-8") for warning in warnings)  # no lone surrogate is left

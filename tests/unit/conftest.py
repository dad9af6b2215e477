"""Fixtures of the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def archives(tmp_path: Path) -> Path:
    """A directory for the archives a test writes, apart from the restore targets in tmp_path."""
    directory = tmp_path / "archives"
    directory.mkdir()
    return directory

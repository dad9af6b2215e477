"""The file engine: scanning the trees, planning incrementals, archiving, checking a chain and restoring it."""

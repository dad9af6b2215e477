"""Pure: the backup model, events, documents, lease types and the ports handlers depend on; no I/O."""

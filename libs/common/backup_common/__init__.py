"""Shared library of the backup services: settings, events, messaging, catalog, outbox, leases."""

__version__ = "0.1.0"

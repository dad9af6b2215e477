"""Prometheus metrics of the gateway, in a registry of its own (one per application)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "backup_http_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "backup_http_request_duration_seconds",
            "Time to answer an HTTP request, by route.",
            ["route"],
            registry=self.registry,
        )
        self.outbox_pending = Gauge(
            "backup_outbox_pending_events",
            "Events written to the outbox and not yet confirmed by the broker.",
            registry=self.registry,
        )
        self.broker_connected = Gauge(
            "backup_broker_connected", "1 while the connection to RabbitMQ is up.", registry=self.registry
        )
        self.audit_failures = Counter(
            "backup_audit_write_failures", "Audit records that could not be written.", registry=self.registry
        )

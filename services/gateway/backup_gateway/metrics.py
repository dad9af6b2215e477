"""The gateway's own Prometheus metrics, beside those every service exposes (one registry per application)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "backup_http_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "backup_http_request_duration_seconds",
            "Time to answer an HTTP request, by route.",
            ["route"],
            registry=registry,
        )
        self.audit_failures = Counter(
            "backup_audit_write_failures", "Audit records that could not be written.", registry=registry
        )
        self.download_integrity_failures = Counter(
            "backup_download_integrity_failures",
            "Downloads cut short because an archive differed from its recorded size or SHA-256.",
            registry=registry,
        )

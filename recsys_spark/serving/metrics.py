"""What ``GET /metrics`` reports, in the Prometheus text format.

Each service instance has a registry of its own rather than prometheus_client's process-wide
default: two apps in one process (the tests start several) would otherwise share, and double,
their counts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ServiceMetrics"]

#: Latency buckets in seconds: dense below 50 ms, where a precomputed lookup should land.
_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServiceMetrics:
    """Request counts and latencies per endpoint, and the table versions being served."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "recsys_requests",
            "Requests answered, by endpoint (the route template) and HTTP status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "recsys_request_duration_seconds",
            "Time from request received to response ready, by endpoint.",
            ["endpoint"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.table_version = Gauge(
            "recsys_table_version",
            "Delta version of each lookup table being served (-1: not written yet).",
            ["table"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "recsys_table_reloads",
            "Switches to a new snapshot of table versions.",
            registry=self.registry,
        )
        self.filtered = Counter(
            "recsys_filtered_items",
            "Candidates left out of responses because the request excluded them.",
            registry=self.registry,
        )

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def served(self, versions: dict[str, int | None]) -> None:
        for table, version in versions.items():
            self.table_version.labels(table).set(-1 if version is None else version)

    def render(self) -> bytes:
        return generate_latest(self.registry)

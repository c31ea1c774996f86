"""Prometheus metrics of the API, in a registry per app (tests build several apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from mm_opensearch.hybrid import SearchResponse

__all__ = ["SearchMetrics"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class SearchMetrics:
    """Latency per mode and leg (encode, lexical, vector, hybrid, fuse, total), search outcomes, HTTP statuses."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "mmos_search_latency_seconds",
            "Search latency by mode and leg (legs: OpenSearch 'took'; encode, fuse and total: wall clock)",
            ["mode", "leg"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "mmos_search_requests", "Searches by requested mode and outcome", ["mode", "outcome"], registry=self.registry
        )
        self.responses = Counter(
            "mmos_http_responses",
            "HTTP responses by route and status (errors answered before routing, e.g. 413: route 'unmatched')",
            ["route", "status"],
            registry=self.registry,
        )

    def observe(self, response: SearchResponse) -> None:
        for leg, ms in response.timings_ms.items():
            self.latency.labels(mode=response.mode, leg=leg).observe(ms / 1000)
        outcome = "degraded" if response.degraded else "ok"
        self.requests.labels(mode=response.requested_mode, outcome=outcome).inc()

    def failed(self, mode: str, outcome: str) -> None:
        self.requests.labels(mode=mode, outcome=outcome).inc()

    def responded(self, route: str, status: int) -> None:
        self.responses.labels(route=route, status=str(status)).inc()

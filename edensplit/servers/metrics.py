"""Prometheus metrics of one app: requests by route, method and status, latency, bytes on the wire, in flight."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edensplit.version import __version__


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can share a process)."""

    def __init__(self, stage: str):
        self.registry = CollectorRegistry()
        labels = ("route", "method", "status")
        self.requests = Counter("edensplit_requests", "requests answered", labels, registry=self.registry)
        self.latency = Histogram("edensplit_request_seconds", "request wall time", ("route",),
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                                 registry=self.registry)
        self.bytes_in = Counter("edensplit_request_bytes", "request body bytes", ("route",), registry=self.registry)
        self.bytes_out = Counter("edensplit_response_bytes", "response body bytes", ("route",),
                                 registry=self.registry)
        self.inflight = Gauge("edensplit_inflight", "requests admitted and not yet answered", registry=self.registry)
        self.info = Gauge("edensplit_info", "server identity", ("stage", "version"), registry=self.registry)
        self.info.labels(stage, __version__).set(1)



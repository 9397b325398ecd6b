"""Prometheus metrics of one app (its own registry, so several apps can share a process): requests by route,
method and status, latency, bytes on the wire, in flight; per-stage latency, errors by code, batch sizes,
the model queue, and the edge's session cache."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edensplit.version import __version__

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
STAGES = ("admission_wait", "decode", "prepare", "model", "encode")  # a request's steps, in order


class Metrics:
    """The app's metrics; the names and labels of the first five are an interface (dashboards use them)."""

    def __init__(self, stage: str):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("edensplit_requests", "requests answered", ("route", "method", "status"), registry=r)
        self.latency = Histogram("edensplit_request_seconds", "request wall time", ("route",), buckets=BUCKETS,
                                 registry=r)
        self.bytes_in = Counter("edensplit_request_bytes", "request body bytes", ("route",), registry=r)
        self.bytes_out = Counter("edensplit_response_bytes", "response body bytes", ("route",), registry=r)
        self.inflight = Gauge("edensplit_inflight", "requests admitted and not yet answered", registry=r)
        self.stage_seconds = Histogram("edensplit_stage_seconds", "seconds per step of a request: admission_wait "
                                       "(arrival, body read, to a model place), decode, prepare, model, encode",
                                       ("route", "stage"), buckets=BUCKETS, registry=r)
        self.errors = Counter("edensplit_errors", "requests refused or failed, by error code", ("route", "code"),
                              registry=r)
        self.batch_size = Histogram("edensplit_batch_size", "requests per model call", buckets=(1, 2, 4, 8, 16, 32, 64),
                                    registry=r)
        self.queue_depth = Gauge("edensplit_queue_depth", "model calls waiting for the model thread", registry=r)
        self.sessions = Gauge("edensplit_session_cache_sessions", "edge: video sessions held", registry=r)
        self.session_lookups = Counter("edensplit_session_lookups", "edge: a pair's previous frame looked up in "
                                       "the session cache", ("result",), registry=r)
        self.context_lookups = Counter("edensplit_context_lookups", "edge: a session frame's temporal keys/values "
                                       "found kept (hit) or computed (miss)", ("result",), registry=r)
        self.info = Gauge("edensplit_info", "server identity", ("stage", "version"), registry=r)
        self.info.labels(stage, __version__).set(1)

    def observe_stages(self, route: str, timings: Mapping[str, float]) -> None:
        for name, seconds in timings.items():
            self.stage_seconds.labels(route, name).observe(seconds)

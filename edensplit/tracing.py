"""Tracing across the split with OpenTelemetry: W3C `traceparent` travels on every hop (HTTP headers, a
WebSocket message's fields), each hop and each server step is a span, and a caller's trace is continued,
not replaced.

Spans go through the OpenTelemetry API (a dependency of FastAPI: always importable, a no-op until a
tracer provider is set). `setup_tracing` sets one, exporting with the SDK over OTLP, only when
`OTEL_EXPORTER_OTLP_ENDPOINT` is set and the `otel` extra is installed (`pip install -e '.[otel]'`):
HTTP/protobuf by default, gRPC with `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`; the SDK reads the other standard
`OTEL_*` variables itself (service name, batch delay, headers). Without them nothing changes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from opentelemetry import context, propagate, trace

log = logging.getLogger("edensplit.tracing")
TRACER = "edensplit"
HEADERS = ("traceparent", "tracestate")  # what W3C trace context puts on the wire


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER)


def setup_tracing(service: str) -> bool:
    """Export spans over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set and the SDK is installed; True if so.
    A process sets its provider once: later calls (a second app in one process) change nothing."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not installed: "
                    "pip install -e '.[otel]' to export traces")
        return False
    grpc = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "grpc"
    try:
        if grpc:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP %s exporter is not installed: "
                    "pip install -e '.[otel]' to export traces", "gRPC" if grpc else "HTTP")
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME",
                                                                                       service)}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return True


@contextlib.contextmanager
def client_span(call: Any, request_id: str | None = None) -> Iterator[trace.Span]:
    """A client request's span (its operation and request id), current while the request is built and sent."""
    with tracer().start_as_current_span(f"client {call.operation}", kind=trace.SpanKind.CLIENT) as span:
        span.set_attributes({"edensplit.component": "client", "edensplit.operation": call.operation})
        if request_id or call.request_id:
            span.set_attribute("edensplit.request_id", request_id or call.request_id)
        yield span


def traced_pair(method: Any) -> Any:
    """Wrap a flow's `interpolate_pair`: one span (one trace) per generated frame, over all its requests."""
    @functools.wraps(method)
    def wrapper(self: Any, frame0: Any, frame1: Any, seed: int = 0, index: int = 0) -> Any:
        with tracer().start_as_current_span("edensplit frame", attributes={
                "edensplit.component": "client", "edensplit.pair_index": index, "edensplit.flow": type(self).__name__}):
            return method(self, frame0, frame1, seed, index)
    return wrapper


def inject(carrier: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Put the current trace context into outgoing headers or message fields (traceparent, tracestate)."""
    propagate.inject(carrier)
    return carrier


def outgoing() -> dict[str, str]:
    """The current trace context as fields to send (empty when no span is recording)."""
    return dict(inject({}))


@contextlib.contextmanager
def continued(carrier: Mapping[str, Any]) -> Iterator[None]:
    """Make a caller's trace context (its traceparent) current for the block, if it sent one."""
    fields = {k: str(v) for k, v in carrier.items() if k.lower() in HEADERS and isinstance(v, str)}
    if not fields:
        yield
        return
    token = context.attach(propagate.extract(fields))
    try:
        yield
    finally:
        context.detach(token)

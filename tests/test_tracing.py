"""Tracing across the split: one frame's requests make one trace whose spans cover the client, the cloud and
the edge, in flow A (client -> cloud, client -> edge) and in flow B (client -> edge -> cloud), with the
trace context carried by `traceparent` on every hop. Run in a subprocess with OpenTelemetry's in-memory
exporter, so the tracer provider it sets does not outlive the test."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = r"""
import json
import httpx
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

from edensplit.client import AsyncHttpTransport, Cloud, Edge, HttpTransport
from edensplit.client.flows import EdgeProxyClient, SplitClient
from edensplit.model.checkpoint import load_model
from edensplit.servers.cloud.service import create_cloud_app
from edensplit.servers.edge.service import create_edge_app
from edensplit.settings import ServerSettings
from tests.conftest import TINY_CONFIG, make_frames

settings = ServerSettings(warmup=False)
cloud_model = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
edge_model = load_model(None, TINY_CONFIG, stages={"interpolate"}, allow_random=True, seed=3)
frames = make_frames(2, 40, 70)
out = {}
with TestClient(create_cloud_app(settings, cloud_model)) as cloud_http, \
        TestClient(create_edge_app(settings, edge_model)) as edge_http:
    flow_b_cloud = edge_http.app.state.cloud_client  # the edge reaches the in-process cloud (flow B)
    flow_b_cloud.transport = AsyncHttpTransport("http://cloud", name="cloud server",
                                                transport=httpx.ASGITransport(cloud_http.app))
    cloud = Cloud(HttpTransport("http://cloud", name="cloud server", client=cloud_http))
    edge = Edge(HttpTransport("http://edge", name="edge server", client=edge_http))
    for flow, backend in (("a", SplitClient(cloud, edge)), ("b", EdgeProxyClient(edge))):
        exporter.clear()
        backend.interpolate_pair(frames[0], frames[1], 3, 0)
        out[flow] = [{"name": s.name, "trace": format(s.context.trace_id, "032x"),
                      "component": s.attributes.get("edensplit.component"),
                      "parent": format(s.parent.span_id, "016x") if s.parent else None,
                      "span": format(s.context.span_id, "016x")} for s in exporter.get_finished_spans()]
print(json.dumps(out))
"""


def test_one_frame_is_one_trace_over_client_cloud_and_edge():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    flows = json.loads(r.stdout.strip().splitlines()[-1])
    for flow, spans in flows.items():
        assert len({s["trace"] for s in spans}) == 1, (flow, spans)  # one trace
        assert {"client", "cloud", "edge"} <= {s["component"] for s in spans}, (flow, spans)
        roots = [s for s in spans if s["parent"] is None]
        assert [r["name"] for r in roots] == ["edensplit frame"], (flow, roots)
        ids = {s["span"] for s in spans}
        assert all(s["parent"] in ids for s in spans if s["parent"]), flow  # every span's parent is in the trace
        names = [s["name"] for s in spans]
        assert {"decode", "model", "encode"} <= set(names), (flow, names)  # the servers' steps
    by_component = {c: [s for s in flows["b"] if s["component"] == c] for c in ("client", "cloud", "edge")}
    edge_span = next(s for s in by_component["edge"] if s["name"].startswith("edge POST"))
    cloud_span = next(s for s in by_component["cloud"] if s["name"].startswith("cloud POST"))
    edge_calls = {s["span"] for s in flows["b"] if s["name"] == "client encode"}  # the edge's call to the cloud
    assert cloud_span["parent"] in edge_calls and edge_span["trace"] == cloud_span["trace"]


def test_traces_are_exported_only_when_an_endpoint_is_set():
    code = ("from edensplit.tracing import setup_tracing; from opentelemetry import trace; "
            "print(setup_tracing('edensplit-test'), type(trace.get_tracer_provider()).__name__, "
            "getattr(trace.get_tracer_provider(), 'resource', None) and "
            "trace.get_tracer_provider().resource.attributes.get('service.name'))")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert off.stdout.split()[:2] == ["False", "ProxyTracerProvider"], off.stderr  # nothing changes
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                        env={**env, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})  # loopback, never used
    assert on.stdout.split() == ["True", "TracerProvider", "edensplit-test"], on.stderr

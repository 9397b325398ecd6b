"""Tracing across the split: one frame's requests make one trace whose spans cover the client, the cloud and
the edge, in flow A (client -> cloud, client -> edge) and in flow B (client -> edge -> cloud), over HTTP and
over WebSocket, with the trace context carried by `traceparent` on every hop (an HTTP header, a WebSocket
message's field). Run in a subprocess with OpenTelemetry's in-memory exporter, so the tracer provider it sets
does not outlive the test."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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

import contextlib, threading, time
import uvicorn
from edensplit.client import AsyncHttpTransport, Cloud, Edge, HttpTransport, WsTransport
from edensplit.client.flows import EdgeProxyClient, SplitClient
from edensplit.model.checkpoint import load_model
from edensplit.servers.cloud.service import create_cloud_app
from edensplit.servers.edge.service import create_edge_app
from edensplit.servers.launch import free_port
from edensplit.settings import ServerSettings
from tests.conftest import TINY_CONFIG, make_frames


def one_frame(backend):
    # One generated frame through `backend`: its spans, once every request's server span has ended (a server
    # ends its span just after it answers).
    exporter.clear()
    backend.interpolate_pair(frames[0], frames[1], 3, 0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        spans = exporter.get_finished_spans()
        kinds = [s.kind for s in spans]
        if kinds.count(trace.SpanKind.SERVER) >= kinds.count(trace.SpanKind.CLIENT):
            break
        time.sleep(0.01)
    return [{"name": s.name, "trace": format(s.context.trace_id, "032x"), "kind": s.kind.name,
             "component": s.attributes.get("edensplit.component"),
             "transport": s.attributes.get("edensplit.transport"),
             "parent": format(s.parent.span_id, "016x") if s.parent else None,
             "span": format(s.context.span_id, "016x")} for s in spans]


@contextlib.contextmanager
def served(app):
    # `app` served by uvicorn on a loopback port, in a thread; its base URL.
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           ws_per_message_deflate=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)

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
        out[flow] = one_frame(backend)

# Over WebSocket the client needs servers on a socket: uvicorn, in threads of this process (so that their spans
# reach this exporter); the edge calls the cloud itself in flow B.
with served(create_cloud_app(settings, cloud_model)) as cloud_url, \
        served(create_edge_app(ServerSettings(warmup=False, cloud_server_url=cloud_url), edge_model)) as edge_url:
    cloud = Cloud(WsTransport(cloud_url, path=Cloud.WS_PATH, name="cloud server"))
    edge = Edge(WsTransport(edge_url, path=Edge.WS_PATH, name="edge server"))
    for flow, backend in (("ws-a", SplitClient(cloud, edge)), ("ws-b", EdgeProxyClient(edge))):
        out[flow] = one_frame(backend)
    cloud.close()
    edge.close()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def flows() -> dict[str, list[dict]]:
    """One frame's spans in flows A and B, over HTTP ("a", "b") and over WebSocket ("ws-a", "ws-b")."""
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("flow", ["a", "b", "ws-a", "ws-b"])
def test_one_frame_is_one_trace_over_client_cloud_and_edge(flows, flow):
    spans = flows[flow]
    assert len({s["trace"] for s in spans}) == 1, (flow, spans)  # one trace
    assert {"client", "cloud", "edge"} <= {s["component"] for s in spans}, (flow, spans)
    roots = [s for s in spans if s["parent"] is None]
    assert [r["name"] for r in roots] == ["edensplit frame"], (flow, roots)
    ids = {s["span"] for s in spans}
    assert all(s["parent"] in ids for s in spans if s["parent"]), flow  # every span's parent is in the trace
    names = [s["name"] for s in spans]
    assert {"decode", "model", "encode"} <= set(names), (flow, names)  # the servers' steps
    by_id = {s["span"]: s for s in spans}
    servers = [s for s in spans if s["kind"] == "SERVER"]
    assert len(servers) == sum(s["kind"] == "CLIENT" for s in spans) == 2, (flow, names)  # one per request
    for server in servers:  # each continues the client request that reached it: its traceparent was read
        caller = by_id[server["parent"]]
        assert caller["kind"] == "CLIENT" and caller["name"].startswith("client "), (flow, server, caller)


def test_flow_b_continues_the_trace_from_the_edge_to_the_cloud(flows):
    for flow in ("b", "ws-b"):
        spans = flows[flow]
        edge_span = next(s for s in spans if s["component"] == "edge" and s["kind"] == "SERVER")
        cloud_span = next(s for s in spans if s["component"] == "cloud" and s["kind"] == "SERVER")
        edge_calls = {s["span"] for s in spans if s["name"] == "client encode"}  # the edge's call to the cloud
        assert cloud_span["parent"] in edge_calls and edge_span["trace"] == cloud_span["trace"], flow


def test_over_websocket_the_trace_context_travels_in_the_messages(flows):
    """Over WebSocket the client's requests are messages on a connection opened before them: the server spans
    are children of the client's request spans only through each message's `traceparent` field."""
    for flow, hops in (("ws-a", {"cloud": "ws", "edge": "ws"}), ("ws-b", {"edge": "ws", "cloud": "http"})):
        spans = flows[flow]
        servers = {s["component"]: s for s in spans if s["kind"] == "SERVER"}
        assert {c: s["transport"] for c, s in servers.items()} == hops, flow
        client_requests = {s["span"]: s["name"] for s in spans if s["component"] == "client" and s["kind"] == "CLIENT"}
        for component, transport in hops.items():
            if transport == "ws":
                assert servers[component]["parent"] in client_requests, (flow, component)


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

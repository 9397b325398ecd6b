"""One request pipeline for both transports, seen from outside: the table of valid and invalid requests of
tests/servers/test_transports.py (CASES), each sent over HTTP and over WebSocket, leaves on both

- the same access-log records (logger edensplit.access): the same fields, the same numeric status and code;
- the same metric movements: edensplit_requests_total +1 on the transport's route, edensplit_errors_total +1 by
  code for a refused request, the same edensplit_stage_seconds counts per step, and every other metric alike;
- the same server spans: one SERVER span per request with the same attributes, whose children are the steps
  (admission_wait, decode, prepare, model, encode) the request got through, the same on both.

The table runs once, in a subprocess (`record`), with OpenTelemetry's SDK and an in-memory exporter: a tracer
provider can be set only once per process, so it must not be this one's. Its findings come back as JSON, read
by every test here through one module-scoped fixture.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from typing import Any

import pytest

from edensplit.errors import ErrorCode
from edensplit.servers.contract import STEPS
from edensplit.servers.logs import FIELDS
from tests.conftest import ROOT
from tests.servers.test_transports import CASES, ROUTES, Case, _session

SESSION_ROUTE = "/api/v1/sessions/{session_id}/frames/{index}"
WS_PATHS = {"cloud": "/ws/encode", "edge": "/ws/interpolate"}
NOT_COMPARED = ("edensplit_request_bytes_total", "edensplit_response_bytes_total")  # framing differs by design


def requests_of(case: Case) -> int:
    """How many requests a case makes: a session frame's session is opened by storing its frame 0 first."""
    return 2 if case.op == "session_frame" else 1


def expected(case: Case) -> tuple[int, str | None]:
    """The case's status and code."""
    code = None if case.expect in ("ok", "stored") else case.expect
    return (ErrorCode(code).status if code else 200), code


# -- the recording, in a subprocess -------------------------------------------------------------------------


def record() -> None:
    """Run every case over both transports against in-process apps (the tiny random model), and print what each
    left: its answer, its access-log records, its metric movements and its spans, as one JSON line."""
    from fastapi.testclient import TestClient
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from edensplit.model.checkpoint import load_model
    from edensplit.servers.cloud.service import create_cloud_app
    from edensplit.servers.edge.service import create_edge_app
    from edensplit.settings import ServerSettings
    from tests.conftest import TINY_CONFIG
    from tests.servers.test_transports import send_http, send_ws

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    records: list[dict[str, Any]] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append({k: getattr(record, k) for k in (*FIELDS, "levelname") if hasattr(record, k)})

    logging.getLogger("edensplit.access").addHandler(Capture())

    def metric_samples(app: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in app.state.metrics.registry.collect()
                for s in family.samples if not s.name.endswith("_created")}

    def server_spans() -> int:
        return sum(s.kind == trace.SpanKind.SERVER for s in exporter.get_finished_spans())

    settings = ServerSettings(max_request_mb=4, max_inflight=4, warmup=False)
    cloud_model = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
    edge_model = load_model(None, TINY_CONFIG, stages={"interpolate"}, allow_random=True, seed=3)
    out: dict[str, dict[str, Any]] = {}
    with TestClient(create_cloud_app(settings, cloud_model)) as cloud, \
            TestClient(create_edge_app(settings, edge_model)) as edge:
        for case in CASES:
            client = cloud if case.server == "cloud" else edge
            out[case.name] = {}

            def settle(n: int = requests_of(case)) -> None:  # until every request's server span has ended
                deadline = time.monotonic() + 10
                while server_spans() < n and time.monotonic() < deadline:
                    time.sleep(0.005)  # the server finishes its request on its own thread

            for transport in ("http", "ws"):
                exporter.clear()
                records.clear()
                before = metric_samples(client.app)
                if transport == "http":
                    answer = send_http(client, case)
                    settle()
                else:
                    answer = send_ws(client, case, settle)
                after = metric_samples(client.app)
                out[case.name][transport] = {
                    "answer": [answer.code, answer.status],
                    "records": list(records),
                    "metrics": [{"name": name, "labels": dict(labels), "delta": value - before.get((name, labels), 0)}
                                for (name, labels), value in after.items() if value != before.get((name, labels), 0)],
                    "spans": [{"name": s.name, "kind": s.kind.name, "span": s.context.span_id,
                               "parent": s.parent.span_id if s.parent else None, "trace": s.context.trace_id,
                               "start": s.start_time, "attributes": dict(s.attributes or {})}
                              for s in exporter.get_finished_spans()]}
    print(json.dumps(out, default=str))


@pytest.fixture(scope="module")
def recorded() -> dict[str, dict[str, Any]]:
    r = subprocess.run([sys.executable, "-c", "from tests.servers.test_pipeline_parity import record; record()"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


# -- what each transport left ---------------------------------------------------------------------------------


def routes(case: Case) -> dict[str, str]:
    """The route each transport's requests are counted on."""
    return {"http": SESSION_ROUTE if case.op == "session_frame" else ROUTES[case.op], "ws": WS_PATHS[case.server]}


def status_label(transport: str, status: int, code: str | None) -> str:
    """The status label of edensplit_requests_total: the HTTP status, or (WebSocket) success or the code."""
    if transport == "http":
        return str(status)
    return code or "success"


def normalised(metrics: list[dict[str, Any]], transport: str) -> dict[tuple[str, tuple], float]:
    """Metric movements with the transport taken out: the route and method labels dropped, the status label read
    as the HTTP status; histograms by their counts (their sums are times), bytes on the wire left out."""
    out: dict[tuple[str, tuple], float] = {}
    for m in metrics:
        name, labels = m["name"], dict(m["labels"])
        if name in NOT_COMPARED or name.endswith(("_sum", "_bucket")):
            continue
        labels.pop("route", None)
        labels.pop("method", None)
        if "status" in labels and transport == "ws":
            labels["status"] = "200" if labels["status"] == "success" else str(ErrorCode(labels["status"]).status)
        key = (name, tuple(sorted(labels.items())))
        out[key] = out.get(key, 0) + m["delta"]
    return out


def moved(metrics: list[dict[str, Any]], name: str, **labels: str) -> float:
    return sum(m["delta"] for m in metrics if m["name"] == name and all(m["labels"].get(k) == v
                                                                          for k, v in labels.items()))


def server_spans(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((s for s in spans if s["kind"] == "SERVER"), key=lambda s: s["start"])


def steps_of(span: dict[str, Any], spans: list[dict[str, Any]]) -> list[str]:
    """The names of a server span's children, in the order they started."""
    return [s["name"] for s in sorted(spans, key=lambda s: s["start"]) if s["parent"] == span["span"]]


CASE_IDS = [c.name for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_both_transports_answer_as_the_table_says(recorded, case):
    status, code = expected(case)
    assert recorded[case.name]["http"]["answer"] == recorded[case.name]["ws"]["answer"] == [code, status]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_each_request_leaves_one_access_record_with_the_same_fields_status_and_code(recorded, case):
    http, ws = (recorded[case.name][t]["records"] for t in ("http", "ws"))
    assert len(http) == len(ws) == requests_of(case), (http, ws)
    for h, w in zip(http, ws, strict=True):
        assert set(h) == set(w) == {*FIELDS, "levelname"}, (h, w)
        assert (h["status"], h["code"]) == (w["status"], w["code"]), (h, w)
        assert type(h["status"]) is type(w["status"]) is int
        assert (h["transport"], h["method"], w["transport"], w["method"]) == ("http", "POST", "ws", "WS")
        assert h["type"] == w["type"] == case.op, (h, w)  # the operation, named alike
        assert (h["route"], w["route"]) == (routes(case)["http"], routes(case)["ws"])
        assert w["path"] == w["route"] and h["path"].startswith("/api/v1/")
        assert min(h["bytes_in"], w["bytes_in"], h["bytes_out"], w["bytes_out"]) > 0 and h["ms"] >= 0 <= w["ms"]
        assert h["levelname"] == w["levelname"] == "INFO"
    status, code = expected(case)
    assert (http[-1]["status"], http[-1]["code"]) == (status, code)
    assert http[-1]["request_id"] == ws[-1]["request_id"] == _session(case, "id")  # the caller's id, kept
    if requests_of(case) == 2:  # the session's frame 0, stored
        assert (http[0]["status"], http[0]["code"]) == (200, None)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_the_metrics_move_alike(recorded, case):
    status, code = expected(case)
    for transport, route in routes(case).items():
        metrics = recorded[case.name][transport]["metrics"]
        assert moved(metrics, "edensplit_requests_total", route=route) == requests_of(case), transport
        assert moved(metrics, "edensplit_requests_total", route=route,
                     status=status_label(transport, status, code)) == (1 if code else requests_of(case)), transport
        assert moved(metrics, "edensplit_errors_total", route=route) == (1 if code else 0), transport
        if code:
            assert moved(metrics, "edensplit_errors_total", route=route, code=code) == 1, transport
        assert moved(metrics, "edensplit_request_seconds_count", route=route) == requests_of(case), transport
        spans = recorded[case.name][transport]["spans"]
        for step in STEPS:  # the step counts are the step spans: the same requests got as far
            assert moved(metrics, "edensplit_stage_seconds_count", route=route, stage=step) == sum(
                s["name"] == step for s in spans), (transport, step)
    http, ws = (normalised(recorded[case.name][t]["metrics"], t) for t in ("http", "ws"))
    assert http == ws


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_each_request_is_one_server_span_with_the_same_attributes_and_steps(recorded, case):
    status, code = expected(case)
    found = {}
    for transport in ("http", "ws"):
        spans = recorded[case.name][transport]["spans"]
        servers = server_spans(spans)
        assert len(servers) == requests_of(case), (transport, [s["name"] for s in spans])
        assert all(s["parent"] is None for s in servers)  # nothing to continue: no traceparent was sent
        assert len(spans) == len(servers) + sum(len(steps_of(s, spans)) for s in servers)  # nothing else
        found[transport] = [(s, steps_of(s, spans)) for s in servers]
    for (h, h_steps), (w, w_steps) in zip(found["http"], found["ws"], strict=True):
        assert set(h["attributes"]) == set(w["attributes"]), (h["attributes"], w["attributes"])
        for key in ("edensplit.component", "edensplit.operation", "http.response.status_code",
                    "edensplit.error_code"):
            assert h["attributes"].get(key) == w["attributes"].get(key), key
        assert h["attributes"]["edensplit.operation"] == case.op
        assert (h["attributes"]["edensplit.transport"], w["attributes"]["edensplit.transport"]) == ("http", "ws")
        assert h_steps == w_steps, (h_steps, w_steps)
        assert h_steps == [step for step in STEPS if step in h_steps], h_steps  # in the pipeline's order
    (last, last_steps), (ws_last, _) = found["http"][-1], found["ws"][-1]
    assert (last["attributes"]["http.response.status_code"], last["attributes"].get("edensplit.error_code")) == (
        status, code)
    assert last["attributes"]["edensplit.request_id"] == ws_last["attributes"]["edensplit.request_id"] == \
        _session(case, "id")
    if case.expect == "ok":
        assert last_steps == list(STEPS)
    elif case.expect == "stored":  # answered without the model
        assert last_steps == [s for s in STEPS if s != "model"]
    else:
        assert last_steps == list(STEPS[:len(last_steps)])  # as far as the request got, then refused


def test_the_table_reaches_every_step_and_refuses_before_and_during_them(recorded):
    """The table exercises the comparison: requests answered through every step, refused before any step, and
    refused in decoding."""
    last_steps = []
    for case in CASES:
        spans = recorded[case.name]["http"]["spans"]
        last_steps.append(tuple(steps_of(server_spans(spans)[-1], spans)))
    assert tuple(STEPS) in last_steps and () in last_steps and ("admission_wait", "decode") in last_steps

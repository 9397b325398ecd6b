"""What operators read: /metrics (per-stage latency, errors by code, batch sizes, queue depth, the session
cache) moving with requests over HTTP and WebSocket, read with prometheus_client's own parser; JSON log
lines, every one of them (uvicorn's too); and a fault's traceback in the log, never in the answer."""

from __future__ import annotations

import json
import logging
import sys

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from edensplit.model.checkpoint import load_model
from edensplit.model.stages import encode_frames, frame_difference
from edensplit.servers.contract import STEPS
from edensplit.servers.edge.service import create_edge_app
from edensplit.servers.launch import ServerProcess
from edensplit.servers.pipeline import PIPELINE_STEPS
from edensplit.settings import ServerSettings
from edensplit.wire.blob import BLOB_MEDIA_TYPE, pack_encoding
from edensplit.wire.messages import pack_binary, split_binary, unpack_binary
from tests.conftest import TINY_CONFIG, make_frames

FRAMES = make_frames(3, 40, 70)
ENCODER = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
PAIR = pack_encoding(encode_frames(ENCODER, FRAMES[:2]), float(frame_difference(FRAMES[0], FRAMES[1])[0]))
ONE = [pack_encoding(encode_frames(ENCODER, f)) for f in FRAMES]
BLOB = {"Content-Type": BLOB_MEDIA_TYPE}


def samples(client) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics by (name, sorted labels), parsed by prometheus_client."""
    text = client.get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(all_samples: dict, name: str, **labels: str) -> float:
    return all_samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture()
def edge():
    model = load_model(None, TINY_CONFIG, stages={"interpolate"}, allow_random=True, seed=3)
    with TestClient(create_edge_app(ServerSettings(warmup=False), model)) as client:
        yield client


def test_metrics_move_with_requests_over_http_and_websocket(edge):
    before = samples(edge)
    assert edge.post("/api/v1/interpolate", content=PAIR, headers=BLOB).status_code == 200
    assert edge.post("/api/v1/interpolate", params={"seed": -1}, content=PAIR, headers=BLOB).status_code == 422
    for k in range(3):  # a session: frame 0 stored, two pairs, the second reusing frame 1's keys/values
        params = {} if k == 0 else {"difference": 0.9, "seed": k}
        assert edge.post(f"/api/v1/sessions/m/frames/{k}", params=params, content=ONE[k], headers=BLOB).status_code \
            == 200
    with edge.websocket_connect("/ws/interpolate") as ws:
        ws.send_bytes(pack_binary({"type": "interpolate", "request_id": "obs-1"}, PAIR))
        assert unpack_binary(ws.receive_bytes())[0]["status"] == "success"
        ws.send_bytes(pack_binary({"type": "interpolate", "request_id": "obs-2", "seed": -1}, PAIR))
        assert ws.receive_json()["error"]["code"] == "INVALID_PARAMETER"
    after = samples(edge)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    http, ws = "/api/v1/interpolate", "/ws/interpolate"
    who = {"client_name": "anonymous"}  # a server without keys: every request is the anonymous client's
    assert moved("edensplit_requests_total", route=http, method="POST", status="200", **who) == 1
    assert moved("edensplit_requests_total", route=ws, method="WS", status="success", **who) == 1
    assert moved("edensplit_errors_total", route=http, code="INVALID_PARAMETER") == 1
    assert moved("edensplit_errors_total", route=ws, code="INVALID_PARAMETER") == 1
    for route in (http, ws):  # two requests each: the refused one got as far as decoding
        for stage, count in (("admission_wait", 2), ("decode", 2), ("prepare", 1), ("model", 1), ("encode", 1)):
            assert moved("edensplit_stage_seconds_count", route=route, stage=stage) == count, (route, stage)
        assert moved("edensplit_request_bytes_total", route=route) >= len(PAIR)
        assert moved("edensplit_response_bytes_total", route=route) > 0
    assert moved("edensplit_batch_size_count") == 4 and moved("edensplit_batch_size_sum") == 4  # 4 model calls of 1
    assert value(after, "edensplit_queue_depth") == 0
    assert value(after, "edensplit_session_cache_sessions") == 1
    assert moved("edensplit_session_lookups_total", result="hit") == 2
    assert moved("edensplit_context_lookups_total", result="hit") == 1  # frame 1, kept from the first pair
    assert moved("edensplit_context_lookups_total", result="miss") == 3  # frames 0, 1 and 2, once each


def test_the_read_and_the_replay_cache_are_steps_of_every_answered_request(edge):
    """read (the body or message read whole) and idempotency (the digest and lookup) are steps as the operation's
    are, on both transports, disjoint from them and from each other (together within the request's time); a
    chunked WebSocket message is read from its first chunk on; a replay has them and no operation step."""
    before = samples(edge)
    http, ws = "/api/v1/interpolate", "/ws/interpolate"
    keyed = {**BLOB, "X-Request-ID": "obs-read-1"}
    assert edge.post(http, content=PAIR, headers=keyed).status_code == 200
    assert edge.post(http, content=PAIR, headers=keyed).headers["x-idempotent-replay"] == "true"
    with edge.websocket_connect(ws) as conn:
        chunks = split_binary({"type": "interpolate", "request_id": "obs-read-2"}, PAIR, len(PAIR) // 3 + 1)
        assert len(chunks) == 3
        for chunk in chunks:
            conn.send_bytes(chunk)
        assert unpack_binary(conn.receive_bytes())[0]["status"] == "success"
    after = samples(edge)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    for route, answered in ((http, 2), (ws, 1)):
        for step in PIPELINE_STEPS:
            assert moved("edensplit_stage_seconds_count", route=route, stage=step) == answered, (route, step)
        assert moved("edensplit_stage_seconds_count", route=route, stage="model") == 1  # the replay ran nothing
        steps = sum(moved("edensplit_stage_seconds_sum", route=route, stage=s) for s in (*PIPELINE_STEPS, *STEPS))
        assert 0 < steps <= moved("edensplit_request_seconds_sum", route=route), route


def test_a_fault_logs_its_traceback_and_answers_without_it(edge, caplog):
    model = edge.app.state.runtime.model
    original = model.velocity

    def broken(*args, **kwargs):
        raise RuntimeError("a broken kernel")

    model.velocity = broken
    try:
        with caplog.at_level(logging.ERROR, logger="edensplit"):
            r = edge.post("/api/v1/interpolate", content=PAIR, headers=BLOB)
            with edge.websocket_connect("/ws/interpolate") as ws:
                ws.send_bytes(pack_binary({"type": "interpolate", "request_id": "fault-ws"}, PAIR))
                answer = ws.receive_json()
    finally:
        model.velocity = original
    assert r.status_code == 500 and r.json()["error"]["code"] == "MODEL_ERROR"
    assert answer["error"]["code"] == "MODEL_ERROR"
    for body in (r.text, json.dumps(answer)):
        assert "Traceback" not in body and "broken kernel" in body  # what failed, not where in the code
    faults = [rec for rec in caplog.records if rec.exc_info and "MODEL_ERROR" in rec.getMessage()]
    assert len(faults) == 2  # one per transport, each with its traceback
    assert all("a broken kernel" in logging.Formatter().formatException(rec.exc_info) for rec in faults)


class CliServer(ServerProcess):
    """The server as `edensplit edge` starts it (uvicorn.run with edensplit's own log config)."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "edensplit", "edge", "--host", self.host, "--port", str(self.port)]


@pytest.mark.parametrize("launch", ["uvicorn", "cli"])
def test_json_logs_are_one_object_per_line(model_env, workdir, launch):
    """Under LOG_FORMAT=json every line of the server's log is a JSON object, uvicorn's own lines included (a
    log pipeline reads the whole stream), whether uvicorn imported the app (`uvicorn edensplit.edge:app`) or
    edensplit started uvicorn (`edensplit edge`); the access lines carry the request's fields."""
    log = workdir / f"json-edge-{launch}.log"
    server_class = ServerProcess if launch == "uvicorn" else CliServer
    with server_class("edensplit.edge:app", env={**model_env, "LOG_FORMAT": "json"}, log_path=log) as server:
        r = httpx.post(f"{server.url}/api/v1/interpolate", content=PAIR, headers={**BLOB, "X-Request-ID": "json-1"})
        assert r.status_code == 200
        bad = httpx.post(f"{server.url}/api/v1/interpolate", params={"seed": -1}, content=PAIR,
                         headers={**BLOB, "X-Request-ID": "json-2"})
        assert bad.status_code == 422
    lines = []
    for number, text in enumerate(log.read_text().splitlines(), 1):
        try:
            line = json.loads(text)
        except ValueError:
            line = None
        assert isinstance(line, dict), f"{log} line {number} is not a JSON object: {text!r}"
        assert {"ts", "level", "logger", "message"} <= set(line), f"{log} line {number}: {text!r}"
        lines.append(line)
    loggers = {line["logger"] for line in lines}
    assert {"uvicorn.error", "uvicorn.access", "edensplit.server", "edensplit.access"} <= loggers, loggers
    assert any(line["message"].startswith("Started server process") for line in lines)  # uvicorn's, as JSON
    ok = next(line for line in lines if line.get("request_id") == "json-1" and line["logger"] == "edensplit.access")
    assert ok["route"] == "/api/v1/interpolate" and ok["status"] == 200 and ok["code"] is None
    assert ok["bytes_in"] == len(PAIR) and ok["bytes_out"] == int(r.headers["content-length"]) and ok["ms"] > 0
    refused = next(ln for ln in lines if ln.get("request_id") == "json-2" and ln["logger"] == "edensplit.access")
    assert refused["status"] == 422 and refused["code"] == "INVALID_PARAMETER"

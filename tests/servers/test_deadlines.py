"""Deadlines and abandoned work: a request past its deadline gets 504 DEADLINE_EXCEEDED; a caller that
goes away has its work dropped at the model's next step, so the request after it is not kept waiting.
Real uvicorn servers on loopback (a disconnect needs a real connection)."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
import websockets.sync.client

from edensplit.model.checkpoint import load_model
from edensplit.model.stages import encode_frames, frame_difference
from edensplit.servers.launch import ServerProcess
from edensplit.wire.blob import BLOB_MEDIA_TYPE, pack_encoding
from edensplit.wire.messages import pack_binary
from tests.conftest import TINY_CONFIG, make_frames


def pair_blob(height: int, width: int) -> bytes:
    frames = make_frames(2, height, width)
    encoder = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True)
    return pack_encoding(encode_frames(encoder, frames), float(frame_difference(frames[0], frames[1])[0]))


SLOW = {"num_steps": 64, "method": "heun", "seed": 1}  # 128 model calls at 2160x3840: ~7 s here, unloaded


@pytest.fixture(scope="module")
def edge(model_env, workdir):
    with ServerProcess("edensplit.edge:app", env=model_env, log_path=workdir / "deadline-edge.log") as server:
        yield server


@pytest.fixture(scope="module")
def blobs():
    return {"small": pair_blob(40, 70), "large": pair_blob(2160, 3840)}


def interpolate(url: str, blob: bytes, timeout: float = 60, **params) -> httpx.Response:
    return httpx.post(f"{url}/api/v1/interpolate", params=params, content=blob, timeout=timeout,
                      headers={"Content-Type": BLOB_MEDIA_TYPE, **params.pop("headers", {})})


def test_a_deadline_that_passes_answers_504(edge, blobs):
    started = time.perf_counter()
    r = httpx.post(f"{edge.url}/api/v1/interpolate", params=SLOW, content=blobs["large"], timeout=60,
                   headers={"Content-Type": BLOB_MEDIA_TYPE, "X-Request-Timeout": "0.5"})
    assert r.status_code == 504 and r.json()["error"]["code"] == "DEADLINE_EXCEEDED", r.text
    assert time.perf_counter() - started < 5  # stopped at the deadline, not after 128 model calls (~7 s)
    ok = httpx.post(f"{edge.url}/api/v1/interpolate", content=blobs["small"], timeout=60,
                    headers={"Content-Type": BLOB_MEDIA_TYPE, "X-Request-Timeout": "30"})
    assert ok.status_code == 200


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf"])
def test_a_malformed_deadline_is_refused(edge, blobs, value):
    r = httpx.post(f"{edge.url}/api/v1/interpolate", content=blobs["small"], timeout=60,
                   headers={"Content-Type": BLOB_MEDIA_TYPE, "X-Request-Timeout": value})
    assert r.status_code == 422 and r.json()["error"]["code"] == "INVALID_PARAMETER"
    assert "X-Request-Timeout" in r.json()["error"]["message"]


def test_a_websocket_deadline_answers_deadline_exceeded(edge, blobs):
    with websockets.sync.client.connect(edge.url.replace("http", "ws") + "/ws/interpolate",
                                        max_size=2**26) as ws:
        ws.send(pack_binary({"type": "interpolate", "request_id": "late", "timeout_s": 0.5, **SLOW},
                            blobs["large"]))
        answer = json.loads(ws.recv(timeout=30))
        assert answer["request_id"] == "late" and answer["error"]["code"] == "DEADLINE_EXCEEDED"


def raw_post(url: str, blob: bytes, query: str) -> socket.socket:
    """Send a whole HTTP request on a raw socket and return it unread (to close it mid-request)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (f"POST /api/v1/interpolate?{query} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {BLOB_MEDIA_TYPE}\r\n"
            f"Content-Length: {len(blob)}\r\nX-Request-ID: abandoned\r\n\r\n")
    sock.sendall(head.encode() + blob)
    return sock


def inflight(url: str) -> float:
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return float(next(ln for ln in lines if ln.startswith("edensplit_inflight ")).split()[1])


def wait_until_admitted(url: str) -> None:
    deadline = time.monotonic() + 30
    while inflight(url) < 1:
        assert time.monotonic() < deadline, "the request never reached the server"


def test_a_caller_that_disconnects_has_its_work_dropped_and_does_not_delay_the_next(edge, blobs, workdir):
    sock = raw_post(edge.url, blobs["large"], "num_steps=64&method=heun&seed=1")
    wait_until_admitted(edge.url)
    sock.close()
    started = time.perf_counter()
    r = interpolate(edge.url, blobs["small"])
    waited = time.perf_counter() - started
    assert r.status_code == 200
    assert waited < 5.0, f"the next request waited {waited:.1f} s behind abandoned work"
    log = (workdir / "deadline-edge.log").read_text()  # written before the next request was answered
    line = next(ln for ln in log.splitlines() if "edensplit.access: abandoned POST" in ln)
    assert " 499 " in line and "Traceback" not in log


def test_websocket_work_of_a_closed_connection_is_dropped_and_the_gauge_follows_the_model(edge, blobs):
    with websockets.sync.client.connect(edge.url.replace("http", "ws") + "/ws/interpolate", max_size=2**26) as ws:
        ws.send(pack_binary({"type": "interpolate", "request_id": "gone", **SLOW}, blobs["large"]))
        wait_until_admitted(edge.url)
    started = time.perf_counter()
    assert interpolate(edge.url, blobs["small"]).status_code == 200
    assert time.perf_counter() - started < 5.0  # not behind the ~7 s of dropped work
    assert inflight(edge.url) == 0

"""Admission after the body: slow uploads do not hold model places, a body that does not arrive in time is
408, compression bombs stay within the server's byte budget, WebSocket connections are capped, refusals
say when to retry (from the model's queue) and are not logged as errors, and SIGTERM drains."""

from __future__ import annotations

import logging
import math
import signal
import socket
import threading
import time

import httpx
import pytest
import zstandard
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse

from edensplit.model.checkpoint import load_model
from edensplit.model.stages import encode_frames, frame_difference
from edensplit.servers.cloud.service import create_cloud_app
from edensplit.servers.launch import ServerProcess
from edensplit.settings import ServerSettings
from edensplit.wire.blob import BLOB_MEDIA_TYPE, pack_encoding
from edensplit.wire.frames import FRAMES_MEDIA_TYPE, pack_frames
from tests.conftest import TINY_CONFIG, make_frames

FRAMES = make_frames(2, 40, 70)


def pair_blob(height: int = 40, width: int = 70) -> bytes:
    frames = make_frames(2, height, width)
    encoder = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True)
    return pack_encoding(encode_frames(encoder, frames), float(frame_difference(frames[0], frames[1])[0]))


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


def start_slow_upload(url: str, declared: int) -> socket.socket:
    """A client that sends headers announcing `declared` bytes, then one byte: it holds a body read open."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall((f"POST /api/v1/interpolate HTTP/1.1\r\nHost: {host}\r\nContent-Type: {BLOB_MEDIA_TYPE}\r\n"
                  f"Content-Length: {declared}\r\n\r\n").encode() + b"\0")
    return sock


@pytest.fixture(scope="module")
def edge(model_env, workdir):
    env = {**model_env, "MAX_INFLIGHT": "2", "BODY_TIMEOUT_S": "3", "MAX_REQUEST_MB": "64", "BODY_MEMORY_MB": "128"}
    with ServerProcess("edensplit.edge:app", env=env, log_path=workdir / "admission-edge.log") as server:
        yield server


def test_slow_uploads_do_not_lock_out_a_normal_client(edge):
    slow = [start_slow_upload(edge.url, 10**6) for _ in range(4)]  # twice MAX_INFLIGHT
    try:
        started = time.perf_counter()
        r = httpx.post(f"{edge.url}/api/v1/interpolate", content=pair_blob(), timeout=30,
                       headers={"Content-Type": BLOB_MEDIA_TYPE})
        assert r.status_code == 200, r.text
        assert time.perf_counter() - started < 2.5  # before the slow ones' 3 s read deadline ends
    finally:
        for sock in slow:
            sock.close()


def test_a_body_that_does_not_arrive_in_time_is_408(edge):
    sock = start_slow_upload(edge.url, 1000)
    answer = b""
    try:
        sock.settimeout(20)
        while b"BODY_TIMEOUT" not in answer and (chunk := sock.recv(65536)):  # until the body or the close
            answer += chunk
    finally:
        sock.close()
    answer = answer.decode(errors="replace")
    assert answer.startswith("HTTP/1.1 408") and "BODY_TIMEOUT" in answer


def test_concurrent_compression_bombs_stay_within_the_byte_budget(edge):
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (200 * 2**20))  # 200 MB in some KB
    assert len(bomb) < 100_000
    pid = edge.proc.pid
    before = rss_mb(pid)
    answers: list[int] = []

    def send() -> None:
        r = httpx.post(f"{edge.url}/api/v1/interpolate", content=bomb, timeout=60,
                       headers={"Content-Type": BLOB_MEDIA_TYPE, "Content-Encoding": "zstd"})
        answers.append(r.status_code)

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    peak = rss_mb(pid, "VmHWM")
    assert sorted(set(answers)) <= [413, 503] and 413 in answers, answers
    # Bound: BODY_MEMORY_MB (128) plus the runtime's own slack; six unbounded inflations would take 6 x 64 MB.
    assert peak - before < 250, (before, peak)
    assert httpx.post(f"{edge.url}/api/v1/interpolate", content=pair_blob(), timeout=30,
                      headers={"Content-Type": BLOB_MEDIA_TYPE}).status_code == 200


@pytest.fixture()
def small_cloud():
    model = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
    settings = ServerSettings(eden_random_weights=True, max_ws_connections=2, max_inflight=2)
    with TestClient(create_cloud_app(settings, model)) as client:
        yield client


def test_websocket_connections_are_capped(small_cloud):
    with small_cloud.websocket_connect("/ws/encode"), small_cloud.websocket_connect("/ws/encode"):
        with pytest.raises(WebSocketDenialResponse) as denied, small_cloud.websocket_connect("/ws/encode"):
            pass
        assert denied.value.status_code == 503 and denied.value.json()["error"]["code"] == "OVERLOADED"
    with small_cloud.websocket_connect("/ws/encode") as ws:  # room again
        ws.send_json({"type": "ping", "request_id": "p"})
        assert ws.receive_json()["type"] == "pong"


def test_overload_says_when_to_retry_from_the_queue_and_is_not_an_error_in_the_log(small_cloud, caplog):
    runtime = small_cloud.app.state.runtime
    runtime.model_s, runtime.inflight = 2.5, runtime.max_inflight  # two requests of 2.5 s ahead
    try:
        with caplog.at_level(logging.INFO, logger="edensplit"):
            r = small_cloud.post("/api/v1/encode", content=pack_frames({"frame0": FRAMES[0], "frame1": FRAMES[1]}),
                                 headers={"Content-Type": FRAMES_MEDIA_TYPE})
    finally:
        runtime.inflight = 0
    assert r.status_code == 503 and r.json()["error"]["code"] == "OVERLOADED"
    assert r.headers["retry-after"] == str(math.ceil(2.5 * 2))
    refusals = [rec for rec in caplog.records if "OVERLOADED" in rec.getMessage() and rec.name == "edensplit.server"]
    assert refusals and all(rec.levelno < logging.WARNING for rec in refusals)


def test_ready_only_after_the_warm_up():
    from edensplit.servers.runtime import ModelRuntime

    model = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
    runtime = ModelRuntime("encode", 2, model)
    warmed = []
    assert runtime.health()["ready"] is False and runtime.health()["status"] == "loading"
    runtime.warm_up(lambda m: warmed.append(m))
    assert warmed == [model] and runtime.health()["ready"] is True and runtime.health()["status"] == "ok"


def test_sigterm_finishes_what_is_in_flight_and_admits_nothing_new(model_env, workdir):
    blob = pair_blob(1080, 1920)
    server = ServerProcess("edensplit.edge:app", env=model_env, log_path=workdir / "drain-edge.log",
                           extra_args=("--timeout-graceful-shutdown", "60")).start()
    try:
        answers: dict[str, httpx.Response] = {}

        def slow() -> None:
            answers["slow"] = httpx.post(f"{server.url}/api/v1/interpolate", params={"num_steps": 32, "method": "heun"},
                                         content=blob, timeout=120, headers={"Content-Type": BLOB_MEDIA_TYPE})

        thread = threading.Thread(target=slow)
        thread.start()
        deadline = time.monotonic() + 60
        while "edensplit_inflight 1.0" not in httpx.get(f"{server.url}/metrics").text:
            assert time.monotonic() < deadline
        server.proc.send_signal(signal.SIGTERM)
        try:
            late = httpx.post(f"{server.url}/api/v1/interpolate", content=pair_blob(), timeout=30,
                              headers={"Content-Type": BLOB_MEDIA_TYPE}).status_code
        except httpx.TransportError:
            late = "refused"  # the listening socket is already closed: also admitting nothing new
        thread.join(timeout=120)
        assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once done
    finally:
        server.stop()
    assert answers["slow"].status_code == 200  # the request in flight was finished
    assert late in (503, "refused")
    assert "SIGTERM, admitting nothing new" in (workdir / "drain-edge.log").read_text()

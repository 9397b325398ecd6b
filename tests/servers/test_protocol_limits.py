"""What docs/protocol.md promises per connection and per request, checked over the real protocol:
at most 8 unanswered requests per WebSocket connection, at most 16 chunked messages in progress per
connection (both refused with OVERLOADED, the connection working on), and one access-log line per
request with its id, route, status, bytes in and out, and milliseconds (HTTP and WebSocket)."""

from __future__ import annotations

import json
import logging
import re
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from edensplit.model.checkpoint import load_model
from edensplit.model.stages import encode_frames
from edensplit.servers.cloud.service import create_cloud_app
from edensplit.settings import ServerSettings
from edensplit.wire.blob import unpack_encoding
from edensplit.wire.frames import pack_frames
from edensplit.wire.images import b64decode_field, b64encode, encode_png
from edensplit.wire.messages import pack_binary, split_binary, split_text, unpack_binary
from tests.conftest import TINY_CONFIG, make_frames

FRAMES = make_frames(2, 40, 70)
WINDOW, MAX_CHUNKED = 8, 16  # docs/protocol.md, "Many requests in flight" and "Large messages"
PING, PONG = {"type": "ping", "request_id": "ping"}, {"type": "pong", "request_id": "ping"}


def receive(ws) -> tuple[dict, bytes]:
    message = ws.receive()
    if message.get("bytes") is not None:
        return unpack_binary(message["bytes"])
    return json.loads(message["text"]), b""


def send(ws, message: bytes | str) -> None:
    if isinstance(message, bytes):
        ws.send_bytes(message)
    else:
        ws.send_text(message)


def encode_frame_message(rid: str, frame: np.ndarray = FRAMES[0]) -> bytes:
    return pack_binary({"type": "encode_frame", "request_id": rid}, pack_frames({"frame": frame}))


class Gate:
    """Wraps a model call so that it blocks until opened: the requests behind it stay unanswered."""

    def __init__(self, call):
        self.call, self.entered, self.opened = call, threading.Event(), threading.Event()

    def __call__(self, *args, **kwargs):
        self.entered.set()
        if not self.opened.wait(timeout=120):
            raise TimeoutError("the test never opened the gate")
        return self.call(*args, **kwargs)


def test_a_connection_answers_8_unanswered_requests_and_refuses_a_9th_meanwhile():
    model = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
    gate = model.encode_tokens = Gate(model.encode_tokens)
    # The server-wide admission limit well above the window, so the connection's window is what refuses.
    settings = ServerSettings(max_inflight=4 * WINDOW, eden_random_weights=True, warmup=False)  # the gate counts calls
    frames = make_frames(WINDOW + 2, 40, 70, seed=7)
    expected = encode_frames(load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3), frames)
    with TestClient(create_cloud_app(settings, model)) as client, client.websocket_connect("/ws/encode") as ws:
        try:
            for i in range(WINDOW):
                ws.send_bytes(encode_frame_message(f"r{i}", frames[i]))
            assert gate.entered.wait(timeout=60)  # the model is busy with one; the other 7 wait behind it
            ws.send_bytes(encode_frame_message(f"r{WINDOW}", frames[WINDOW]))
            ws.send_text(json.dumps(PING))  # answered at once: if the 9th were admitted, the pong would come first
            error, _ = receive(ws)
            assert error["type"] == "error" and error["request_id"] == f"r{WINDOW}", error
            assert error["error"]["code"] == "OVERLOADED", error
            assert receive(ws)[0] == PONG
        finally:
            gate.opened.set()
        answers = {}
        for _ in range(WINDOW):  # all 8 are answered, each with its own frame's encoding
            header, blob = receive(ws)
            answers[header["request_id"]] = (header, blob)
        assert sorted(answers) == sorted(f"r{i}" for i in range(WINDOW))
        for i in range(WINDOW):
            header, blob = answers[f"r{i}"]
            assert header["status"] == "success", header
            assert bool((unpack_encoding(blob, frames=1).encoding.cond_dit == expected[i].cond_dit).all())
        # With the window free again, the same connection takes the next request.
        ws.send_bytes(encode_frame_message("after", frames[WINDOW + 1]))
        header, blob = receive(ws)
        assert (header["request_id"], header["status"]) == ("after", "success"), header
        assert bool((unpack_encoding(blob, frames=1).encoding.cond_dit == expected[WINDOW + 1].cond_dit).all())


def test_a_connection_holds_16_chunked_messages_in_progress_and_refuses_a_17th(cloud):
    frames = {f"p{i}": make_frames(1, 40, 70, seed=20 + i)[0] for i in range(MAX_CHUNKED + 2)}
    encoder = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)  # the cloud fixture's
    expected = {rid: encode_frames(encoder, frame) for rid, frame in frames.items()}

    def chunks(rid: str) -> list[bytes] | list[str]:
        """Two chunks: binary messages for even ids, JSON text chunks for odd ones (both count)."""
        if int(rid[1:]) % 2 == 0:
            body = pack_frames({"frame": frames[rid]})
            parts = split_binary({"type": "encode_frame", "request_id": rid}, body, len(body) // 2 + 1)
        else:
            message = {"type": "encode_frame", "request_id": rid, "payload": {"frame": b64encode(encode_png(
                frames[rid]))}}
            parts = split_text(message, len(json.dumps(message, separators=(",", ":"))) // 2 + 1)
        assert len(parts) == 2
        return parts


    def answer_of(ws, rid: str) -> None:
        header, blob = receive(ws)
        assert header["request_id"] == rid and header["status"] == "success", header
        if not blob:  # a JSON answer
            blob = b64decode_field(header["payload"]["enc_out"], "enc_out")
        assert bool((unpack_encoding(blob, frames=1).encoding.cond_dit == expected[rid].cond_dit).all())

    pending = {rid: chunks(rid) for rid in frames}
    with cloud.websocket_connect("/ws/encode") as ws:
        for i in range(MAX_CHUNKED):
            send(ws, pending[f"p{i}"][0])
        for rid in (f"p{MAX_CHUNKED}", f"p{MAX_CHUNKED + 1}"):  # a 17th, binary or text: refused at once
            send(ws, pending[rid][0])
            ws.send_text(json.dumps(PING))  # if the chunk were taken, the pong would be the first answer
            error, _ = receive(ws)
            assert error["type"] == "error" and error["request_id"] == rid, error
            assert error["error"]["code"] == "OVERLOADED", error
            assert receive(ws)[0] == PONG
        # The 16 in progress are unharmed: finishing one makes room for a new one, and every one is answered.
        send(ws, pending["p0"][1])
        answer_of(ws, "p0")
        for rid in (f"p{MAX_CHUNKED}", f"p{MAX_CHUNKED + 1}"):
            send(ws, pending[rid][0])
            send(ws, pending[rid][1])
            answer_of(ws, rid)
        for i in range(1, MAX_CHUNKED):
            send(ws, pending[f"p{i}"][1])
            answer_of(ws, f"p{i}")


class AccessLines(logging.Handler):
    """Collects the access log's lines; waits for a request's line (it may be written just after the answer)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.lines.append(record.getMessage())
            self.changed.notify_all()

    def of(self, rid: str) -> list[str]:
        return [line for line in self.lines if rid in line.split()]

    def wait_for(self, rid: str, timeout: float = 30) -> str:
        with self.changed:
            assert self.changed.wait_for(lambda: self.of(rid), timeout), f"no access-log line for {rid}"
            return self.of(rid)[0]


@pytest.fixture
def access_lines():
    logger = logging.getLogger("edensplit.access")
    handler, level = AccessLines(), logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def fields(line: str) -> dict[str, float]:
    """The numbers of a log line: bytes in, bytes out, milliseconds."""
    found = {"in": re.search(r"\bin=(\d+)\b", line), "out": re.search(r"\bout=(\d+)\b", line),
             "ms": re.search(r"(?<![\w.])(\d+(?:\.\d+)?) ?ms\b", line)}
    assert all(found.values()), f"not every field in the log line {line!r}"
    return {name: float(match.group(1)) for name, match in found.items()}


def test_every_http_request_logs_one_line_with_its_id_route_status_bytes_and_time(cloud, access_lines):
    cases = [  # (request id, body, status)
        ("log-http-ok", json.dumps({"frame0": b64encode(encode_png(FRAMES[0])),
                                    "frame1": b64encode(encode_png(FRAMES[1]))}).encode(), 200),
        ("log-http-bad", b'{"frame0": "@@", "frame1": "@@"}', 400),
    ]
    for rid, body, status in cases:
        started = time.perf_counter()
        r = cloud.post("/api/v1/encode", content=body, headers={"Content-Type": "application/json",
                                                                "X-Request-ID": rid, "Accept-Encoding": "identity"})
        assert r.status_code == status and r.headers["x-request-id"] == rid
        line = access_lines.wait_for(rid)
        elapsed_ms = (time.perf_counter() - started) * 1000  # the request's whole life, as the client saw it
        tokens = line.split()
        assert "/api/v1/encode" in tokens and str(status) in tokens, line
        values = fields(line)
        assert values["in"] == len(body) and values["out"] == len(r.content), (line, len(body), len(r.content))
        assert 0 < values["ms"] <= elapsed_ms, (line, elapsed_ms)
    assert all(len(access_lines.of(rid)) == 1 for rid, _, _ in cases), access_lines.lines


def test_every_websocket_request_logs_one_line_with_its_id_route_status_bytes_and_time(cloud, access_lines):
    json_message = json.dumps({"type": "encode_frame", "request_id": "log-ws-json",
                               "payload": {"frame": b64encode(encode_png(FRAMES[0]))}})
    body = pack_frames({"frame": FRAMES[1]})
    chunked = split_binary({"type": "encode_frame", "request_id": "log-ws-chunked"}, body, len(body) // 3 + 1)
    text_chunked = split_text({**json.loads(json_message), "request_id": "log-ws-json-chunked"},
                              len(json_message) // 3 + 1)
    assert len(chunked) == len(text_chunked) == 3
    cases = [  # (request id, the messages sent, status)
        ("log-ws-binary", [encode_frame_message("log-ws-binary")], "success"),
        ("log-ws-json", [json_message], "success"),
        ("log-ws-chunked", chunked, "success"),
        ("log-ws-json-chunked", text_chunked, "success"),
        ("log-ws-bad", [pack_binary({"type": "encode_frame", "request_id": "log-ws-bad"}, b"garbage")], "INVALID_BLOB"),
    ]
    with cloud.websocket_connect("/ws/encode") as ws:
        for rid, messages, status in cases:
            started = time.perf_counter()
            for message in messages:
                send(ws, message)
            answer = ws.receive()
            received = answer["bytes"] if answer.get("bytes") is not None else answer["text"]
            header = unpack_binary(received)[0] if isinstance(received, bytes) else json.loads(received)
            assert header["request_id"] == rid and header["status"] == ("error" if status != "success" else status)
            line = access_lines.wait_for(rid)
            elapsed_ms = (time.perf_counter() - started) * 1000  # the request's whole life, as the client saw it
            tokens = line.split()
            assert "/ws/encode" in tokens and status in tokens, line
            values = fields(line)
            sent = sum(len(m) for m in messages)  # the bytes of every message (every chunk) of the request
            assert values["in"] == sent and values["out"] == len(received), (line, sent, len(received))
            assert 0 < values["ms"] <= elapsed_ms, (line, elapsed_ms)
    assert all(len(access_lines.of(rid)) == 1 for rid, _, _ in cases), access_lines.lines

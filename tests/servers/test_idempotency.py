"""Idempotency: a request's id is its idempotency key. A retry (same id, same request) gets the stored
answer without being computed again; the same id with another request is 409 IDEMPOTENCY_CONFLICT; a
duplicate still in flight waits for the original (HTTP) or is refused (the same WebSocket); errors are
never replayed; a session frame is never silently replaced."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from fastapi.testclient import TestClient

from edensplit.errors import EdenError, ErrorCode
from edensplit.model.checkpoint import load_model
from edensplit.model.stages import encode_frames
from edensplit.servers.cloud.service import create_cloud_app
from edensplit.servers.idempotency import DIGEST_CHARS, ENTRY_BYTES, IdempotencyCache
from edensplit.settings import ServerSettings
from edensplit.wire.blob import BLOB_MEDIA_TYPE, pack_encoding
from edensplit.wire.frames import FRAMES_MEDIA_TYPE, pack_frames
from edensplit.wire.images import b64encode, encode_png
from edensplit.wire.messages import pack_binary, unpack_binary
from tests.conftest import TINY_CONFIG, make_frames

FRAMES = make_frames(3, 40, 70)


class Counted:
    """Counts the model's encoder calls; blocks while `gate` is closed."""

    def __init__(self, call):
        self.call, self.calls, self.gate, self.entered = call, 0, threading.Event(), threading.Event()
        self.gate.set()

    def __call__(self, *args, **kwargs):
        self.calls += 1
        self.entered.set()
        assert self.gate.wait(timeout=60)
        return self.call(*args, **kwargs)


@pytest.fixture()
def cloud():
    model = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
    settings = ServerSettings(eden_random_weights=True, warmup=False, max_inflight=4)
    counter = model.encode_tokens = Counted(model.encode_tokens)
    with TestClient(create_cloud_app(settings, model)) as client:
        client.counter = counter
        yield client


def encode(client, rid: str, frame=FRAMES[0], **headers):
    return client.post("/api/v1/encode_frame", content=pack_frames({"frame": frame}),
                       headers={"Content-Type": FRAMES_MEDIA_TYPE, "X-Request-ID": rid, **headers})


def test_a_retry_gets_the_stored_answer_without_computing_again(cloud):
    first = encode(cloud, "job-1")
    again = encode(cloud, "job-1")
    assert first.status_code == again.status_code == 200
    assert again.headers["x-idempotent-replay"] == "true" and "x-idempotent-replay" not in first.headers
    assert again.content == first.content and again.headers["content-type"] == first.headers["content-type"]
    assert cloud.counter.calls == 1
    assert encode(cloud, "job-2").status_code == 200 and cloud.counter.calls == 2  # a new id runs


def test_the_same_id_with_another_request_is_a_conflict(cloud):
    assert encode(cloud, "job-3").status_code == 200
    r = encode(cloud, "job-3", frame=FRAMES[1])
    assert r.status_code == 409 and r.json()["error"]["code"] == "IDEMPOTENCY_CONFLICT"
    other_accept = encode(cloud, "job-3", Accept="application/json")
    assert other_accept.status_code == 409  # asking for another answer format is another request
    assert cloud.counter.calls == 1


def test_errors_are_never_replayed(cloud):
    runtime = cloud.app.state.runtime
    runtime.inflight = runtime.max_inflight  # full: 503
    try:
        refused = encode(cloud, "job-4")
    finally:
        runtime.inflight = 0
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "OVERLOADED"
    retried = encode(cloud, "job-4")
    assert retried.status_code == 200 and "x-idempotent-replay" not in retried.headers
    assert cloud.counter.calls == 1


def test_a_duplicate_in_flight_waits_for_the_original(cloud):
    cloud.counter.gate.clear()
    answers = {}

    def send(name: str) -> None:
        answers[name] = encode(cloud, "job-5")

    first = threading.Thread(target=send, args=("first",))
    first.start()
    assert cloud.counter.entered.wait(timeout=30)
    second = threading.Thread(target=send, args=("second",))
    second.start()
    second.join(timeout=1)
    assert second.is_alive()  # waiting for the original, not computing and not refused
    cloud.counter.gate.set()
    first.join(timeout=60)
    second.join(timeout=60)
    assert answers["first"].status_code == answers["second"].status_code == 200
    assert answers["second"].content == answers["first"].content
    assert answers["second"].headers["x-idempotent-replay"] == "true" and cloud.counter.calls == 1


def ws_encode(ws, rid: str, frame=FRAMES[0]) -> None:
    ws.send_bytes(pack_binary({"type": "encode_frame", "request_id": rid}, pack_frames({"frame": frame})))


def test_websocket_retries_are_replayed_and_a_duplicate_in_flight_is_refused(cloud):
    cloud.counter.gate.clear()
    with cloud.websocket_connect("/ws/encode") as ws:
        ws_encode(ws, "w1")
        assert cloud.counter.entered.wait(timeout=30)
        ws_encode(ws, "w1")  # the same id while the first is running on this connection
        refused = ws.receive_json()
        assert refused["request_id"] == "w1" and refused["error"]["code"] == "IDEMPOTENCY_CONFLICT"
        cloud.counter.gate.set()
        header, blob = unpack_binary(ws.receive_bytes())
        assert header["status"] == "success"
    with cloud.websocket_connect("/ws/encode") as ws:  # a reconnected client resends: replayed
        ws_encode(ws, "w1")
        again_header, again_blob = unpack_binary(ws.receive_bytes())  # answered before the next is sent
        ws_encode(ws, "w1", frame=FRAMES[1])
        conflict = ws.receive_json()
    assert (again_header, again_blob) == (header, blob) and cloud.counter.calls == 1
    assert conflict["error"]["code"] == "IDEMPOTENCY_CONFLICT"


def test_what_does_not_change_the_request_does_not_make_a_retry_another_one_on_either_transport(cloud):
    """A retry may carry another trace context (its traceparent: a new attempt's span) and another deadline; it
    asks the same thing, so it is replayed, over HTTP (headers) and over WebSocket (a binary message's header
    fields, a text message's fields) alike."""
    contexts = [("00-" + "1" * 32 + "-" + "a" * 16 + "-01", "30"), ("00-" + "2" * 32 + "-" + "b" * 16 + "-01", "60")]
    http = [encode(cloud, "ctx-http", **{"traceparent": tp, "X-Request-Timeout": t}) for tp, t in contexts]
    assert [r.status_code for r in http] == [200, 200] and http[1].headers["x-idempotent-replay"] == "true"
    binary, text = [], []
    png = b64encode(encode_png(FRAMES[0]))
    with cloud.websocket_connect("/ws/encode") as ws:
        for tp, timeout in contexts:
            ws.send_bytes(pack_binary({"type": "encode_frame", "request_id": "ctx-ws", "traceparent": tp,
                                       "timeout_s": float(timeout)}, pack_frames({"frame": FRAMES[0]})))
            binary.append(unpack_binary(ws.receive_bytes()))
            ws.send_text(json.dumps({"type": "encode_frame", "request_id": "ctx-text", "traceparent": tp,
                                     "timeout_s": float(timeout), "payload": {"frame": png}}))
            text.append(ws.receive_json())
    assert binary[0][0]["status"] == text[0]["status"] == "success", (binary[0][0], text[0])
    assert binary[1] == binary[0] and text[1] == text[0], (binary[1][0], text[1])  # replayed, not refused
    assert cloud.counter.calls == 3  # one per transport and message kind: the retries were not computed again


def test_a_session_frame_is_never_silently_replaced(edge):
    encoder = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
    blobs = [pack_encoding(encode_frames(encoder, f)) for f in FRAMES[:2]]
    headers = {"Content-Type": BLOB_MEDIA_TYPE}
    path = "/api/v1/sessions/replace-me/frames/0"
    assert edge.post(path, content=blobs[0], headers=headers).status_code == 200
    assert edge.post(path, content=blobs[0], headers=headers).status_code == 200  # the same frame again: fine
    r = edge.post(path, content=blobs[1], headers=headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "IDEMPOTENCY_CONFLICT"
    assert r.json()["error"]["details"] == {"session_id": "replace-me", "index": 0}


def test_the_cache_is_bounded_in_bytes():
    """Each entry counts whole: its answer, its key and digest, and the entry's own overhead."""
    entry = 300 + len("k0") + DIGEST_CHARS + ENTRY_BYTES

    async def scenario() -> IdempotencyCache:
        cache = IdempotencyCache(max_bytes=3 * entry + entry // 2)
        for i in range(10):
            assert await cache.begin(f"k{i}", "d") is None
            cache.finish(f"k{i}", f"answer {i}", size=300)
        return cache

    cache = asyncio.run(scenario())
    assert len(cache) == 3 and cache.size == 3 * entry
    assert asyncio.run(_replayed(cache, "k9")) == "answer 9"


async def _replayed(cache: IdempotencyCache, key: str):
    stored = await cache.begin(key, "d")
    return stored.answer


def test_a_new_key_runs_before_its_digest_is_known_and_a_retry_compares_it():
    """The body's digest is computed beside the request: a first request never waits for it; a second request
    with the same key waits for both digests, then replays (same content) or is refused (another)."""

    async def scenario() -> None:
        cache = IdempotencyCache(max_bytes=2**20)
        loop = asyncio.get_running_loop()
        first = loop.create_future()
        assert await asyncio.wait_for(cache.begin("k", first), 1) is None  # not waiting on the digest
        cache.finish("k", "answer", size=10)
        same, other = loop.create_future(), loop.create_future()
        retry = asyncio.ensure_future(cache.begin("k", same))
        await asyncio.sleep(0.01)
        assert not retry.done()  # the stored digest is not known yet
        first.set_result("d1")
        same.set_result("d1")
        assert (await asyncio.wait_for(retry, 1)).answer == "answer"
        other.set_result("d2")
        with pytest.raises(EdenError) as err:
            await cache.begin("k", other)
        assert err.value.code == ErrorCode.IDEMPOTENCY_CONFLICT

    asyncio.run(scenario())

"""Request building over an in-memory transport (httpx.MockTransport): each payload does only its own work
(binary: no base64, no PNG; JSON: no container packing), options travel where the protocol says, and
answers of every shape are read."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from edensplit.client import requests
from edensplit.client.http import HttpTransport
from edensplit.client.requests import JSON, Answer, EncodedBlob
from edensplit.client.services import Cloud, Edge
from edensplit.client.ws import frames_of, message
from edensplit.errors import EdenError, ErrorCode
from edensplit.wire.blob import BLOB_MEDIA_TYPE
from edensplit.wire.frames import FRAMES_MEDIA_TYPE, pack_frames, unpack_frames
from edensplit.wire.images import b64encode, encode_png
from edensplit.wire.messages import unpack_binary
from edensplit.wire.options import Options
from tests.conftest import make_frames

FRAMES = make_frames(3, 40, 70)
MIDDLE = FRAMES[1][::-1].copy()  # what the fake edge answers with


@pytest.fixture(scope="module")
def blobs(cloud) -> dict[str, EncodedBlob]:
    """Real blobs from the in-process cloud: a pair's and one frame's."""
    with Cloud(HttpTransport("http://testserver", client=cloud)) as client:
        return {"pair": client.encode(FRAMES[0], FRAMES[1]), "frame": client.encode_frame(FRAMES[1])}


class FakeEdge:
    """An httpx.MockTransport handler that records each request and answers like the edge."""

    def __init__(self, store_only: bool = False):
        self.requests: list[httpx.Request] = []
        self.store_only = store_only

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.store_only:
            return httpx.Response(200, json={"status": "success", "data": {"session_id": "s", "stored": 0}})
        if request.headers["accept"] == FRAMES_MEDIA_TYPE:
            return httpx.Response(200, content=pack_frames({"frame": MIDDLE}),
                                  headers={"content-type": FRAMES_MEDIA_TYPE})
        data = {"generated_frame": b64encode(encode_png(MIDDLE)), "metadata": {"seed": 0}}
        return httpx.Response(200, json={"status": "success", "data": data, "error": None})

    def edge(self, payload: str, **options) -> Edge:
        return Edge(HttpTransport("http://edge", transport=httpx.MockTransport(self)), payload=payload,
                    options=Options(**options) if options else None)


def forbid(monkeypatch, *names: str) -> None:
    """Make the request module's `names` fail if called: the work they do is not needed for this payload."""
    for name in names:
        def refuse(*args, _name=name, **kwargs):
            raise AssertionError(f"{_name} called")
        monkeypatch.setattr(requests, name, refuse)


def test_binary_edge_requests_send_the_blob_as_is_with_no_base64_or_png(blobs, monkeypatch):
    fake = FakeEdge()
    edge = fake.edge("binary", num_steps=3, method="heun")
    forbid(monkeypatch, "b64encode", "encode_png")
    assert np.array_equal(edge.interpolate(blobs["pair"], seed=7), MIDDLE)
    assert np.array_equal(edge.session_frame("s1", 2, blobs["frame"], difference=0.5, seed=9), MIDDLE)
    sent = fake.requests
    assert [r.url.path for r in sent] == ["/api/v1/interpolate", "/api/v1/sessions/s1/frames/2"]
    assert sent[0].content == blobs["pair"].raw and sent[1].content == blobs["frame"].raw
    assert all(r.headers["content-type"] == BLOB_MEDIA_TYPE for r in sent)
    assert all(r.headers["accept"] == FRAMES_MEDIA_TYPE for r in sent)
    assert dict(sent[0].url.params) == {"seed": "7", "num_steps": "3", "method": "heun"}
    assert dict(sent[1].url.params) == {"seed": "9", "num_steps": "3", "method": "heun", "difference": "0.5"}


def test_binary_raw_frames_are_packed_not_png_encoded(monkeypatch):
    fake = FakeEdge()
    edge = fake.edge("binary")
    forbid(monkeypatch, "b64encode", "encode_png")
    assert np.array_equal(edge.interpolate_frames(FRAMES[0], FRAMES[1], seed=1), MIDDLE)
    assert np.array_equal(edge.session_frame("s2", 1, FRAMES[1], seed=2), MIDDLE)  # flow B: the frame itself
    pair, single = fake.requests
    assert pair.headers["content-type"] == single.headers["content-type"] == FRAMES_MEDIA_TYPE
    frames, _ = unpack_frames(pair.content, ("frame0", "frame1"))
    assert np.array_equal(frames["frame0"], FRAMES[0]) and np.array_equal(frames["frame1"], FRAMES[1])
    assert np.array_equal(unpack_frames(single.content, ("frame",))[0]["frame"], FRAMES[1])
    assert "difference" not in single.url.params  # the edge computes it from the pixels it holds


def test_session_requests_name_their_session_in_a_header_over_http_only(blobs):
    """X-Session-ID: the key Ray Serve's proxy routes a session's requests to one replica by; every form of a
    session request sends it over HTTP, nothing else does, and a WebSocket message is as it was."""
    for payload in ("binary", "json"):
        fake = FakeEdge()
        edge = fake.edge(payload)
        edge.session_frame("s7", 0, blobs["frame"])
        edge.session_frame("s7", 1, FRAMES[1])
        edge.interpolate(blobs["pair"])
        edge.interpolate_frames(FRAMES[0], FRAMES[1])
        assert [r.headers.get("x-session-id") for r in fake.requests] == ["s7", "s7", None, None], payload
    call = requests.session_frame("s7", 1, blobs["frame"], Options(), payload="binary")
    assert call.headers == {"X-Session-ID": "s7"} and not requests.interpolate(blobs["pair"], Options(),
                                                                               payload="binary").headers
    assert set(message(call, "rid")) == {"type", "request_id", "session_id", "index", "content_type", "accept"}


def test_binary_cloud_requests_pack_frames_and_ask_for_the_blob(blobs, monkeypatch):
    seen: list[httpx.Request] = []

    def cloud(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=blobs["pair"].raw, headers={"content-type": BLOB_MEDIA_TYPE})

    forbid(monkeypatch, "b64encode", "encode_png")
    client = Cloud(HttpTransport("http://cloud", transport=httpx.MockTransport(cloud)), wire_dtype="float16")
    got = client.encode(FRAMES[0], FRAMES[1], request_id="r-1")
    assert got.raw == blobs["pair"].raw and got.grid == blobs["pair"].grid and got.blob_b64 is None
    (request,) = seen
    assert request.url.path == "/api/v1/encode" and dict(request.url.params) == {"wire_dtype": "float16"}
    assert request.headers["content-type"] == FRAMES_MEDIA_TYPE and request.headers["accept"] == BLOB_MEDIA_TYPE
    assert request.headers["x-request-id"] == "r-1" and request.headers["accept-encoding"] == "identity"


def test_json_requests_do_no_container_packing_and_nest_sampling_config(blobs, monkeypatch):
    fake = FakeEdge()
    edge = fake.edge("json", num_steps=3, method="heun")
    forbid(monkeypatch, "pack_frames")
    assert np.array_equal(edge.interpolate(blobs["pair"], seed=7), MIDDLE)
    assert np.array_equal(edge.session_frame("s3", 1, blobs["frame"], difference=0.25, seed=4), MIDDLE)
    assert np.array_equal(edge.interpolate_frames(FRAMES[0], FRAMES[1], seed=5), MIDDLE)
    bodies = [json.loads(r.content) for r in fake.requests]
    assert all(r.headers["content-type"] == JSON and not r.url.params for r in fake.requests)
    assert bodies[0] == {"enc_out": blobs["pair"].b64, "seed": 7, "sampling_config": {"num_steps": 3, "method": "heun"},
                         "metadata": {"ph": blobs["pair"].grid[0], "pw": blobs["pair"].grid[1]}}
    assert bodies[1] == {"enc_out": blobs["frame"].b64, "seed": 4, "difference": 0.25,
                         "sampling_config": {"num_steps": 3, "method": "heun"}}
    assert fake.requests[1].url.path == "/api/v1/sessions/s3/frames/1"
    assert set(bodies[2]) == {"frame0", "frame1", "seed", "sampling_config"}


def test_a_json_blob_is_passed_on_as_received_without_decoding(blobs, monkeypatch):
    """A blob that came as base64 goes to a JSON edge as the same text: no decode, no re-encode."""
    as_json = EncodedBlob(None, blobs["pair"].b64, blobs["pair"].grid, blobs["pair"].difference, blobs["pair"].size)
    forbid(monkeypatch, "b64encode", "b64decode_field", "pack_frames")
    call = requests.interpolate(as_json, Options(seed=1), payload="json")
    assert call.document["enc_out"] is as_json.blob_b64 and call.body is None


def test_store_only_answers_of_every_shape_are_none(blobs):
    fake = FakeEdge(store_only=True)
    edge = fake.edge("binary")
    assert edge.session_frame("s4", 0, blobs["frame"], interpolate=False) is None
    assert fake.requests[0].url.params["interpolate"] == "false"
    assert requests.frame_from(Answer({"stored": 0, "session_id": "s"}, {}, b"", FRAMES_MEDIA_TYPE)) is None  # WS bin
    assert requests.frame_from(Answer({"stored": 0}, {})) is None  # WS JSON
    with pytest.raises(EdenError) as err:
        requests.frame_from(Answer({}, {}))
    assert err.value.code == ErrorCode.UPSTREAM_ERROR
    with pytest.raises(EdenError, match="stored the frame"):
        edge.interpolate(blobs["pair"])  # an answer with no frame where one is due


def test_json_encode_answers_keep_the_base64_text(blobs):
    text = blobs["pair"].b64
    answer = Answer({"ph": 4, "pw": 6, "difference": 0.9, "request_id": "r"},
                    {"enc_out": text, "enc_out_size": blobs["pair"].size})
    got = requests.blob_from(answer)
    assert got.blob_b64 is text and got.grid == (4, 6) and got.difference == 0.9
    assert got.raw == blobs["pair"].raw and got.size == blobs["pair"].size


def test_options_are_checked_before_anything_is_sent():
    fake = FakeEdge()
    edge = fake.edge("binary")
    with pytest.raises(EdenError) as err:
        edge.interpolate_frames(FRAMES[0], FRAMES[1], seed=-1)
    assert err.value.code == ErrorCode.INVALID_PARAMETER and "seed" in err.value.message
    with pytest.raises(EdenError) as err:
        edge.session_frame("s", 1, FRAMES[1], difference=2.0)
    assert err.value.code == ErrorCode.INVALID_PARAMETER and "difference" in err.value.message
    with pytest.raises(EdenError, match="wire_dtype"):
        Cloud(HttpTransport("http://cloud"), wire_dtype="float8")
    with pytest.raises(EdenError, match="payload"):
        Edge(HttpTransport("http://edge"), payload="xml")
    assert not fake.requests


def test_websocket_messages_carry_ids_options_and_the_payload_type(blobs):
    call = requests.session_frame("s5", 3, blobs["frame"], Options(seed=2, difference=0.5), payload="binary")
    header = message(call, "rid")
    assert header == {"type": "session_frame", "request_id": "rid", "session_id": "s5", "index": 3, "seed": 2,
                      "difference": 0.5, "content_type": BLOB_MEDIA_TYPE, "accept": FRAMES_MEDIA_TYPE}
    chunks = frames_of(call, "rid", chunk_bytes=len(blobs["frame"].raw) // 3)
    assert len(chunks) >= 3
    heads = [unpack_binary(c)[0] for c in chunks]
    assert all(h["content_type"] == BLOB_MEDIA_TYPE and h["chunks"] == len(chunks) for h in heads)
    assert b"".join(unpack_binary(c)[1] for c in chunks) == blobs["frame"].raw
    assert message(requests.encode_frame(FRAMES[0], Options(wire_dtype="bfloat16"), payload="binary"),
                   "r")["content_type"] == FRAMES_MEDIA_TYPE
    as_json = message(requests.encode(FRAMES[0], FRAMES[1], Options(wire_dtype="float16"), payload="json"), "r")
    assert as_json["wire_dtype"] == "float16" and set(as_json["payload"]) == {"frame0", "frame1"}
    assert "content_type" not in as_json


def test_a_step_timer_sees_each_request_pack_exchange_and_unpack(blobs):
    """The timer `edensplit bench --mode overhead` sets on a service: one call per request, its three steps' seconds;
    unset, nothing is timed."""
    fake = FakeEdge()
    edge = fake.edge("binary")
    seen = []
    edge.timer = lambda call, *seconds: seen.append((call.operation, seconds))
    assert np.array_equal(edge.session_frame("s4", 1, blobs["frame"], difference=0.5), MIDDLE)
    assert np.array_equal(edge.interpolate_frames(FRAMES[0], FRAMES[1]), MIDDLE)
    assert [operation for operation, _ in seen] == ["session_frame", "interpolate_frames"]
    assert all(len(s) == 3 and min(s) >= 0 for _, s in seen)
    edge.timer = None
    edge.interpolate(blobs["pair"])
    assert len(seen) == 2 and len(fake.requests) == 3

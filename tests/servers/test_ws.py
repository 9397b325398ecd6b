"""The WebSocket endpoints: the user's message shapes, binary messages, chunking, and bad messages
answered with an `error` while the connection keeps working."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edensplit.model.checkpoint import load_model
from edensplit.model.pipeline import LocalPipeline
from edensplit.model.stages import encode_frames, frame_difference
from edensplit.wire.blob import unpack_encoding
from edensplit.wire.frames import pack_frames, unpack_frames
from edensplit.wire.images import b64decode_field, b64encode, decode_image, encode_png
from edensplit.wire.messages import pack_binary, split_binary, split_text, unpack_binary
from tests.conftest import TINY_CONFIG, make_frames

FRAMES = make_frames(2, 40, 70)


def receive_whole(ws) -> tuple[dict, bytes]:
    """One whole answer, reassembling chunks (small tests get unchunked answers)."""
    message = ws.receive()
    if message.get("bytes") is not None:
        return unpack_binary(message["bytes"])
    return json.loads(message["text"]), b""


def encode_json(ws, rid: str) -> dict:
    ws.send_text(json.dumps({"type": "encode", "request_id": rid, "metadata": {"frame_id": 1},
                             "payload": {"frame0": b64encode(encode_png(FRAMES[0])),
                                         "frame1": b64encode(encode_png(FRAMES[1]))}}))
    return receive_whole(ws)[0]


def test_ws_json_encode_then_interpolate_equals_local(cloud, edge):
    with cloud.websocket_connect("/ws/encode") as ws:
        answer = encode_json(ws, "r1")
    assert answer["type"] == "encode_result" and answer["request_id"] == "r1" and answer["status"] == "success"
    assert (answer["metadata"]["ph"], answer["metadata"]["pw"]) == (4, 6)
    with edge.websocket_connect("/ws/interpolate") as ws:
        ws.send_text(json.dumps({"type": "interpolate", "request_id": "r2", "payload": {
            "enc_out": answer["payload"]["enc_out"], "seed": 5, "sampling_config": {"num_steps": 2}}}))
        result, _ = receive_whole(ws)
    assert result["type"] == "interpolate_result" and result["request_id"] == "r2"
    frame = decode_image(b64decode_field(result["payload"]["generated_frame"], "generated_frame"))
    expected = LocalPipeline(load_model(None, TINY_CONFIG, allow_random=True, seed=3)).interpolate(*FRAMES, seed=5)
    np.testing.assert_array_equal(frame, expected)


def test_frames_at_the_top_level_are_accepted(cloud):
    with cloud.websocket_connect("/ws/encode") as ws:
        ws.send_text(json.dumps({"type": "encode", "request_id": "t", "frame0": b64encode(encode_png(FRAMES[0])),
                                 "frame1": b64encode(encode_png(FRAMES[1]))}))
        assert receive_whole(ws)[0]["status"] == "success"


@pytest.fixture(scope="module")
def encoder():
    return load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)  # the cloud fixture's


def test_binary_messages_name_their_request_and_several_are_in_flight(cloud, encoder):
    pairs = {f"b{i}": make_frames(2, 40, 70, seed=10 + i) for i in range(4)}  # a different pair per request
    with cloud.websocket_connect("/ws/encode") as ws:
        for rid, pair in pairs.items():
            ws.send_bytes(pack_binary({"type": "encode", "request_id": rid, "wire_dtype": "float16"},
                                      pack_frames({"frame0": pair[0], "frame1": pair[1]})))
        answers = {}
        for _ in range(4):
            header, blob = receive_whole(ws)
            answers[header["request_id"]] = (header, blob)
    assert set(answers) == set(pairs)
    for rid, (header, blob) in answers.items():  # each answer is its own request's encoding, not another's
        assert header["type"] == "encode_result"
        decoded = unpack_encoding(blob, frames=2)
        expected = encode_frames(encoder, pairs[rid])
        assert decoded.wire_dtype == "float16"
        assert torch.equal(decoded.encoding.cond_dit, expected.cond_dit.to(torch.float16))
        assert decoded.difference == float(frame_difference(pairs[rid][0], pairs[rid][1])[0])


def test_chunked_messages_reassemble(cloud, encoder):
    frames = pack_frames({"frame0": FRAMES[0], "frame1": FRAMES[1]})
    expected = encode_frames(encoder, FRAMES)
    with cloud.websocket_connect("/ws/encode") as ws:
        chunks = split_binary({"type": "encode", "request_id": "c1"}, frames, chunk_bytes=1000)
        assert len(chunks) > 5
        for chunk in chunks:
            ws.send_bytes(chunk)
        header, blob = receive_whole(ws)
        assert header["request_id"] == "c1"
        assert torch.equal(unpack_encoding(blob, frames=2).encoding.cond_dit, expected.cond_dit)  # the whole frames
        text = split_text({"type": "encode", "request_id": "c2", "payload": {
            "frame0": b64encode(encode_png(FRAMES[0])), "frame1": b64encode(encode_png(FRAMES[1]))}}, chunk_bytes=500)
        assert len(text) > 5
        for chunk in text:
            ws.send_text(chunk)
        answer = receive_whole(ws)[0]
        assert answer["request_id"] == "c2" and answer["status"] == "success", answer
        remote = unpack_encoding(b64decode_field(answer["payload"]["enc_out"], "enc_out"), frames=2)
        assert torch.equal(remote.encoding.cond_dec, expected.cond_dec)


BAD_MESSAGES = [
    ("not JSON", "{oops", None, "INVALID_REQUEST", "not JSON"),
    ("not an object", "[1, 2]", None, "INVALID_REQUEST", "JSON object"),
    ("unknown type", json.dumps({"type": "explode", "request_id": "u1"}), "u1", "INVALID_REQUEST", "'explode'"),
    ("no request_id", json.dumps({"type": "encode", "payload": {}}), None, "INVALID_REQUEST", "request_id"),
    ("bad base64", json.dumps({"type": "encode", "request_id": "u2", "payload": {"frame0": "@@", "frame1": "@@"}}),
     "u2", "INVALID_BASE64", "frame0"),
    ("no magic", b"\x00\x01 not a message", None, "INVALID_REQUEST", "EDS1"),
    ("bad frames container", pack_binary({"type": "encode", "request_id": "u3"}, b"garbage"), "u3", "INVALID_BLOB",
     "frames container"),
    ("chunk out of order", pack_binary({"type": "encode", "request_id": "u4", "chunk": 1, "chunks": 3}, b"x"),
     "u4", "INVALID_REQUEST", "before chunk 0"),
]


@pytest.mark.parametrize("name,message,rid,code,phrase", BAD_MESSAGES, ids=[m[0] for m in BAD_MESSAGES])
def test_bad_messages_get_an_error_and_the_connection_keeps_working(cloud, name, message, rid, code, phrase):
    with cloud.websocket_connect("/ws/encode") as ws:
        if isinstance(message, bytes):
            ws.send_bytes(message)
        else:
            ws.send_text(message)
        error, _ = receive_whole(ws)
        assert error["type"] == "error" and error["status"] == "error" and error["request_id"] == rid
        assert error["error"]["code"] == code and phrase in error["error"]["message"]
        assert encode_json(ws, "after")["status"] == "success"  # same connection, still serving


def test_bad_blob_to_the_edge_names_its_request(edge):
    with edge.websocket_connect("/ws/interpolate") as ws:
        ws.send_bytes(pack_binary({"type": "interpolate", "request_id": "e1", "seed": 1}, b"\x00" * 100))
        error, _ = receive_whole(ws)
        assert (error["request_id"], error["error"]["code"]) == ("e1", "INVALID_BLOB")
        ws.send_text(json.dumps({"type": "interpolate", "request_id": "e2", "payload": {"enc_out": 5}}))
        error, _ = receive_whole(ws)
        assert (error["request_id"], error["error"]["code"]) == ("e2", "INVALID_REQUEST")
        ws.send_text(json.dumps({"type": "ping", "request_id": "p"}))
        assert receive_whole(ws)[0] == {"type": "pong", "request_id": "p"}


def test_a_message_over_the_servers_limit_gets_an_error_not_a_dropped_connection(cloud):
    limit = cloud.app.state.settings.max_request_mb * 2**20  # 4 MiB in these tests
    with cloud.websocket_connect("/ws/encode") as ws:
        for chunk in split_binary({"type": "encode", "request_id": "big"}, b"\x00" * int(limit + 2**20), 2**20):
            ws.send_bytes(chunk)
        error, _ = receive_whole(ws)
        assert (error["request_id"], error["error"]["code"]) == ("big", "PAYLOAD_TOO_LARGE")
        assert encode_json(ws, "after")["status"] == "success"


def test_session_messages_over_ws_store_and_interpolate(cloud, edge):
    blobs = []
    with cloud.websocket_connect("/ws/encode") as ws:
        for i, frame in enumerate(FRAMES):
            ws.send_bytes(pack_binary({"type": "encode_frame", "request_id": f"f{i}"}, pack_frames({"frame": frame})))
            blobs.append(receive_whole(ws)[1])
    with edge.websocket_connect("/ws/interpolate") as ws:
        ws.send_bytes(pack_binary({"type": "session_frame", "request_id": "s0", "session_id": "v", "index": 0},
                                  blobs[0]))
        header, payload = receive_whole(ws)
        assert header["metadata"]["stored"] == 0 and payload == b""
        difference = float(frame_difference(FRAMES[0], FRAMES[1])[0])
        ws.send_bytes(pack_binary({"type": "session_frame", "request_id": "s1", "session_id": "v", "index": 1,
                                   "difference": difference, "seed": 2}, blobs[1]))
        header, payload = receive_whole(ws)
        assert header["type"] == "session_frame_result"
        expected = LocalPipeline(load_model(None, TINY_CONFIG, allow_random=True, seed=3)).interpolate(*FRAMES, seed=2)
        np.testing.assert_array_equal(unpack_frames(payload, ("frame",))[0]["frame"], expected)  # (0, 1), seed 2
        ws.send_bytes(pack_binary({"type": "session_frame", "request_id": "s2", "session_id": "other", "index": 1,
                                   "difference": 0.95, "seed": 2}, blobs[1]))
        header, _ = receive_whole(ws)
    assert header["error"]["code"] == "SESSION_NOT_FOUND" and header["error"]["details"]["missing_index"] == 0

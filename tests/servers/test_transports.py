"""HTTP and WebSocket are two adapters over one stage contract: the same request gives the same answer
on both, the same error code with the same status, and pixel-identical frames. One table of valid and
invalid requests, each sent both ways."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from edensplit.errors import ErrorCode
from edensplit.model.checkpoint import load_model
from edensplit.model.config import EdenConfig, ModelArgs
from edensplit.model.stages import encode_frames, frame_difference
from edensplit.wire.blob import BLOB_MEDIA_TYPE, pack_encoding, read_blob_header, unpack_encoding
from edensplit.wire.frames import FRAMES_MEDIA_TYPE, pack_frames, unpack_frames
from edensplit.wire.images import b64decode_field, b64encode, decode_image, encode_png
from edensplit.wire.messages import pack_binary, unpack_binary
from tests.conftest import TINY_CONFIG, make_frames

FRAMES = make_frames(2, 40, 70)
SMALL = make_frames(1, 24, 70)[0]
JSON = "application/json"


def _encoder(hidden_dim: int = 32):
    config = TINY_CONFIG if hidden_dim == 32 else EdenConfig(model_args=ModelArgs(
        hidden_dim=hidden_dim, num_heads=2, dit_depth=1, decoder_depth=1))
    return load_model(None, config, stages={"encode"}, allow_random=True, seed=3)


ENCODER = _encoder()
PAIR_BLOB = pack_encoding(encode_frames(ENCODER, FRAMES), float(frame_difference(FRAMES[0], FRAMES[1])[0]))
FRAME_BLOBS = [pack_encoding(encode_frames(ENCODER, f)) for f in FRAMES]
DIFFERENCE = float(frame_difference(FRAMES[0], FRAMES[1])[0])
PNGS = {"frame0": b64encode(encode_png(FRAMES[0])), "frame1": b64encode(encode_png(FRAMES[1]))}


@dataclass
class Case:
    """One request, described without a transport."""

    name: str
    server: str  # cloud or edge
    op: str  # the WebSocket message type; its HTTP route follows from it
    content_type: str
    body: Any  # bytes for a binary kind, a dict (the user's JSON shape) for JSON
    options: dict[str, Any] = field(default_factory=dict)  # HTTP query parameters / WS binary header fields
    expect: str = "ok"  # "ok", "stored", or the error code
    index: int | None = None  # session frames: the frame's index; frame 0 is stored first
    media_type: str | None = None  # WS binary: the content_type field (default: the stage's own)


ROUTES = {"encode": "/api/v1/encode", "encode_frame": "/api/v1/encode_frame", "interpolate": "/api/v1/interpolate",
          "interpolate_frames": "/api/v1/interpolate_frames"}
PAIR_CONTAINER = pack_frames({"frame0": FRAMES[0], "frame1": FRAMES[1]})

CASES = [
    Case("encode binary", "cloud", "encode", FRAMES_MEDIA_TYPE, PAIR_CONTAINER),
    Case("encode binary float16", "cloud", "encode", FRAMES_MEDIA_TYPE, PAIR_CONTAINER, {"wire_dtype": "float16"}),
    Case("encode json", "cloud", "encode", JSON, PNGS),
    Case("encode_frame binary", "cloud", "encode_frame", FRAMES_MEDIA_TYPE, pack_frames({"frame": FRAMES[0]})),
    Case("encode json bad base64", "cloud", "encode", JSON, {"frame0": "@@", "frame1": "@@"},
         expect="INVALID_BASE64"),
    Case("encode json missing frame1", "cloud", "encode", JSON, {"frame0": PNGS["frame0"]}, expect="INVALID_REQUEST"),
    Case("encode garbage container", "cloud", "encode", FRAMES_MEDIA_TYPE, b"garbage", expect="INVALID_BLOB"),
    Case("encode frames of two sizes", "cloud", "encode", FRAMES_MEDIA_TYPE,
         pack_frames({"frame0": FRAMES[0], "frame1": SMALL}), expect="FRAME_SIZE_MISMATCH"),
    Case("encode binary int8", "cloud", "encode", FRAMES_MEDIA_TYPE, PAIR_CONTAINER, {"wire_dtype": "int8"}),
    Case("encode wire_dtype int4", "cloud", "encode", FRAMES_MEDIA_TYPE, PAIR_CONTAINER, {"wire_dtype": "int4"},
         expect="INVALID_PARAMETER"),
    Case("encode a PNG body", "cloud", "encode", "image/png", encode_png(FRAMES[0]),
         expect="UNSUPPORTED_MEDIA_TYPE", media_type="image/png"),
    Case("interpolate binary", "edge", "interpolate", BLOB_MEDIA_TYPE, PAIR_BLOB, {"seed": 4}),
    Case("interpolate binary heun 3 steps", "edge", "interpolate", BLOB_MEDIA_TYPE, PAIR_BLOB,
         {"seed": "4", "num_steps": "3", "method": "heun"}),
    Case("interpolate json", "edge", "interpolate", JSON,
         {"enc_out": b64encode(PAIR_BLOB), "seed": 4, "sampling_config": {"num_steps": 2, "method": "euler"}}),
    Case("interpolate num_steps 0", "edge", "interpolate", BLOB_MEDIA_TYPE, PAIR_BLOB, {"num_steps": 0},
         expect="INVALID_PARAMETER"),
    Case("interpolate seed not a number", "edge", "interpolate", BLOB_MEDIA_TYPE, PAIR_BLOB, {"seed": "x"},
         expect="INVALID_PARAMETER"),
    Case("interpolate difference out of range", "edge", "interpolate", BLOB_MEDIA_TYPE, PAIR_BLOB,
         {"difference": 3}, expect="INVALID_PARAMETER"),
    Case("interpolate vae_scaler inf", "edge", "interpolate", BLOB_MEDIA_TYPE, PAIR_BLOB, {"vae_scaler": "inf"},
         expect="INVALID_PARAMETER"),
    Case("interpolate json seed not a number", "edge", "interpolate", JSON,
         {"enc_out": b64encode(PAIR_BLOB), "seed": "abc"}, expect="INVALID_REQUEST"),
    Case("interpolate json ph/pw differ", "edge", "interpolate", JSON,
         {"enc_out": b64encode(PAIR_BLOB), "metadata": {"ph": 5, "pw": 6}}, expect="SHAPE_MISMATCH"),
    Case("interpolate one frame's blob", "edge", "interpolate", BLOB_MEDIA_TYPE, FRAME_BLOBS[0],
         expect="SHAPE_MISMATCH"),
    Case("interpolate another model's blob", "edge", "interpolate", BLOB_MEDIA_TYPE,
         pack_encoding(encode_frames(_encoder(48), FRAMES), 0.9), expect="MODEL_MISMATCH"),
    Case("interpolate not a blob", "edge", "interpolate", BLOB_MEDIA_TYPE, b"\x00" * 64, expect="INVALID_BLOB"),
    Case("session frame", "edge", "session_frame", BLOB_MEDIA_TYPE, FRAME_BLOBS[1],
         {"difference": DIFFERENCE, "seed": 6}, index=1),
    Case("session frame interpolate 'false'", "edge", "session_frame", BLOB_MEDIA_TYPE, FRAME_BLOBS[1],
         {"difference": DIFFERENCE, "seed": 6, "interpolate": "false"}, expect="stored", index=1),
    Case("session frame interpolate false (JSON)", "edge", "session_frame", JSON,
         {"enc_out": b64encode(FRAME_BLOBS[1]), "difference": DIFFERENCE, "interpolate": False}, expect="stored",
         index=1),
    Case("session frame json", "edge", "session_frame", JSON,
         {"enc_out": b64encode(FRAME_BLOBS[1]), "difference": DIFFERENCE, "seed": 6}, index=1),
    Case("session frame without difference", "edge", "session_frame", BLOB_MEDIA_TYPE, FRAME_BLOBS[1],
         {"seed": 6}, expect="INVALID_PARAMETER", index=1),
    Case("session frame index -1", "edge", "session_frame", BLOB_MEDIA_TYPE, FRAME_BLOBS[1], {}, index=-1,
         expect="INVALID_PARAMETER"),
    Case("session frame with a pair's blob", "edge", "session_frame", BLOB_MEDIA_TYPE, PAIR_BLOB,
         {"difference": DIFFERENCE}, expect="SHAPE_MISMATCH", index=1),
]


@dataclass
class Answer:
    """What came back, transport aside: the error code and status, or the frame / the blob / 'stored'."""

    code: str | None
    status: int
    result: Any = None


def _session(case: Case, transport: str) -> str:
    """An id for the case (ids are 1-128 of A-Z a-z 0-9 . _ : -)."""
    return re.sub(r"[^A-Za-z0-9._:-]", "_", f"{case.name}-{transport}")[:100]


def _http_answer(response) -> Answer:
    kind = response.headers.get("content-type", "")
    if response.status_code >= 400:
        return Answer(response.json()["error"]["code"], response.status_code)
    if kind == FRAMES_MEDIA_TYPE:
        return Answer(None, 200, unpack_frames(response.content, ("frame",))[0]["frame"])
    if kind == BLOB_MEDIA_TYPE:
        return Answer(None, 200, response.content)
    data = response.json()["data"]
    if "stored" in data:
        return Answer(None, 200, "stored")
    if "enc_out" in data:
        return Answer(None, 200, b64decode_field(data["enc_out"], "enc_out"))
    return Answer(None, 200, decode_image(b64decode_field(data["generated_frame"], "generated_frame")))


def send_http(client, case: Case) -> Answer:
    headers = {"X-Request-ID": _session(case, "id")}  # one id per request: ids are idempotency keys
    if case.op == "session_frame":
        session = _session(case, "http")
        stored = client.post(f"/api/v1/sessions/{session}/frames/0", content=FRAME_BLOBS[0],
                             headers={"Content-Type": BLOB_MEDIA_TYPE})
        assert stored.status_code == 200, stored.text
        path = f"/api/v1/sessions/{session}/frames/{case.index}"
    else:
        path = ROUTES[case.op]
    if case.content_type == JSON:
        return _http_answer(client.post(path, json=case.body, params=case.options, headers=headers))
    return _http_answer(client.post(path, content=case.body, params=case.options,
                                    headers={**headers, "Content-Type": case.content_type}))


def _ws_answer(message: dict) -> Answer:
    if message.get("bytes") is not None:
        header, payload = unpack_binary(message["bytes"])
    else:
        header, payload = json.loads(message["text"]), b""
    if header["type"] == "error":
        code = header["error"]["code"]
        return Answer(code, ErrorCode(code).status)
    if "stored" in header["metadata"] and not payload and "generated_frame" not in header.get("payload", {}):
        return Answer(None, 200, "stored")
    if message.get("bytes") is not None:
        if header["type"].startswith("encode"):
            return Answer(None, 200, payload)
        return Answer(None, 200, unpack_frames(payload, ("frame",))[0]["frame"])
    fields = header["payload"]
    if "enc_out" in fields:
        return Answer(None, 200, b64decode_field(fields["enc_out"], "enc_out"))
    return Answer(None, 200, decode_image(b64decode_field(fields["generated_frame"], "generated_frame")))


def send_ws(client, case: Case, settle: Callable[[], None] = lambda: None) -> Answer:
    """The case over WebSocket; `settle` runs once its answer is in, before the connection closes."""
    path = "/ws/encode" if case.server == "cloud" else "/ws/interpolate"
    with client.websocket_connect(path) as ws:
        ids: dict[str, Any] = {}
        if case.op == "session_frame":
            ids = {"session_id": _session(case, "ws"), "index": case.index}
            session = ids["session_id"]  # request ids are idempotency keys: one per request
            store = {"type": "session_frame", "request_id": f"store-{session}", "session_id": session, "index": 0}
            ws.send_bytes(pack_binary(store, FRAME_BLOBS[0]))
            assert _ws_answer(ws.receive()).result == "stored"
        if case.content_type == JSON:
            ws.send_text(json.dumps({"type": case.op, "request_id": _session(case, "id"), **ids, **case.options,
                                     "payload": case.body}))
        else:
            header = {"type": case.op, "request_id": _session(case, "id"), **ids, **case.options}
            if case.media_type:
                header["content_type"] = case.media_type
            ws.send_bytes(pack_binary(header, case.body))
        answer = _ws_answer(ws.receive())
        settle()
        return answer


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_http_and_websocket_give_the_same_answer(cloud, edge, case):
    client = cloud if case.server == "cloud" else edge
    over_http, over_ws = send_http(client, case), send_ws(client, case)
    expected_code = None if case.expect in ("ok", "stored") else case.expect
    assert (over_http.code, over_ws.code) == (expected_code, expected_code)
    assert over_http.status == over_ws.status
    if expected_code:
        assert over_http.status == ErrorCode(expected_code).status
    elif case.expect == "stored":
        assert over_http.result == over_ws.result == "stored"
    elif isinstance(over_http.result, bytes):  # the same blob: header and tensors (safetensors orders its
        assert read_blob_header(over_http.result) == read_blob_header(over_ws.result)  # header keys freely)
        a, b = unpack_encoding(over_http.result).encoding, unpack_encoding(over_ws.result).encoding
        for name in ("cond_dit", "cond_dec", "mean", "std"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    else:
        assert over_http.result.shape == (40, 70, 3)
        np.testing.assert_array_equal(over_http.result, over_ws.result)


def test_the_table_covers_both_servers_every_operation_and_both_outcomes():
    assert {c.op for c in CASES} == {"encode", "encode_frame", "interpolate", "session_frame"}
    assert sum(c.expect == "ok" for c in CASES) >= 8 and sum(c.expect not in ("ok", "stored") for c in CASES) >= 15
    assert len({c.expect for c in CASES if c.expect not in ("ok", "stored")}) >= 8  # distinct codes

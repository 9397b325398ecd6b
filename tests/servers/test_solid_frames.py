"""A pair of identical solid frames: the cosine similarity of a frame with itself rounds to 1 + 1 ulp for
some grey levels in float32. Every level goes through the cloud and the edge (HTTP and WebSocket, pairs
and sessions) and gives the frame `--local` gives: the raw value is used as is on every path."""

from __future__ import annotations

import json

import numpy as np

from edensplit.model.checkpoint import load_model
from edensplit.model.pipeline import LocalPipeline
from edensplit.model.stages import frame_difference
from edensplit.wire.blob import BLOB_MEDIA_TYPE
from edensplit.wire.frames import FRAMES_MEDIA_TYPE, pack_frames, unpack_frames
from edensplit.wire.messages import pack_binary, unpack_binary
from tests.conftest import TINY_CONFIG

SIZE = (144, 176)


def solid(level: int) -> np.ndarray:
    return np.full((*SIZE, 3), level, np.uint8)


def test_some_grey_levels_round_above_one():
    over = [g for g in range(256) if float(frame_difference(solid(g), solid(g))[0]) > 1.0]
    assert len(over) >= 10, over  # the case this guards: 38 of 256 levels here


def test_every_grey_level_through_cloud_and_edge_equals_local(cloud, edge):
    local = LocalPipeline(load_model(None, TINY_CONFIG, allow_random=True, seed=3))
    for g in range(256):
        pair = pack_frames({"frame0": solid(g), "frame1": solid(g)})
        blob = cloud.post("/api/v1/encode", content=pair, headers={"Content-Type": FRAMES_MEDIA_TYPE})
        assert blob.status_code == 200, (g, blob.text)
        r = edge.post("/api/v1/interpolate?seed=1", content=blob.content, headers={"Content-Type": BLOB_MEDIA_TYPE})
        assert r.status_code == 200, (g, r.text)
        if g % 51 == 0 or float(frame_difference(solid(g), solid(g))[0]) > 1.0:
            frame = unpack_frames(r.content, ("frame",))[0]["frame"]
            np.testing.assert_array_equal(frame, local.interpolate(solid(g), solid(g), seed=1))


def test_solid_frames_in_a_websocket_session(cloud, edge):
    g = next(g for g in range(256) if float(frame_difference(solid(g), solid(g))[0]) > 1.0)
    difference = float(frame_difference(solid(g), solid(g))[0])
    blobs = []
    with cloud.websocket_connect("/ws/encode") as ws:
        for i in range(2):
            frame = pack_frames({"frame": solid(g)})
            ws.send_bytes(pack_binary({"type": "encode_frame", "request_id": f"solid-f{i}"}, frame))
            blobs.append(unpack_binary(ws.receive()["bytes"])[1])
    with edge.websocket_connect("/ws/interpolate") as ws:
        for i, blob in enumerate(blobs):
            ws.send_bytes(pack_binary({"type": "session_frame", "request_id": f"solid-s{i}", "session_id": "solid",
                                       "index": i, "difference": difference, "seed": 1}, blob))
            message = ws.receive()
            header = unpack_binary(message["bytes"])[0] if message.get("bytes") else json.loads(message["text"])
            assert header["status"] == "success", header

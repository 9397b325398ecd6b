"""POST /api/v1/interpolate: the frame equals the local stage; malformed blobs and options are refused."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from edensplit.client import RetryPolicy
from edensplit.model.checkpoint import load_model
from edensplit.model.config import EdenConfig, ModelArgs
from edensplit.model.pipeline import LocalPipeline
from edensplit.model.stages import encode_frames, frame_difference
from edensplit.wire.blob import BLOB_MEDIA_TYPE, pack_encoding
from edensplit.wire.frames import FRAMES_MEDIA_TYPE, unpack_frames
from edensplit.wire.images import b64decode_field, b64encode, decode_image
from tests.conftest import TINY_CONFIG, make_frames, wait_until
from tests.servers.test_cloud import assert_error

FRAMES = make_frames(2, 40, 70)


@pytest.fixture(scope="module")
def reference():
    return LocalPipeline(load_model(None, TINY_CONFIG, allow_random=True, seed=3))


@pytest.fixture(scope="module")
def blob():
    cloud = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
    return pack_encoding(encode_frames(cloud, FRAMES), float(frame_difference(FRAMES[0], FRAMES[1])[0]))


def test_json_interpolate_equals_the_local_pipeline(edge, blob, reference):
    r = edge.post("/api/v1/interpolate", json={
        "enc_out": b64encode(blob), "seed": 9, "sampling_config": {"num_steps": 2, "method": "euler"},
        "metadata": {"ph": 4, "pw": 6, "request_id": "r1"}, "model_args": TINY_CONFIG.model_args.as_dict()})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    frame = decode_image(b64decode_field(data["generated_frame"], "generated_frame"))
    np.testing.assert_array_equal(frame, reference.interpolate(FRAMES[0], FRAMES[1], seed=9))
    assert data["metadata"]["seed"] == 9 and (data["metadata"]["height"], data["metadata"]["width"]) == (40, 70)


def test_binary_interpolate_answers_with_frames_or_png(edge, blob, reference):
    expected = reference.interpolate(FRAMES[0], FRAMES[1], seed=4)
    r = edge.post("/api/v1/interpolate?seed=4", content=blob, headers={"Content-Type": BLOB_MEDIA_TYPE})
    assert r.headers["content-type"] == FRAMES_MEDIA_TYPE
    np.testing.assert_array_equal(unpack_frames(r.content, ("frame",))[0]["frame"], expected)
    png = edge.post("/api/v1/interpolate?seed=4", content=blob,
                    headers={"Content-Type": BLOB_MEDIA_TYPE, "Accept": "image/png"})
    assert png.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(decode_image(png.content), expected)


def test_overrides_change_the_frame(edge, blob):
    def frame(**query) -> np.ndarray:
        r = edge.post("/api/v1/interpolate", params=query, content=blob, headers={"Content-Type": BLOB_MEDIA_TYPE})
        assert r.status_code == 200, r.text
        return unpack_frames(r.content, ("frame",))[0]["frame"]

    base = frame(seed=1)
    assert not np.array_equal(base, frame(seed=1, method="heun"))
    assert not np.array_equal(base, frame(seed=1, num_steps=4))
    assert not np.array_equal(base, frame(seed=1, vae_shift=0.5))
    np.testing.assert_array_equal(base, frame(seed=1, num_steps=2, method="euler"))


def other_blob(hidden_dim: int = 32, frames: int = 2) -> bytes:
    config = EdenConfig(model_args=ModelArgs(hidden_dim=hidden_dim, num_heads=2, dit_depth=1, decoder_depth=1))
    model = load_model(None, config, stages={"encode"}, allow_random=True)
    return pack_encoding(encode_frames(model, make_frames(frames, 40, 70)), 0.9)


def bad(blob: bytes, **fields) -> dict:
    return {"enc_out": b64encode(blob), **fields}


def malformed(blob: bytes) -> list:
    return [
        ("bad base64", {"enc_out": "%%%"}, 400, "INVALID_BASE64", "enc_out"),
        ("not a blob", bad(b"\x00" * 64), 400, "INVALID_BLOB", "enc_out"),
        ("truncated blob", bad(blob[: len(blob) // 2]), 400, "INVALID_BLOB", "enc_out"),
        ("one frame, not a pair", bad(other_blob(frames=1)), 422, "SHAPE_MISMATCH", "1 frame(s), expected 2"),
        ("another model's blob", bad(other_blob(hidden_dim=48)), 422, "MODEL_MISMATCH", "hidden size 48"),
        ("model_args differ", bad(blob, model_args={"hidden_dim": 768}), 422, "MODEL_MISMATCH", "hidden_dim"),
        ("ph/pw differ", bad(blob, metadata={"ph": 5, "pw": 6}), 422, "SHAPE_MISMATCH", "ph/pw"),
        ("num_steps 0", bad(blob, sampling_config={"num_steps": 0}), 422, "INVALID_PARAMETER", "num_steps"),
        ("num_steps 1000", bad(blob, sampling_config={"num_steps": 1000}), 422, "INVALID_PARAMETER", "1 to 64"),
        ("unknown method", bad(blob, sampling_config={"method": "ddim"}), 422, "INVALID_PARAMETER", "'ddim'"),
        ("vae_scaler <= 0", bad(blob, vae_scaler=0), 422, "INVALID_PARAMETER", "vae_scaler must be > 0"),
        ("negative seed", bad(blob, seed=-1), 422, "INVALID_PARAMETER", "seed"),
        ("seed too large", bad(blob, seed=2**64), 422, "INVALID_PARAMETER", "seed"),
        ("difference out of range", bad(blob, difference=3.0), 422, "INVALID_PARAMETER", "difference"),
        ("seed not a number", bad(blob, seed="abc"), 422, "INVALID_REQUEST", "seed"),
    ]


def test_malformed_requests_get_specific_codes_and_the_server_keeps_serving(edge, blob):
    for name, body, status, code, phrase in malformed(blob):
        assert_error(edge.post("/api/v1/interpolate", json=body), status, code, phrase), name
        assert edge.post("/api/v1/interpolate", json=bad(blob)).status_code == 200, f"not serving after {name}"


def test_non_finite_overrides_are_refused(edge, blob):
    body = '{"enc_out": "' + b64encode(blob) + '", "vae_shift": NaN}'
    r = edge.post("/api/v1/interpolate", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] in ("INVALID_PARAMETER", "INVALID_REQUEST")
    r = edge.post("/api/v1/interpolate?vae_scaler=inf", content=blob, headers={"Content-Type": BLOB_MEDIA_TYPE})
    assert_error(r, 422, "INVALID_PARAMETER", "vae_scaler must be finite")
    r = edge.post("/api/v1/interpolate?seed=x", content=blob, headers={"Content-Type": BLOB_MEDIA_TYPE})
    assert_error(r, 422, "INVALID_PARAMETER", "seed='x'")


def test_blob_with_nan_is_refused(edge, blob):
    cloud = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
    enc = encode_frames(cloud, FRAMES)
    poisoned = type(enc)(enc.cond_dit.clone(), enc.cond_dec, enc.mean, enc.std, enc.geometry)
    poisoned.cond_dit[0, 0, 0] = torch.nan
    r = edge.post("/api/v1/interpolate", content=pack_encoding(poisoned, 0.9),
                  headers={"Content-Type": BLOB_MEDIA_TYPE})
    assert_error(r, 400, "INVALID_BLOB", "finite")


def test_edge_health_reports_its_stage(edge):
    health = edge.get("/health").json()
    assert health["stage"] == "interpolate" and health["random_weights"] is True


def session_blob(frame) -> bytes:
    cloud = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
    return pack_encoding(encode_frames(cloud, frame))


def test_http_session_frames_equal_the_pair_path(edge, reference):
    blobs = [session_blob(f) for f in FRAMES]
    headers = {"Content-Type": BLOB_MEDIA_TYPE}
    stored = edge.post("/api/v1/sessions/s1/frames/0", content=blobs[0], headers=headers)
    assert stored.json()["data"] == {"session_id": "s1", "stored": 0}
    diff = float(frame_difference(FRAMES[0], FRAMES[1])[0])
    r = edge.post("/api/v1/sessions/s1/frames/1", params={"difference": diff, "seed": 6}, content=blobs[1],
                  headers=headers)
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(unpack_frames(r.content, ("frame",))[0]["frame"],
                                  reference.interpolate(FRAMES[0], FRAMES[1], seed=6))
    assert edge.delete("/api/v1/sessions/s1").json()["data"] == {"dropped": True}


def test_a_lost_session_is_reported_at_once_with_the_missing_frame(edge):
    blob = session_blob(FRAMES[1])
    r = edge.post("/api/v1/sessions/never-seen/frames/5", params={"difference": 0.9, "seed": 1}, content=blob,
                  headers={"Content-Type": BLOB_MEDIA_TYPE})
    assert_error(r, 409, "SESSION_NOT_FOUND", "does not hold frame 4")
    assert r.json()["error"]["details"] == {"session_id": "never-seen", "missing_index": 4}
    r = edge.post("/api/v1/sessions/s2/frames/1", content=blob, headers={"Content-Type": BLOB_MEDIA_TYPE})
    assert_error(r, 422, "INVALID_PARAMETER", "needs the pair's raw 'difference'")
    r = edge.post("/api/v1/sessions/s3/frames/0", content=session_blob(FRAMES[:2]),
                  headers={"Content-Type": BLOB_MEDIA_TYPE})
    assert_error(r, 422, "SHAPE_MISMATCH", "expected 1")


def test_flow_b_with_the_cloud_unreachable_is_an_upstream_error(reference):
    from fastapi.testclient import TestClient

    from edensplit.servers.edge.service import create_edge_app
    from edensplit.settings import ServerSettings
    from edensplit.wire.frames import pack_frames

    model = load_model(None, TINY_CONFIG, stages={"interpolate"}, allow_random=True, seed=3)
    app = create_edge_app(ServerSettings(cloud_server_url="http://127.0.0.1:9"), model)
    app.state.cloud_client.transport.config.retry = RetryPolicy(retries=0)
    with TestClient(app) as edge:
        r = edge.post("/api/v1/interpolate_frames", content=pack_frames({"frame0": FRAMES[0], "frame1": FRAMES[1]}),
                      headers={"Content-Type": FRAMES_MEDIA_TYPE})
    assert_error(r, 502, "UPSTREAM_ERROR", "the cloud failed to encode: cannot reach the cloud server")


def test_openapi_documents_every_body_and_every_reference_resolves(cloud, edge):
    import json
    import re

    for client in (cloud, edge):
        spec = client.get("/openapi.json").json()
        text = json.dumps(spec)
        assert "#/$defs/" not in text
        refs = set(re.findall(r'"#/components/schemas/([^"]+)"', text))
        assert refs <= set(spec["components"]["schemas"])
    body = edge.get("/openapi.json").json()["paths"]["/api/v1/sessions/{session_id}/frames/{index}"]["post"]
    content = body["requestBody"]["content"]
    assert {"application/json", BLOB_MEDIA_TYPE, FRAMES_MEDIA_TYPE} <= set(content)
    assert "sampling_config" in content["application/json"]["schema"]["properties"]


def test_a_session_computes_each_frames_temporal_keys_values_once(reference):
    """Per-frame keys/values kept with the session frame: 5 frames, 4 pairs, 5 computations (pairs: 8), and
    the frames equal the pair-at-a-time ones bit for bit."""
    from fastapi.testclient import TestClient

    from edensplit.servers.edge.service import create_edge_app
    from edensplit.settings import ServerSettings

    model = load_model(None, TINY_CONFIG, stages={"interpolate"}, allow_random=True, seed=3)
    calls = []
    original = model.frame_context
    model.frame_context = lambda *a: calls.append(1) or original(*a)
    frames = make_frames(5, 40, 70, seed=9)
    blobs = [session_blob(f) for f in frames]
    headers = {"Content-Type": BLOB_MEDIA_TYPE}
    with TestClient(create_edge_app(ServerSettings(warmup=False), model)) as edge:
        assert edge.post("/api/v1/sessions/kv/frames/0", content=blobs[0], headers=headers).status_code == 200
        for k in range(1, 5):
            diff = float(frame_difference(frames[k - 1], frames[k])[0])
            r = edge.post(f"/api/v1/sessions/kv/frames/{k}", params={"difference": diff, "seed": k}, content=blobs[k],
                          headers=headers)
            assert r.status_code == 200, r.text
            np.testing.assert_array_equal(unpack_frames(r.content, ("frame",))[0]["frame"],
                                          reference.interpolate(frames[k - 1], frames[k], seed=k))
        assert len(calls) == 5
        cache = edge.app.state.sessions.contexts
        assert 0 < cache.size <= 2 * max(size for _, size in cache._held.values())  # the newest two frames only


def test_an_idle_session_goes_after_its_ttl_without_another_request():
    """The edge's housekeeping drops idle sessions (and their encodings and contexts) once a second: a client that
    vanished mid-video does not leave its frames held until someone else's request comes."""
    from fastapi.testclient import TestClient

    from edensplit.servers.edge.service import create_edge_app
    from edensplit.settings import ServerSettings

    model = load_model(None, TINY_CONFIG, stages={"interpolate"}, allow_random=True, seed=3)
    with TestClient(create_edge_app(ServerSettings(warmup=False, session_ttl_s=0.5), model)) as edge:
        r = edge.post("/api/v1/sessions/gone/frames/0", content=session_blob(FRAMES[0]),
                      headers={"Content-Type": BLOB_MEDIA_TYPE})
        assert r.status_code == 200, r.text
        sessions = edge.app.state.sessions
        assert len(sessions) == 1 and "edensplit_session_cache_sessions 1.0" in edge.get("/metrics").text
        wait_until(lambda: len(sessions) == 0, 5, "the idle session to go (its TTL, then the next second's chores)")
        assert "edensplit_session_cache_sessions 0.0" in edge.get("/metrics").text


def test_on_a_gpu_the_decode_step_starts_each_copy_and_the_model_thread_makes_contexts_from_it(
        edge, blob, reference, monkeypatch):
    """The edge's encodings go to its device while the request before computes: the decode step (thread pool) starts
    each copy (`transfers.to_device`), the model thread makes the frame's context from that copy. On this CPU a
    recording copy stands in for CUDA's (the tensors stay where they are); the frames are the same."""
    from edensplit.servers.edge import operations

    events: list[tuple[str, str]] = []

    class Staged:
        def __init__(self, encoding):
            self.encoding = encoding

        def use(self):
            events.append(("use", threading.current_thread().name))
            return self.encoding

    def to_device(encoding, device):
        events.append(("stage", threading.current_thread().name))
        return Staged(encoding)

    monkeypatch.setattr(operations, "to_device", to_device)
    r = edge.post("/api/v1/interpolate", params={"seed": 4}, content=blob, headers={"Content-Type": BLOB_MEDIA_TYPE})
    np.testing.assert_array_equal(unpack_frames(r.content, ("frame",))[0]["frame"],
                                  reference.interpolate(FRAMES[0], FRAMES[1], seed=4))
    assert [kind for kind, _ in events] == ["stage", "stage", "use", "use"]  # a pair: both frames' copies
    assert all(not name.startswith("eden-") for kind, name in events if kind == "stage")
    assert all(name.startswith("eden-") for kind, name in events if kind == "use")  # the model thread

    events.clear()
    blobs, headers = [session_blob(f) for f in FRAMES], {"Content-Type": BLOB_MEDIA_TYPE}
    edge.post("/api/v1/sessions/gpu/frames/0", content=blobs[0], headers=headers)
    diff = float(frame_difference(FRAMES[0], FRAMES[1])[0])
    r = edge.post("/api/v1/sessions/gpu/frames/1", params={"difference": diff, "seed": 6}, content=blobs[1],
                  headers=headers)
    np.testing.assert_array_equal(unpack_frames(r.content, ("frame",))[0]["frame"],
                                  reference.interpolate(FRAMES[0], FRAMES[1], seed=6))
    # a frame's copy is started as it arrives when its request interpolates, and its context is made from it; frame 0,
    # only stored, is not copied (its context is made from the encoding the session holds when the pair needs it)
    assert [kind for kind, _ in events] == ["stage", "use"]
    edge.delete("/api/v1/sessions/gpu")


def test_the_model_thread_hands_over_frames_that_the_encode_step_waits_for(edge, blob, reference, monkeypatch):
    """The edge's model thread answers with its frames on their way to the host (on a GPU, a copy it only queued, so
    it takes the next request while the GPU finishes); the encode step, on the thread pool, waits for them."""
    from edensplit.servers.edge.operations import GeneratedFrame

    threads: list[str] = []
    array = GeneratedFrame.array
    monkeypatch.setattr(GeneratedFrame, "array", lambda self: threads.append(threading.current_thread().name)
                        or array(self))
    r = edge.post("/api/v1/interpolate", params={"seed": 3}, content=blob, headers={"Content-Type": BLOB_MEDIA_TYPE})
    np.testing.assert_array_equal(unpack_frames(r.content, ("frame",))[0]["frame"],
                                  reference.interpolate(FRAMES[0], FRAMES[1], seed=3))
    assert len(threads) == 1 and not threads[0].startswith("eden-")  # not the model thread

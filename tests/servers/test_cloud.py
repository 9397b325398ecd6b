"""POST /api/v1/encode: every input format, and every malformed request a 4xx envelope with its code."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from edensplit.model.checkpoint import load_model
from edensplit.model.stages import encode_frames, frame_difference
from edensplit.wire.blob import BLOB_MEDIA_TYPE, unpack_encoding
from edensplit.wire.frames import FRAMES_MEDIA_TYPE, pack_frames
from edensplit.wire.images import b64decode_field, b64encode, encode_png
from tests.conftest import TINY_CONFIG, loaded, make_frames

FRAMES = make_frames(2, 40, 70)


def json_body(f0=FRAMES[0], f1=FRAMES[1], **extra) -> dict:
    return {"frame0": b64encode(encode_png(f0)), "frame1": b64encode(encode_png(f1)), **extra}


def assert_error(response, status: int, code: str, phrase: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "error" and body["data"] is None
    assert body["error"]["code"] == code
    assert phrase in body["error"]["message"]
    assert "Traceback" not in response.text


def test_json_encode_returns_the_users_envelope_and_the_encoders_output(cloud):
    r = cloud.post("/api/v1/encode", json=json_body(image_size=[40, 70], metadata={"fps": 30, "frame_id": 7}))
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "success" and body["error"] is None
    data = body["data"]
    meta = data["metadata"]
    assert (meta["ph"], meta["pw"]) == (4, 6) and meta["request_id"] == r.headers["x-request-id"]
    assert meta["processing_time"] > 0
    blob = b64decode_field(data["enc_out"], "enc_out")
    assert data["enc_out_size"] == len(blob)
    decoded = unpack_encoding(blob, frames=2)
    local = encode_frames(load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3), FRAMES)
    assert np.array_equal(decoded.encoding.cond_dit.numpy(), local.cond_dit.numpy())
    assert decoded.difference == float(frame_difference(FRAMES[0], FRAMES[1])[0]) == meta["difference"]


def test_binary_and_multipart_requests_give_the_same_blob_tensors(cloud):
    binary = cloud.post("/api/v1/encode", content=pack_frames({"frame0": FRAMES[0], "frame1": FRAMES[1]}),
                        headers={"Content-Type": FRAMES_MEDIA_TYPE})
    assert binary.status_code == 200 and binary.headers["content-type"] == BLOB_MEDIA_TYPE
    files = {"frame0": ("a.png", encode_png(FRAMES[0]), "image/png"),
             "frame1": ("b.png", encode_png(FRAMES[1]), "image/png")}
    multipart = cloud.post("/api/v1/encode", files=files, headers={"Accept": BLOB_MEDIA_TYPE})
    assert multipart.status_code == 200
    a, b = unpack_encoding(binary.content), unpack_encoding(multipart.content)
    assert np.array_equal(a.encoding.cond_dec.numpy(), b.encoding.cond_dec.numpy())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_wire_dtype_halves_the_blob(cloud, dtype):
    body = pack_frames({"frame0": FRAMES[0], "frame1": FRAMES[1]})
    headers = {"Content-Type": FRAMES_MEDIA_TYPE, "Accept-Encoding": "identity"}
    full = cloud.post("/api/v1/encode", content=body, headers=headers)
    small = cloud.post(f"/api/v1/encode?wire_dtype={dtype}", content=body, headers=headers)
    exact, cast = unpack_encoding(full.content), unpack_encoding(small.content)
    assert cast.wire_dtype == dtype and exact.wire_dtype == "float32"
    # The token tensors, the bulk of the blob, at 2 bytes instead of 4; the rest (header, stats) stays. Measured
    # here: 6,160 bytes saved for 3,072 token values; the headers differ by a few bytes (dtype names, offsets).
    tokens = exact.encoding.cond_dit.numel() + exact.encoding.cond_dec.numel()
    assert abs(len(full.content) - len(small.content) - 2 * tokens) <= 64, (len(full.content), len(small.content))
    # They are the float32 tokens rounded to the wire dtype, nothing else.
    torch_dtype = getattr(torch, dtype)
    for name in ("cond_dit", "cond_dec"):
        sent = getattr(cast.encoding, name)
        assert sent.dtype == torch_dtype
        assert torch.equal(sent, getattr(exact.encoding, name).to(torch_dtype))
    assert torch.equal(cast.encoding.mean, exact.encoding.mean) and cast.difference == exact.difference


def test_request_id_is_echoed(cloud):
    r = cloud.post("/api/v1/encode", json=json_body(), headers={"X-Request-ID": "job-42"})
    assert r.headers["x-request-id"] == "job-42" and r.json()["data"]["metadata"]["request_id"] == "job-42"


def jpeg(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG")
    return buf.getvalue()


def test_jpeg_frames_are_encoded_from_their_decoded_pixels(cloud):
    jpegs = [jpeg(FRAMES[0]), jpeg(FRAMES[1])]
    r = cloud.post("/api/v1/encode", json={"frame0": b64encode(jpegs[0]), "frame1": b64encode(jpegs[1])})
    assert r.status_code == 200, r.text
    remote = unpack_encoding(b64decode_field(r.json()["data"]["enc_out"], "enc_out"), frames=2)
    # The pixels a JPEG decoder gives (PIL, independently of the server), which are not the PNG's pixels.
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in jpegs])
    assert not np.array_equal(pixels, FRAMES)
    local = encode_frames(load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3), pixels)
    assert np.array_equal(remote.encoding.cond_dit.numpy(), local.cond_dit.numpy())
    assert np.array_equal(remote.encoding.cond_dec.numpy(), local.cond_dec.numpy())
    assert remote.difference == float(frame_difference(pixels[0], pixels[1])[0])


MALFORMED = [
    ("bad base64", {"frame0": "@@not base64@@", "frame1": b64encode(encode_png(FRAMES[1]))},
     400, "INVALID_BASE64", "frame0"),
    ("not an image", {"frame0": b64encode(b"hello world"), "frame1": b64encode(encode_png(FRAMES[1]))},
     400, "INVALID_IMAGE", "frame0"),
    ("different sizes", json_body(f1=make_frames(1, 48, 70)[0]), 400, "FRAME_SIZE_MISMATCH", "same size"),
    ("image_size disagrees", json_body(image_size=[41, 70]), 400, "FRAME_SIZE_MISMATCH", "image_size [41, 70]"),
    ("frame1 missing", {"frame0": b64encode(encode_png(FRAMES[0]))}, 422, "INVALID_REQUEST", "frame1"),
]


@pytest.mark.parametrize("name,body,status,code,phrase", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_json_requests(cloud, name, body, status, code, phrase):
    assert_error(cloud.post("/api/v1/encode", json=body), status, code, phrase)
    assert cloud.post("/api/v1/encode", json=json_body()).status_code == 200  # still serving


def test_malformed_transport_level_requests(cloud):
    assert_error(cloud.post("/api/v1/encode", content=b"{not json", headers={"Content-Type": "application/json"}),
                 422, "INVALID_REQUEST", "does not match the schema")
    assert_error(cloud.post("/api/v1/encode", content=b"x", headers={"Content-Type": "text/plain"}),
                 415, "UNSUPPORTED_MEDIA_TYPE", "text/plain")
    assert_error(cloud.post("/api/v1/encode", content=b"garbage", headers={"Content-Type": FRAMES_MEDIA_TYPE}),
                 400, "INVALID_BLOB", "frames container")
    assert_error(cloud.post("/api/v1/encode?wire_dtype=int4", json=json_body()),
                 422, "INVALID_PARAMETER", "wire_dtype 'int4'")
    assert_error(cloud.post("/api/v1/encode", json=json_body(), headers={"Accept": "text/html"}),
                 406, "NOT_ACCEPTABLE", "text/html")
    assert_error(cloud.post("/api/v1/encode", files={"frame0": ("a.png", b"x", "image/png")},
                            data={"metadata": json.dumps({})}), 422, "INVALID_REQUEST", "frame1")
    big = np.random.default_rng(0).integers(0, 255, (1400, 1400, 3), dtype=np.uint8)  # > 4 MiB limit raw
    assert_error(cloud.post("/api/v1/encode", content=pack_frames({"frame0": big, "frame1": big}),
                            headers={"Content-Type": FRAMES_MEDIA_TYPE}), 413, "PAYLOAD_TOO_LARGE", "over the limit")
    assert cloud.post("/api/v1/encode", json=json_body()).status_code == 200


def test_overload_is_refused_with_retry_after(cloud):
    rt = cloud.app.state.runtime
    saved, rt.inflight = rt.inflight, rt.max_inflight
    try:
        r = cloud.post("/api/v1/encode", json=json_body())
    finally:
        rt.inflight = saved
    assert_error(r, 503, "OVERLOADED", "requests in flight")
    assert r.headers["retry-after"] == "1"


def test_health_says_what_runs(cloud):
    health = cloud.get("/health").json()
    assert health["status"] == "ok" and health["model_loaded"] and health["stage"] == "encode"
    assert health["random_weights"] is True and re.fullmatch(r"[0-9a-f]{16}", health["weights_digest"])
    assert health["device"] == "cpu" and health["model_args"]["hidden_dim"] == 32
    assert cloud.get("/health/live").json() == {"status": "ok"}
    assert cloud.get("/health/ready").status_code == 200


def encode_metrics(client) -> dict[str, float]:
    """/metrics for the route /api/v1/encode: POSTs answered 200, body bytes in and out, latency observations."""
    wanted = {("edensplit_requests_total", (("client_name", "anonymous"), ("method", "POST"),
                                            ("route", "/api/v1/encode"), ("status", "200"))):
              "ok", ("edensplit_request_bytes_total", (("route", "/api/v1/encode"),)): "in",
              ("edensplit_response_bytes_total", (("route", "/api/v1/encode"),)): "out",
              ("edensplit_request_seconds_count", (("route", "/api/v1/encode"),)): "timed",
              ("edensplit_inflight", ()): "inflight"}
    found = dict.fromkeys(wanted.values(), 0.0)
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key in wanted:
                found[wanted[key]] = sample.value
    return found


def test_metrics_count_requests_and_bytes(cloud):
    before = encode_metrics(cloud)
    body = json.dumps(json_body()).encode()
    r = cloud.post("/api/v1/encode", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200
    after = encode_metrics(cloud)
    assert after["ok"] - before["ok"] == 1 and after["timed"] - before["timed"] == 1
    assert after["in"] - before["in"] == len(body) and after["out"] - before["out"] == len(r.content)
    assert after["inflight"] == 0


def test_metrics_count_compressed_requests_under_their_route_and_wire_bytes(cloud):
    from edensplit.wire.compression import compress

    before = encode_metrics(cloud)
    body = compress(pack_frames({"frame0": FRAMES[0], "frame1": FRAMES[1]}), "zstd")
    r = cloud.post("/api/v1/encode", content=body, headers={"Content-Type": FRAMES_MEDIA_TYPE, "Content-Encoding":
                                                               "zstd", "Accept-Encoding": "identity"})
    assert r.status_code == 200
    after = encode_metrics(cloud)
    assert after["ok"] - before["ok"] == 1, "a compressed request is not counted under its route"
    assert after["in"] - before["in"] == len(body) and after["out"] - before["out"] == len(r.content)


def test_openapi_documents_both_content_types(cloud):
    spec = cloud.get("/openapi.json").json()
    content = spec["paths"]["/api/v1/encode"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data", FRAMES_MEDIA_TYPE} <= set(content)


def test_unknown_route_gets_the_envelope(cloud):
    assert_error(cloud.get("/api/v1/nothing"), 404, "NOT_FOUND", "/api/v1/nothing")


def test_compressed_bodies_are_read_and_binary_answers_compressed_on_request(cloud):
    import zstandard

    from edensplit.wire.compression import compress

    body = pack_frames({"frame0": FRAMES[0], "frame1": FRAMES[1]})
    plain = cloud.post("/api/v1/encode", content=body, headers={"Content-Type": FRAMES_MEDIA_TYPE,
                                                                 "Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    for codec in ("gzip", "deflate", "zstd", "lz4"):
        with cloud.stream("POST", "/api/v1/encode", content=compress(body, codec),
                          headers={"Content-Type": FRAMES_MEDIA_TYPE, "Content-Encoding": codec,
                                   "Accept-Encoding": "zstd"}) as r:
            raw = b"".join(r.iter_raw())  # the bytes as sent (whether the test client could undo zstd or not)
        assert r.status_code == 200, (codec, raw[:200])
        assert r.headers["content-encoding"] == "zstd"
        assert int(r.headers["content-length"]) == len(raw) < len(plain.content)  # what went over the wire
        answer = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
        same = unpack_encoding(answer).encoding.cond_dit == unpack_encoding(plain.content).encoding.cond_dit
        assert bool(same.all())  # the tensors are the ones an uncompressed answer holds
    gzip_only = cloud.post("/api/v1/encode", content=body, headers={"Content-Type": FRAMES_MEDIA_TYPE,
                                                                     "Accept-Encoding": "gzip, deflate"})
    assert "content-encoding" not in gzip_only.headers  # too slow on tensors: not used for answers


def test_bad_compressed_bodies(cloud):
    headers = {"Content-Type": FRAMES_MEDIA_TYPE}
    assert_error(cloud.post("/api/v1/encode", content=b"not zstd", headers={**headers, "Content-Encoding": "zstd"}),
                 400, "INVALID_BLOB", "zstd")
    assert_error(cloud.post("/api/v1/encode", content=b"x", headers={**headers, "Content-Encoding": "br"}),
                 415, "UNSUPPORTED_MEDIA_TYPE", "'br'")
    from edensplit.wire.compression import compress

    bomb = compress(b"\0" * (6 * 2**20), "zstd")  # 6 MiB of zeros, over the 4 MiB limit once decompressed
    assert_error(cloud.post("/api/v1/encode", content=bomb, headers={**headers, "Content-Encoding": "zstd"}),
                 413, "PAYLOAD_TOO_LARGE", "zstd")
    assert cloud.post("/api/v1/encode", json=json_body()).status_code == 200


def test_a_server_whose_model_failed_to_load_answers_not_ready(tmp_path):
    from fastapi.testclient import TestClient

    from edensplit.servers.cloud.service import create_cloud_app
    from edensplit.settings import ServerSettings

    bad = tmp_path / "bad.pt"
    bad.write_text("x")
    with TestClient(create_cloud_app(ServerSettings(model_path=bad))) as client:
        health = loaded(client).get("/health").json()
        assert health["status"] == "error" and not health["model_loaded"]
        assert "not a PyTorch checkpoint" not in client.get("/health").text and str(bad) not in health["error"]
        assert client.get("/health/ready").status_code == 503
        assert_error(client.post("/api/v1/encode", json=json_body()), 503, "NOT_READY", "not loaded")

"""The server and the client against a hostile caller: ids that cannot forge a log line or fill the replay cache,
/health that shows no path or error text, a deadline capped by the server's, browsers kept out (Host and Origin),
compressed bodies that pay for what they inflate to and cannot inflate without bound, and a key never sent in clear
text off this machine."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
import zstandard
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse

from edensplit.client.http import HttpTransport
from edensplit.client.ws import WsTransport
from edensplit.errors import EdenError
from edensplit.model.checkpoint import load_model
from edensplit.model.stages import encode_frames, frame_difference
from edensplit.servers.cloud.service import create_cloud_app
from edensplit.servers.edge.service import create_edge_app
from edensplit.settings import ServerSettings
from edensplit.video.images import write_png
from edensplit.wire.blob import BLOB_MEDIA_TYPE, pack_encoding
from edensplit.wire.compression import decompress
from edensplit.wire.messages import pack_binary
from tests.conftest import TINY_CONFIG, loaded, make_frames, run_cli_here

FRAMES = make_frames(3, 40, 70)
ENCODER = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
PAIR = pack_encoding(encode_frames(ENCODER, FRAMES[:2]), float(frame_difference(FRAMES[0], FRAMES[1])[0]))
ONE = pack_encoding(encode_frames(ENCODER, FRAMES[0]))
BLOB = {"Content-Type": BLOB_MEDIA_TYPE}


def edge_app(**settings):
    model = load_model(None, TINY_CONFIG, stages={"interpolate"}, allow_random=True, seed=3)
    return TestClient(create_edge_app(ServerSettings(warmup=False, **settings), model))


# -- ids ----------------------------------------------------------------------------------------------------------

def test_request_ids_are_short_and_plain_over_http_and_websocket(caplog):
    with edge_app() as edge, caplog.at_level(logging.INFO, logger="edensplit.access"):
        for bad in ("x" * 129, "has space", "new\nline", "semi;colon"):
            r = edge.post("/api/v1/interpolate", content=PAIR, headers={**BLOB, "X-Request-ID": bad})
            assert r.status_code == 422 and r.json()["error"]["code"] == "INVALID_PARAMETER", bad
            assert "X-Request-ID" in r.json()["error"]["message"]
        assert edge.post("/api/v1/interpolate", content=PAIR, headers={**BLOB, "X-Request-ID": "a-Z_0.9:ok"}
                         ).status_code == 200
        with edge.websocket_connect("/ws/interpolate") as ws:
            ws.send_bytes(pack_binary({"type": "interpolate", "request_id": "forged\nFAKE 200 line"}, PAIR))
            answer = ws.receive_json()
        assert answer["error"]["code"] == "INVALID_PARAMETER" and "request_id" in answer["error"]["message"]
    lines = [r.getMessage() for r in caplog.records if r.name == "edensplit.access"]
    assert not any("\n" in line or line.startswith("FAKE") for line in lines), lines


def test_session_ids_are_short_and_plain():
    with edge_app() as edge:
        for bad in ("s" * 129, "a%20b"):
            r = edge.post(f"/api/v1/sessions/{bad}/frames/0", content=ONE, headers=BLOB)
            assert r.status_code == 422 and "session_id" in r.json()["error"]["message"], bad


def test_the_replay_cache_counts_its_keys():
    """Store-only session frames with the longest ids allowed: the cache holds what its bound says, ids included
    (an id's bytes and each entry's own cost count, not only the answers')."""
    with edge_app(idempotency_cache_mb=10_000 / 2**20) as edge:
        cache = edge.app.state.pipeline.idempotency
        for i in range(60):
            rid = f"{i:03d}" + "x" * 125
            r = edge.post(f"/api/v1/sessions/s{i}/frames/0", content=ONE, headers={**BLOB, "X-Request-ID": rid})
            assert r.status_code == 200
            assert cache.size <= 10_000
        assert 0 < len(cache) <= 10_000 // (128 + 512)
        assert cache.size == sum(e.size for e in cache._done.values())


# -- health ----------------------------------------------------------------------------------------------------------

def test_health_shows_a_digest_the_cloud_and_the_edge_agree_on_and_no_path(tmp_path, caplog):
    cloud_model = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
    with TestClient(create_cloud_app(ServerSettings(warmup=False), cloud_model)) as cloud, edge_app() as edge:
        a, b = cloud.get("/health").json(), edge.get("/health").json()
    assert a["weights_digest"] == b["weights_digest"] and len(a["weights_digest"]) == 16
    other = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=4)
    assert other.weights_digest != a["weights_digest"]  # another seed: another model, another digest
    bad = tmp_path / "secret-path" / "eden.pt"
    bad.parent.mkdir()
    bad.write_text("not a checkpoint")
    with caplog.at_level(logging.ERROR), TestClient(create_cloud_app(ServerSettings(model_path=bad))) as client:
        text = loaded(client).get("/health").text
        refused = client.post("/api/v1/encode", json={}).text
    assert "secret-path" not in text and "not a PyTorch checkpoint" not in text and "secret-path" not in refused
    assert any("not a PyTorch checkpoint" in r.getMessage() for r in caplog.records)  # the log says why


def test_health_names_the_weights_by_repository_revision_and_digest_and_never_by_path(hub_cache, tiny_dir, tmp_path):
    """Weights by name (hf://, loaded from the cache at start-up), the tiny EDEN and a local file: /health says which
    weights run and their digest, the cloud and the edge alike, and shows neither the cache nor a file's path."""
    import io

    import torch

    from edensplit.model.sources import TINY, TINY_NAME
    from tests.hub import COMMIT, cache_file

    buffer = io.BytesIO()
    torch.save({"eden": load_model(None, TINY_CONFIG, allow_random=True, seed=8).state_dict()}, buffer)
    cache_file(hub_cache, "someone/eden-test", "eden.pt", buffer.getvalue())
    local = tmp_path / "secret-path" / "eden.pt"
    local.parent.mkdir()
    local.write_bytes(buffer.getvalue())
    config = tiny_dir / "eden_tiny.yaml"
    uri = "hf://someone/eden-test/eden.pt"
    seen = {}
    for name, model_path in (("hub", uri), ("tiny", TINY), ("file", str(local))):
        settings = ServerSettings(model_path=model_path, eden_config=config, warmup=False)
        with TestClient(create_cloud_app(settings)) as cloud, TestClient(create_edge_app(settings)) as edge:
            text = loaded(cloud).get("/health").text + loaded(edge).get("/health").text
            a, b = cloud.get("/health").json(), edge.get("/health").json()
        assert str(hub_cache) not in text and str(tmp_path) not in text
        assert a["ready"] and {k: a[k] for k in a if k.startswith("weights")} == \
            {k: b[k] for k in b if k.startswith("weights")}
        seen[name] = a
    assert (seen["hub"]["weights"], seen["hub"]["weights_repository"], seen["hub"]["weights_revision"]) == \
        (uri, "someone/eden-test", COMMIT)
    assert seen["hub"]["weights_digest"] == seen["file"]["weights_digest"]  # the same bytes, by name or by path
    assert seen["tiny"]["weights"] == TINY_NAME and seen["tiny"]["weights_repository"] is None
    assert seen["file"]["weights"] == "local checkpoint" and seen["tiny"]["weights_digest"] != seen["file"][
        "weights_digest"]


def test_a_request_timeout_is_capped_by_the_servers():
    with edge_app(request_timeout_s=0.001) as edge:
        r = edge.post("/api/v1/interpolate", content=PAIR, headers={**BLOB, "X-Request-Timeout": "86400"})
    assert r.status_code == 504 and r.json()["error"]["code"] == "DEADLINE_EXCEEDED"


# -- browsers ----------------------------------------------------------------------------------------------------------

def test_a_keyless_server_answers_its_address_and_the_names_it_is_told():
    with edge_app(allowed_hosts="edge.lan") as edge:
        for host, status in (("127.0.0.1:8001", 200), ("[::1]:8001", 200), ("localhost", 200), ("10.0.0.7", 200),
                             ("edge.lan:8001", 200), ("attacker.example", 400), ("testserver", 400)):
            r = edge.get("/health/live", headers={"Host": host})
            assert r.status_code == status, host
            if status == 400:
                assert r.json()["error"]["code"] == "INVALID_HOST"
    with edge_app(edensplit_api_key="k-1") as keyed:  # a server with a key answers any name
        assert keyed.get("/health/live", headers={"Host": "edge.example"}).status_code == 200


def test_a_web_pages_websocket_is_refused_unless_its_origin_is_allowed():
    with edge_app(allowed_origins="https://app.example") as edge:
        with pytest.raises(WebSocketDenialResponse) as refused, \
                edge.websocket_connect("/ws/interpolate", headers={"Origin": "http://evil.example"}):
            pass
        assert refused.value.status_code == 403 and refused.value.json()["error"]["code"] == "FORBIDDEN_ORIGIN"
        with edge.websocket_connect("/ws/interpolate", headers={"Origin": "https://app.example"}) as ws:
            ws.send_json({"type": "ping", "request_id": "p"})
            assert ws.receive_json()["type"] == "pong"
        with edge.websocket_connect("/ws/interpolate") as ws:  # not a browser: no Origin
            ws.send_json({"type": "ping", "request_id": "q"})
            assert ws.receive_json()["type"] == "pong"


# -- compressed bodies -------------------------------------------------------------------------------------------

def test_a_few_kilobytes_cannot_inflate_past_the_ratio():
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (64 * 2**20))
    assert len(bomb) < 10_000
    with edge_app(max_request_mb=512) as edge:
        started = time.monotonic()
        r = edge.post("/api/v1/interpolate", content=bomb, headers={**BLOB, "Content-Encoding": "zstd"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
        assert "times its" in r.json()["error"]["message"]
        assert time.monotonic() - started < 2.0


def test_a_compressed_body_pays_for_what_it_inflates_to_as_it_does():
    from edensplit.wire.compression import RATIO_FLOOR

    paid: list[int] = []
    data = np.random.default_rng(0).integers(0, 4, 20 * 2**20, dtype=np.uint8).tobytes()  # compresses ~4:1
    out = decompress(zstandard.ZstdCompressor().compress(data), "zstd", 64 * 2**20, reserve=paid.append,
                     max_ratio=200)
    assert out == data and sum(paid) == len(data) and max(paid) <= 8 * 2**20 and len(paid) >= 3
    assert decompress(zstandard.ZstdCompressor().compress(b"\0" * RATIO_FLOOR), "zstd", 2**30, max_ratio=2) \
        == b"\0" * RATIO_FLOOR  # under the floor, any ratio


def test_a_compressed_request_in_flight_holds_what_it_inflated_to_not_the_whole_budget():
    """While a zstd request waits in the model, the byte budget holds its inflated body (a few hundred KB), not
    MAX_REQUEST_MB reserved up front: two such requests no longer take all of BODY_MEMORY_MB."""
    with edge_app(max_request_mb=64, body_memory_mb=100) as edge:
        model, budget = edge.app.state.runtime.model, edge.app.state.pipeline.budget
        inside, go = threading.Event(), threading.Event()
        original = model.velocity

        def gated(*args, **kwargs):
            inside.set()
            go.wait(30)
            return original(*args, **kwargs)

        model.velocity = gated
        answers = []
        request = threading.Thread(target=lambda: answers.append(edge.post(
            "/api/v1/interpolate", content=zstandard.ZstdCompressor().compress(PAIR),
            headers={**BLOB, "Content-Encoding": "zstd"})))
        request.start()
        try:
            assert inside.wait(30)
            held = budget.used
        finally:
            go.set()
            request.join(30)
            model.velocity = original
    assert answers[0].status_code == 200
    assert len(PAIR) <= held <= 2 * len(PAIR), held


# -- the key in clear text ---------------------------------------------------------------------------------------------

def test_the_client_sends_no_key_in_clear_text_off_this_machine(tmp_path):
    for url in ("http://192.0.2.1:8000", "http://edge.example"):
        with pytest.raises(EdenError) as err:
            HttpTransport(url, api_key="k-1")
        assert err.value.code == "INVALID_PARAMETER" and "clear text" in err.value.message
        with pytest.raises(EdenError):
            WsTransport(url, api_key="k-1")
    HttpTransport("http://192.0.2.1:8000", api_key="k-1", allow_insecure_key=True)  # said so
    HttpTransport("https://edge.example", api_key="k-1")
    HttpTransport("http://127.0.0.1:8000", api_key="k-1")
    HttpTransport("http://192.0.2.1:8000")  # no key: nothing to leak
    pair = [str(write_png(tmp_path / f"{k}.png", FRAMES[k])) for k in (0, 1)]
    r = run_cli_here(["interpolate", "--frame0", pair[0], "--frame1", pair[1], "--edge_url", "http://192.0.2.1:9",
                      "--cloud_url", "http://192.0.2.1:9", "--api_key", "k-1", "--output_dir", str(tmp_path)], {})
    assert r.returncode == 2 and "clear text" in r.stderr and "Traceback" not in r.stderr


def test_flow_b_sends_no_key_in_clear_text_off_this_machine():
    model = load_model(None, TINY_CONFIG, stages={"interpolate"}, allow_random=True, seed=3)
    settings = ServerSettings(edensplit_api_key="k-1", cloud_server_url="http://cloud.example:8000")
    with pytest.raises(EdenError, match="clear text"):
        create_edge_app(settings, model)
    create_edge_app(settings.model_copy(update={"edensplit_allow_insecure_key": True}), model)

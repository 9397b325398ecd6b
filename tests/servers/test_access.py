"""Access control: with EDENSPLIT_API_KEY set, every route but /health* needs `Authorization: Bearer <key>`,
on HTTP and on the WebSocket handshake; without it, 401 UNAUTHORIZED in the envelope. `edensplit cloud|edge`
bind loopback unless told otherwise."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse

from edensplit.cli import build_parser
from edensplit.model.checkpoint import load_model
from edensplit.net import is_loopback
from edensplit.servers.auth import bearer_matches
from edensplit.servers.cloud.service import create_cloud_app
from edensplit.servers.edge.service import create_edge_app
from edensplit.settings import ServerSettings
from edensplit.wire.frames import FRAMES_MEDIA_TYPE, pack_frames
from tests.conftest import TINY_CONFIG, make_frames

KEY = "s3cret-key"
GOOD = {"Authorization": f"Bearer {KEY}"}
BAD_HEADERS = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"},
               {"Authorization": f"Bearer {KEY}x"}, {"Authorization": "Bearer "}]


@pytest.fixture(scope="module")
def apps():
    settings = ServerSettings(eden_random_weights=True, edensplit_api_key=KEY, cloud_server_url="http://127.0.0.1:9")
    cloud = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
    edge = load_model(None, TINY_CONFIG, stages={"interpolate"}, allow_random=True, seed=3)
    with TestClient(create_cloud_app(settings, cloud)) as c, TestClient(create_edge_app(settings, edge)) as e:
        yield c, e


def protected_routes(client: TestClient) -> list[tuple[str, str]]:
    """(method, path) of every HTTP route the app documents, /health* aside, path parameters filled in, and
    the documentation pages themselves."""
    routes = [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc")]
    for path, operations in client.app.openapi()["paths"].items():
        if not path.startswith("/health"):
            filled = path.replace("{session_id}", "s").replace("{index}", "1")
            routes += [(method.upper(), filled) for method in operations]
    return routes


def test_every_route_but_health_refuses_a_request_without_the_key(apps):
    for client in apps:
        routes = protected_routes(client)
        assert ("GET", "/metrics") in routes and any(p.startswith("/api/v1/") for _, p in routes)
        for method, path in routes:
            for headers in BAD_HEADERS:
                r = client.request(method, path, headers=headers, content=b"{}")
                assert r.status_code == 401, (method, path, headers, r.status_code)
                assert r.json()["error"]["code"] == "UNAUTHORIZED" and r.headers["www-authenticate"] == "Bearer"
            r = client.request(method, path, headers=GOOD, content=b"{}")
            assert r.status_code != 401, (method, path)
        for path in ("/health", "/health/live", "/health/ready"):
            assert client.get(path).status_code == 200


def test_the_key_unlocks_a_request(apps):
    cloud, _ = apps
    frames = make_frames(2, 40, 70)
    body = pack_frames({"frame0": frames[0], "frame1": frames[1]})
    assert cloud.post("/api/v1/encode", content=body, headers={"Content-Type": FRAMES_MEDIA_TYPE}).status_code == 401
    r = cloud.post("/api/v1/encode", content=body, headers={"Content-Type": FRAMES_MEDIA_TYPE, **GOOD})
    assert r.status_code == 200 and r.content[:8] != b"{"


def test_websockets_need_the_key_on_the_handshake(apps):
    for client, path in zip(apps, ("/ws/encode", "/ws/interpolate"), strict=True):
        for headers in BAD_HEADERS:
            with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect(path, headers=headers):
                pass
            assert denied.value.status_code == 401 and denied.value.json()["error"]["code"] == "UNAUTHORIZED"
        with client.websocket_connect(path, headers=GOOD) as ws:
            ws.send_json({"type": "ping", "request_id": "p"})
            assert ws.receive_json() == {"type": "pong", "request_id": "p"}


def test_bearer_comparison():
    assert bearer_matches(f"Bearer {KEY}", KEY) and bearer_matches(f"bearer  {KEY} ", KEY)
    assert not any(bearer_matches(h.get("Authorization"), KEY) for h in BAD_HEADERS)


def test_servers_bind_loopback_unless_told():
    parser = build_parser()
    for stage in ("cloud", "edge"):
        assert parser.parse_args([stage]).host == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.3.2.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")

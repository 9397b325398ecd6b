"""Access from the client's side: the bearer key (EDENSPLIT_API_KEY / --api_key) on every HTTP request and on the
WebSocket handshake, and TLS verified against a CA bundle (EDENSPLIT_CA_CERT / --ca_cert): against a real
uvicorn server with HTTPS and a key on 127.0.0.1 (test CA in tests/fixtures/tls), and through the CLI."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from edensplit.client.http import AsyncHttpTransport, HttpTransport
from edensplit.client.policy import Client
from edensplit.client.retry import RetryPolicy
from edensplit.client.services import Cloud, Edge
from edensplit.client.transport import ServerError
from edensplit.client.ws import WsTransport
from edensplit.errors import EdenError, ErrorCode
from edensplit.model.checkpoint import load_model
from edensplit.servers.cloud.service import create_cloud_app
from edensplit.servers.edge.service import create_edge_app
from edensplit.servers.launch import free_port
from edensplit.settings import ServerSettings
from tests.client.test_retries import CALL, Peer
from tests.conftest import TINY_CONFIG, make_frames, run_cli, run_cli_here

TLS = Path(__file__).resolve().parents[1] / "fixtures" / "tls"
CA = TLS / "ca.pem"
KEY = "s3cret-key"
FRAMES = make_frames(2, 40, 70)
QUICK = RetryPolicy(retries=3, retry_for=5.0, backoff_s=0.05, max_backoff_s=0.2)


def test_http_sends_the_key_as_a_bearer_header_and_nothing_without_one():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "ok"})

    HttpTransport("http://127.0.0.1", api_key=KEY, transport=httpx.MockTransport(handler)).health()
    HttpTransport("http://127.0.0.1", transport=httpx.MockTransport(handler)).health()
    HttpTransport("http://127.0.0.1", api_key="", transport=httpx.MockTransport(handler)).health()

    async def run() -> None:
        transport = AsyncHttpTransport("http://127.0.0.1", api_key=KEY, transport=httpx.MockTransport(handler))
        await transport.health()
        await transport.aclose()

    asyncio.run(run())
    assert [r.headers.get("authorization") for r in seen] == [f"Bearer {KEY}", None, None, f"Bearer {KEY}"]


def test_ws_sends_the_key_in_the_handshake():
    peer = Peer()
    try:
        for key in (KEY, None):
            transport = WsTransport(peer.url, api_key=key, close_timeout=0.5)
            Client(transport).send(CALL)
            transport.close()
    finally:
        peer.close()
    assert [h.get("Authorization") for h in peer.handshakes] == [f"Bearer {KEY}", None]


def test_a_missing_ca_bundle_is_a_parameter_error():
    with pytest.raises(EdenError) as err:
        HttpTransport("https://s", ca_cert=TLS / "nope.pem")
    assert err.value.code == ErrorCode.INVALID_PARAMETER and "CA bundle not found" in err.value.message


class TlsServer:
    """A real edensplit app served by uvicorn over HTTPS/WSS with a bearer key, in a thread of this process."""

    def __init__(self, app: object, port: int | None = None):
        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, ssl_certfile=str(TLS / "server.pem"),
                                ssl_keyfile=str(TLS / "server.key"), log_level="warning",
                                ws_per_message_deflate=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:  # polling a server that is starting: no event to wait on
            assert self.thread.is_alive() and time.monotonic() < deadline, "the TLS server did not start"
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def tls_servers() -> Iterator[tuple[TlsServer, TlsServer]]:
    settings = ServerSettings(eden_random_weights=True, edensplit_api_key=KEY, warmup=False)
    cloud = TlsServer(create_cloud_app(settings, load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True,
                                                            seed=0)))
    edge_settings = settings.model_copy(update={"cloud_server_url": cloud.url, "edensplit_ca_cert": CA})
    edge = TlsServer(create_edge_app(edge_settings, load_model(None, TINY_CONFIG, stages={"interpolate"},
                                                               allow_random=True, seed=0)))
    yield cloud, edge
    edge.stop()
    cloud.stop()


@pytest.mark.parametrize("transport", ["http", "ws"])
def test_https_with_the_ca_and_the_key_works(tls_servers, transport):
    cloud, _ = tls_servers
    if transport == "http":
        link = HttpTransport(cloud.url, api_key=KEY, ca_cert=CA, retry_policy=QUICK)
    else:
        link = WsTransport(cloud.url, path=Cloud.WS_PATH, api_key=KEY, ca_cert=CA, retry_policy=QUICK)
    with Cloud(link) as client:
        assert client.encode_frame(FRAMES[0]).grid == (4, 6)


@pytest.mark.parametrize("transport", ["http", "ws"])
def test_a_missing_or_wrong_key_is_final(tls_servers, transport):
    cloud, _ = tls_servers
    for key in (None, "not-the-key"):
        started = time.monotonic()
        with pytest.raises(ServerError) as err:
            if transport == "http":
                Cloud(HttpTransport(cloud.url, api_key=key, ca_cert=CA, retry_policy=QUICK)).encode_frame(FRAMES[0])
            else:
                Cloud(WsTransport(cloud.url, path=Cloud.WS_PATH, api_key=key, ca_cert=CA, retry_policy=QUICK)
                      ).encode_frame(FRAMES[0])
        assert err.value.code == ErrorCode.UNAUTHORIZED and err.value.status == 401
        assert time.monotonic() - started < QUICK.backoff_s + 3.0  # not retried: no back-off waited


@pytest.mark.parametrize("transport", ["http", "ws"])
def test_a_certificate_the_client_cannot_verify_is_final(tls_servers, transport):
    """Without --ca_cert the test CA is unknown: a TLS failure, not retried, saying what to pass."""
    cloud, _ = tls_servers
    started = time.monotonic()
    with pytest.raises(EdenError) as err:
        if transport == "http":
            Cloud(HttpTransport(cloud.url, api_key=KEY, retry_policy=QUICK)).encode_frame(FRAMES[0])
        else:
            Cloud(WsTransport(cloud.url, path=Cloud.WS_PATH, api_key=KEY, retry_policy=QUICK)).encode_frame(FRAMES[0])
    assert "TLS failure" in err.value.message and "--ca_cert" in err.value.message
    assert time.monotonic() - started < QUICK.backoff_s + 3.0


def test_the_edge_calls_the_cloud_with_its_key_and_ca(tls_servers):
    """Flow B: the edge (EDENSPLIT_API_KEY, EDENSPLIT_CA_CERT) reaches the HTTPS cloud that requires the key."""
    _, edge = tls_servers
    with Edge(HttpTransport(edge.url, api_key=KEY, ca_cert=CA, retry_policy=QUICK)) as client:
        frame = client.interpolate_frames(FRAMES[0], FRAMES[1], seed=1)
    assert frame.shape == FRAMES[0].shape


@pytest.mark.parametrize("transport", ["http", "ws"])
def test_the_cli_takes_the_key_and_ca_from_flags_or_the_environment(tls_servers, clip, workdir, transport):
    cloud, edge = tls_servers
    out = workdir / f"tls-{transport}"
    common = ("--video_path", str(clip), "--output_dir", str(out), "--transport", transport, "--no_progress",
              "--cloud_url", cloud.url, "--edge_url", edge.url)
    flags = run_cli(*common, "--api_key", KEY, "--ca_cert", str(CA), env={})
    assert "12 frames in, 23 out" in flags.stdout
    env = run_cli(*common, env={"EDENSPLIT_API_KEY": KEY, "EDENSPLIT_CA_CERT": str(CA)})
    assert "12 frames in, 23 out" in env.stdout
    assert (out / "interpolated.mp4").is_file()


def test_doctor_reports_tls_and_the_key(tls_servers):
    cloud, edge = tls_servers
    args = ["doctor", "--cloud_url", cloud.url, "--edge_url", edge.url, "--ca_cert", str(CA), "--size", "64x96"]
    good = run_cli_here(args, {"EDENSPLIT_API_KEY": KEY})
    assert good.returncode == 0, good.stdout + good.stderr
    lines = {line.split("  ")[0]: line for line in good.stdout.splitlines()}
    for role in ("cloud", "edge"):
        line = lines[f"{role} TLS and key"]
        assert " ok " in line and f"TLS (CA bundle {CA}); requires a key; ours is accepted" in line, line
    assert " ok " in lines["round trip"]
    keyless = run_cli_here(args, {"EDENSPLIT_API_KEY": ""})
    assert keyless.returncode == 1, keyless.stdout
    lines = {line.split("  ")[0]: line for line in keyless.stdout.splitlines()}
    refused = lines["cloud TLS and key"]
    assert "FAIL" in refused and "TLS (CA bundle" in refused and "requires a key: set EDENSPLIT_API_KEY" in refused
    assert "FAIL" in lines["round trip"] and "requires Authorization: Bearer" in lines["round trip"], keyless.stdout

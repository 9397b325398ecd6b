"""The HTTP transports: retries with back-off then reported, overload retried, errors that say which server
and why, zstd bodies when asked, and the async cloud client the edge uses in flow B."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import zstandard

from edensplit.client.http import AsyncHttpTransport, HttpTransport
from edensplit.client.retry import RetryPolicy
from edensplit.client.services import AsyncCloud, Cloud, Edge
from edensplit.client.transport import ServerError
from edensplit.errors import EdenError, ErrorCode
from edensplit.servers.launch import free_port
from edensplit.wire.blob import BLOB_MEDIA_TYPE
from edensplit.wire.frames import FRAMES_MEDIA_TYPE, unpack_frames
from tests.conftest import make_frames

FRAMES = make_frames(2, 40, 70)


def test_connection_errors_are_retried_then_reported():
    transport = HttpTransport(f"http://127.0.0.1:{free_port()}", retries=2, timeout=2, name="cloud server")
    transport.config.retry = RetryPolicy(retries=2, backoff_s=0.05)
    with pytest.raises(EdenError) as err:
        Cloud(transport).encode(FRAMES[0], FRAMES[1])
    assert err.value.code == ErrorCode.UPSTREAM_ERROR
    assert "cannot reach the cloud server" in err.value.message and "after 3 attempts" in err.value.message


def test_overload_is_retried_after_retry_after_then_reported(cloud):
    """The in-process cloud at its admission limit answers 503 OVERLOADED with Retry-After: 1 each time: each
    retry waits at least that second (the jittered back-off alone would be under 0.1 s)."""
    transport = HttpTransport("http://testserver", client=cloud, name="cloud server")  # TestClient: an httpx.Client
    transport.config.retry = RetryPolicy(retries=2, backoff_s=0.05)
    client = Cloud(transport)
    rt = cloud.app.state.runtime
    saved, rt.inflight = rt.inflight, rt.max_inflight
    before = _overloaded(cloud)
    started = time.monotonic()
    try:
        with pytest.raises(ServerError) as err:
            client.encode(FRAMES[0], FRAMES[1])
    finally:
        rt.inflight = saved
    assert time.monotonic() - started >= 2.0  # two waits of at least Retry-After: 1
    assert err.value.code == ErrorCode.OVERLOADED and err.value.status == 503 and err.value.retry_after >= 1
    assert err.value.message.startswith("cloud server http://testserver: ")
    assert _overloaded(cloud) - before == 3  # the first try and two retries
    transport.config.retry = RetryPolicy(retries=0)
    assert client.encode(FRAMES[0], FRAMES[1]).grid == (4, 6)  # once there is room again


def test_caller_errors_are_final_and_keep_code_status_and_details():
    calls = []

    def edge(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        error = {"code": "SESSION_NOT_FOUND", "message": "no frame 1", "details": {"missing_index": 1}}
        return httpx.Response(409, json={"status": "error", "data": None, "error": error})

    transport = HttpTransport("http://edge", transport=httpx.MockTransport(edge), name="edge server")
    with pytest.raises(ServerError) as err:
        Edge(transport).session_frame("s", 2, FRAMES[1])
    assert len(calls) == 1  # 409 is not retried
    assert (err.value.code, err.value.status, err.value.details) == (ErrorCode.SESSION_NOT_FOUND, 409,
                                                                     {"missing_index": 1})
    assert err.value.server == "edge server http://edge"


def test_an_unreadable_error_is_upstream_error_with_the_status():
    transport = HttpTransport("http://x", transport=httpx.MockTransport(lambda r: httpx.Response(500, text="oops")))
    with pytest.raises(ServerError) as err:
        Cloud(transport).encode_frame(FRAMES[0])
    assert err.value.code == ErrorCode.UPSTREAM_ERROR and err.value.status == 500 and "oops" in err.value.message


def test_zstd_compresses_binary_bodies_and_asks_for_zstd_answers(cloud):
    blob = Cloud(HttpTransport("http://testserver", client=cloud)).encode(FRAMES[0], FRAMES[1]).raw
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=zstandard.ZstdCompressor().compress(blob),
                              headers={"content-type": BLOB_MEDIA_TYPE, "content-encoding": "zstd"})

    client = Cloud(HttpTransport("http://c", compress="zstd", transport=httpx.MockTransport(handler)))
    assert client.encode(FRAMES[0], FRAMES[1]).raw == blob  # the answer decompressed
    (request,) = seen
    assert request.headers["content-encoding"] == "zstd" and request.headers["accept-encoding"] == "zstd"
    body = zstandard.ZstdDecompressor().decompressobj().decompress(request.content)
    assert set(unpack_frames(body, ("frame0", "frame1"))[0]) == {"frame0", "frame1"}
    with pytest.raises(EdenError, match="zstd or none"):
        HttpTransport("http://c", compress="gzip")


def test_async_cloud_retries_with_asyncio_sleep_and_returns_the_blob(cloud):
    """The edge's flow-B client: binary float32, X-Request-ID passed on, 503 retried without blocking the loop."""
    blob = Cloud(HttpTransport("http://testserver", client=cloud)).encode_frame(FRAMES[0]).raw
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) < 3:
            # the server's Retry-After is a floor under the jittered back-off: 0.05 s or more per wait, so the
            # ticker (every 0.01 s) runs several times if the waits yield to the loop, however the dice fall
            error = {"code": "OVERLOADED", "message": "busy", "details": {"retry_after_s": 0.05}}
            return httpx.Response(503, json={"status": "error", "data": None, "error": error})
        return httpx.Response(200, content=blob, headers={"content-type": BLOB_MEDIA_TYPE})

    async def run() -> tuple[bytes, int]:
        transport = AsyncHttpTransport("http://cloud", name="cloud server", transport=httpx.MockTransport(handler))
        transport.config.retry = RetryPolicy(retries=3, backoff_s=0.05)
        client = AsyncCloud(transport)
        ticks = 0

        async def ticker() -> None:  # runs only if the retries' back-off yields to the loop
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        try:
            encoded = await client.encode_frame(FRAMES[0], request_id="edge-7")
        finally:
            task.cancel()
            await client.aclose()
        return encoded.raw, ticks

    raw, ticks = asyncio.run(run())
    assert raw == blob and len(seen) == 3 and ticks >= 3
    assert all(r.url.path == "/api/v1/encode_frame" and r.headers["x-request-id"] == "edge-7" for r in seen)
    assert seen[0].headers["content-type"] == FRAMES_MEDIA_TYPE and seen[0].url.params["wire_dtype"] == "float32"


def test_async_cloud_reports_the_clouds_error():
    def handler(request: httpx.Request) -> httpx.Response:
        error = {"code": "FRAME_SIZE_MISMATCH", "message": "the two frames differ", "details": {}}
        return httpx.Response(400, json={"status": "error", "data": None, "error": error})

    async def run() -> None:
        client = AsyncCloud(AsyncHttpTransport("http://cloud", name="cloud server",
                                               transport=httpx.MockTransport(handler)))
        try:
            await client.encode(FRAMES[0], FRAMES[1])
        finally:
            await client.aclose()

    with pytest.raises(ServerError) as err:
        asyncio.run(run())
    assert err.value.code == ErrorCode.FRAME_SIZE_MISMATCH and err.value.status == 400


def _overloaded(cloud) -> float:
    for line in cloud.get("/metrics").text.splitlines():
        if line.startswith('edensplit_requests_total{client_name="anonymous",method="POST",route="/api/v1/encode",'
                           'status="503"}'):
            return float(line.split()[-1])
    return 0.0

"""Safe retries: full-jitter back-off within its cap, Retry-After honoured, the outage budget (retry_for) ending
retries, only transient failures retried (never another 4xx), and one request id per request, reused by its
retries only, over HTTP (httpx.MockTransport) and WebSocket (a scripted peer on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from edensplit.client.http import HttpTransport
from edensplit.client.policy import Client
from edensplit.client.requests import Call
from edensplit.client.retry import DEFAULT_RETRIES, DEFAULT_RETRY_FOR, RetryBudget, RetryPolicy, parse_retry_after
from edensplit.client.services import Cloud
from edensplit.client.transport import ServerError
from edensplit.client.ws import WsTransport
from edensplit.errors import EdenError, ErrorCode
from edensplit.servers.launch import free_port
from edensplit.settings import ClientSettings
from edensplit.wire.blob import BLOB_MEDIA_TYPE
from edensplit.wire.frames import FRAMES_MEDIA_TYPE
from edensplit.wire.messages import pack_binary, unpack_binary
from tests.conftest import make_frames

FRAMES = make_frames(2, 40, 70)
FAST = RetryPolicy(retries=50, retry_for=30.0, backoff_s=0.01, max_backoff_s=0.05)  # quick, and time-bounded
CALL = Call("session_frame", "/api/v1/sessions/s/frames/0", {"interpolate": False}, BLOB_MEDIA_TYPE,
            FRAMES_MEDIA_TYPE, body=b"blob", ids={"session_id": "s", "index": 0})


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the policy ------------------------------------------------------------------------------------

def test_full_jitter_is_random_within_an_exponential_capped_bound():
    import random

    policy = RetryPolicy(backoff_s=0.2, max_backoff_s=1.0, rng=random.Random(7))
    assert [policy.cap(n) for n in range(6)] == [0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    for n in range(6):
        cap = policy.cap(n)
        delays = [policy.delay(n) for _ in range(500)]
        assert all(0.0 <= d <= cap for d in delays)
        # Spread over the whole range (uniform: 500 draws leave no 10% gap at either end), not a fixed value.
        assert min(delays) < 0.1 * cap and max(delays) > 0.9 * cap
        assert 0.4 * cap < sum(delays) / len(delays) < 0.6 * cap


def test_retry_after_is_a_floor_with_the_jitter_on_top():
    policy = RetryPolicy(backoff_s=0.2, max_backoff_s=1.0)
    delays = [policy.delay(1, retry_after=3.0) for _ in range(200)]
    assert all(3.0 <= d <= 3.4 for d in delays) and len(set(delays)) > 100


def test_retry_after_reads_seconds_and_http_dates():
    assert parse_retry_after("2") == 2.0 and parse_retry_after("0.5") == 0.5 and parse_retry_after(3) == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None and parse_retry_after("-4") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=lambda: 1445412480.0) == 30.0


def test_the_budget_ends_an_outage_at_retry_for_seconds():
    """Every attempt fails at once: the waits add up to exactly retry_for (the last one cut to what is left),
    then the budget says give up; the retries cap was not what stopped it."""
    clock = FakeClock()
    budget = RetryBudget(RetryPolicy(retries=10_000, retry_for=10.0, backoff_s=0.2, max_backoff_s=5.0), clock)
    waits = []
    while (delay := budget.next_delay()) is not None:
        waits.append(delay)
        clock.now += delay
        assert len(waits) < 1000
    assert sum(waits) == pytest.approx(10.0) and budget.elapsed == pytest.approx(10.0)
    assert budget.retries == len(waits) < 10_000


def test_a_retry_after_beyond_the_budget_gives_up_at_once():
    clock = FakeClock()
    budget = RetryBudget(RetryPolicy(retry_for=5.0), clock)
    assert budget.next_delay(retry_after=2.0) is not None
    clock.now += 2.0
    assert budget.next_delay(retry_after=4.0) is None  # 3 s are left


def test_the_retries_cap_counts_retries():
    budget = RetryBudget(RetryPolicy(retries=3, retry_for=1e9), FakeClock())
    assert [budget.next_delay() is not None for _ in range(4)] == [True, True, True, False]
    assert budget.attempts == 4


@pytest.mark.parametrize("seed", range(20))
def test_the_default_retries_do_not_cut_the_default_outage_budget_short(seed):
    """Even when every attempt fails instantly, 100 retries outlast 60 s of full-jitter waits."""
    import random

    clock = FakeClock()
    policy = RetryPolicy(rng=random.Random(seed))
    budget = RetryBudget(policy, clock)
    while (delay := budget.next_delay()) is not None:
        clock.now += delay
    assert budget.elapsed == pytest.approx(DEFAULT_RETRY_FOR) and budget.retries < DEFAULT_RETRIES


def test_the_cli_settings_default_to_the_transports_defaults(monkeypatch):
    for var in ("EDENSPLIT_RETRIES", "EDENSPLIT_RETRY_FOR"):
        monkeypatch.delenv(var, raising=False)
    settings = ClientSettings()
    assert (settings.edensplit_retries, settings.edensplit_retry_for) == (DEFAULT_RETRIES, DEFAULT_RETRY_FOR)
    monkeypatch.setenv("EDENSPLIT_RETRY_FOR", "12.5")
    assert ClientSettings().edensplit_retry_for == 12.5


# -- HTTP ------------------------------------------------------------------------------------------

def envelope(status: int, code: str, details: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
    error = {"code": code, "message": f"{code.lower()} here", "details": details or {}}
    return httpx.Response(status, json={"status": "error", "data": None, "error": error}, headers=headers)


@pytest.fixture(scope="module")
def blob(cloud) -> bytes:
    """A real enc_out blob (the in-process cloud's), for the scripted server's success answers."""
    return Cloud(HttpTransport("http://testserver", client=cloud)).encode_frame(FRAMES[0]).raw


def scripted_http(script: list[Callable[[], httpx.Response]], blob: bytes, policy: RetryPolicy = FAST
                  ) -> tuple[Cloud, list[httpx.Request], list[float]]:
    """A cloud client whose server plays `script`, one step per request (then answers `blob`); records the
    requests and when they came."""
    seen: list[httpx.Request] = []
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        times.append(time.monotonic())
        if len(seen) <= len(script):
            return script[len(seen) - 1]()
        return httpx.Response(200, content=blob, headers={"content-type": BLOB_MEDIA_TYPE})

    transport = HttpTransport("http://cloud", transport=httpx.MockTransport(handler), name="cloud server",
                              retry_policy=policy)
    return Cloud(transport), seen, times


def refused() -> httpx.Response:
    raise httpx.ConnectError("connection refused")


def test_http_retries_transient_failures_under_one_request_id(blob):
    """A refused connection, 503 OVERLOADED, 503 NOT_READY, 504 DEADLINE_EXCEEDED, a proxy's bare 502 and the
    edge's 502 for a cloud it could not reach are all retried; every attempt carries the same X-Request-ID,
    and the next request gets its own."""
    client, seen, _ = scripted_http([
        refused,
        lambda: envelope(503, "OVERLOADED"),
        lambda: envelope(503, "NOT_READY"),
        lambda: envelope(504, "DEADLINE_EXCEEDED"),
        lambda: httpx.Response(502, text="<html>Bad Gateway</html>"),
        lambda: envelope(502, "UPSTREAM_ERROR", {"cloud_code": "UPSTREAM_ERROR"}),
    ], blob)
    assert client.encode_frame(FRAMES[0]).raw == blob
    ids = {request.headers["x-request-id"] for request in seen}
    assert len(seen) == 7 and len(ids) == 1
    client.encode_frame(FRAMES[0])
    assert seen[7].headers["x-request-id"] not in ids


def test_a_given_request_id_is_sent_and_kept(blob):
    client, seen, _ = scripted_http([lambda: envelope(503, "OVERLOADED")], blob)
    client.encode_frame(FRAMES[0], request_id="job-7-frame-3")
    assert [r.headers["x-request-id"] for r in seen] == ["job-7-frame-3"] * 2


@pytest.mark.parametrize("status,code,details", [
    (400, "INVALID_BLOB", None), (401, "UNAUTHORIZED", None), (404, "NOT_FOUND", None),
    (408, "BODY_TIMEOUT", None), (409, "IDEMPOTENCY_CONFLICT", None), (409, "SESSION_NOT_FOUND", None),
    (413, "PAYLOAD_TOO_LARGE", None), (415, "UNSUPPORTED_MEDIA_TYPE", None), (422, "INVALID_PARAMETER", None),
    (429, "OVERLOADED", None), (500, "INTERNAL_ERROR", None),
    (502, "UPSTREAM_ERROR", {"cloud_code": "FRAME_SIZE_MISMATCH"}),  # the edge's cloud refused the request
])
def test_http_other_errors_are_final(status, code, details, blob):
    """Caller errors (every 4xx, whatever its code says), server faults and a 502 for a caller error further on
    are answered once: retrying cannot change them. (429 is not what edensplit sends for overload: 503 is.)"""
    client, seen, _ = scripted_http([lambda: envelope(status, code, details)] * 3, blob)
    with pytest.raises(ServerError) as err:
        client.encode_frame(FRAMES[0])
    assert len(seen) == 1 and err.value.status == status


def test_http_retry_after_is_honoured(blob):
    client, seen, times = scripted_http([lambda: envelope(503, "OVERLOADED", **{"Retry-After": "1"}),
                                         lambda: envelope(503, "NOT_READY", {"retry_after_s": 5},
                                                          **{"Retry-After": "0.5"})], blob)
    assert client.encode_frame(FRAMES[0]).raw == blob
    waits = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert waits[0] >= 1.0 and waits[1] >= 0.5  # the header wins over the body's hint
    assert all(w < 1.0 + FAST.max_backoff_s + 2.0 for w in waits)  # and not much more (loaded machine: +2 s)


def test_http_gives_up_when_the_outage_outlasts_retry_for(blob):
    policy = RetryPolicy(retries=10_000, retry_for=1.0, backoff_s=0.02, max_backoff_s=0.1)
    client, seen, times = scripted_http([lambda: envelope(503, "OVERLOADED")] * 10_000, blob, policy)
    with pytest.raises(ServerError) as err:
        client.encode_frame(FRAMES[0])
    assert err.value.code == ErrorCode.OVERLOADED
    # The first failure starts the budget; the last attempt comes at its end (the last wait is cut to fit).
    assert 1.0 <= times[-1] - times[0] <= 1.0 + 2.0, times[-1] - times[0]
    assert len(seen) > 5  # many tries (about 12 on an idle machine), ended by retry_for, not by retries


def test_http_connection_failures_give_up_after_retry_for_with_a_message_saying_so():
    policy = RetryPolicy(retries=10_000, retry_for=0.5, backoff_s=0.02, max_backoff_s=0.1)
    transport = HttpTransport(f"http://127.0.0.1:{free_port()}", name="edge server", retry_policy=policy)
    started = time.monotonic()
    with pytest.raises(EdenError) as err:
        Client(transport).health()
    assert 0.5 <= time.monotonic() - started <= 0.5 + 3.0
    assert err.value.code == ErrorCode.UPSTREAM_ERROR
    assert "cannot reach the edge server" in err.value.message and " s: ConnectError" in err.value.message


# -- WebSocket -------------------------------------------------------------------------------------

Script = Callable[[dict[str, Any], int], "str | float | dict[str, Any] | None"]


class Peer:
    """A WebSocket server on 127.0.0.1 (own thread and loop). Each binary request's header is recorded and
    `script(header, n)` (n: requests so far) says what to do: an error code to answer with (a dict
    {"code", "details"}), "drop" to abort the connection unanswered, seconds (a float) to wait before
    answering, or None to answer at once like the edge's store-only session frame. `refuse`: an HTTP status
    to refuse handshakes with."""

    def __init__(self, script: Script | None = None, port: int = 0, refuse: int | None = None):
        self.script = script or (lambda header, n: None)
        self.refuse, self.requests, self.handshakes = refuse, [], []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._start(port), self.loop).result(10)
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _start(self, port: int):
        return await serve(self.handler, "127.0.0.1", port, compression=None, process_request=self.handshake)

    def handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        self.handshakes.append(dict(request.headers.raw_items()))
        if self.refuse is None:
            return None
        body = b'{"status": "error", "data": null, "error": {"code": "UNAUTHORIZED", "message": "no key", ' \
               b'"details": {}}}'
        headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return Response(self.refuse, "Refused", headers, body)

    async def handler(self, ws: ServerConnection) -> None:
        async for received in ws:
            header, _ = unpack_binary(received)
            self.requests.append(header)
            action = self.script(header, len(self.requests))
            if action == "drop":
                ws.transport.abort()
                return
            if isinstance(action, float):  # a slow answer
                await asyncio.sleep(action)
            rid = header["request_id"]
            if isinstance(action, dict):
                await ws.send(pack_binary({"type": "error", "request_id": rid, "status": "error",
                                           "error": {"message": "scripted", **action}}))
            else:
                await ws.send(pack_binary({"type": f"{header['type']}_result", "request_id": rid,
                                           "status": "success", "metadata": {"stored": header.get("index")}}))

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def ws_transport(url: str, policy: RetryPolicy = FAST, **kwargs: Any) -> WsTransport:
    return WsTransport(url, timeout=10, retry_policy=policy, name="edge server", close_timeout=0.5, **kwargs)


def test_ws_retries_transient_error_answers_with_the_same_request_id_and_their_retry_after():
    codes = {1: {"code": "OVERLOADED", "details": {"retry_after_s": 0.5}}, 2: {"code": "NOT_READY"},
             3: {"code": "DEADLINE_EXCEEDED"}}
    peer = Peer(lambda header, n: codes.get(n))
    transport = ws_transport(peer.url)
    try:
        started = time.monotonic()
        answer = Client(transport).send(CALL)
        elapsed = time.monotonic() - started
        Client(transport).send(CALL)
    finally:
        transport.close()
        peer.close()
    assert answer.metadata == {"stored": 0}
    ids = [r["request_id"] for r in peer.requests]
    assert len(ids) == 5 and len(set(ids[:4])) == 1 and ids[4] != ids[0]  # one id per request, kept by retries
    assert elapsed >= 0.5  # the OVERLOADED answer's retry_after_s


@pytest.mark.parametrize("code", ["IDEMPOTENCY_CONFLICT", "INVALID_BLOB", "UNAUTHORIZED", "INTERNAL_ERROR"])
def test_ws_other_error_answers_are_final(code):
    peer = Peer(lambda header, n: {"code": code})
    transport = ws_transport(peer.url)
    try:
        with pytest.raises(ServerError) as err:
            Client(transport).send(CALL)
    finally:
        transport.close()
        peer.close()
    assert err.value.code == code and len(peer.requests) == 1


def test_ws_a_dropped_connection_is_reopened_and_the_request_sent_again_with_its_id():
    peer = Peer(lambda header, n: "drop" if n == 1 else None)
    transport = ws_transport(peer.url)
    try:
        answer = Client(transport).send(CALL)
    finally:
        transport.close()
        peer.close()
    assert answer.metadata == {"stored": 0} and transport.reconnects == 1
    assert len(peer.requests) == 2 and peer.requests[0]["request_id"] == peer.requests[1]["request_id"]


def test_ws_a_slow_answer_is_waited_for_not_sent_again_on_the_same_connection():
    """Past `timeout` the request is waited for again (within the budget): sending its id again on the connection
    it is in flight on would be refused by the server as a conflict."""
    peer = Peer(lambda header, n: 1.5)
    transport = WsTransport(peer.url, timeout=0.5, retry_policy=FAST, close_timeout=0.5, ping_interval=0.2,
                            ping_timeout=5)
    try:
        answer = Client(transport).send(CALL)
    finally:
        transport.close()
        peer.close()
    assert answer.metadata == {"stored": 0} and len(peer.requests) == 1 and transport.reconnects == 0


def test_ws_rides_out_a_server_that_comes_up_late():
    """Nothing listens on the port for about a second: connecting is retried until the peer is there."""
    port = free_port()
    peers: list[Peer] = []
    starter = threading.Timer(1.0, lambda: peers.append(Peer(port=port)))  # the outage being ridden out
    starter.start()
    try:
        # bounded by time, not by a count of retries: a busy machine may start the peer well after the second
        patient = RetryPolicy(retries=10_000, retry_for=30.0, backoff_s=0.01, max_backoff_s=0.05)
        transport = ws_transport(f"ws://127.0.0.1:{port}", patient)
        try:
            answer = Client(transport).send(CALL)
        finally:
            transport.close()
    finally:
        starter.join()
        for peer in peers:
            peer.close()
    assert answer.metadata == {"stored": 0} and len(peers[0].requests) == 1


def test_ws_gives_up_after_retry_for():
    policy = RetryPolicy(retries=10_000, retry_for=0.5, backoff_s=0.02, max_backoff_s=0.1)
    started = time.monotonic()
    with pytest.raises(EdenError) as err:
        Client(ws_transport(f"ws://127.0.0.1:{free_port()}", policy)).send(CALL)
    assert 0.5 <= time.monotonic() - started <= 0.5 + 3.0
    assert err.value.code == ErrorCode.UPSTREAM_ERROR and "cannot reach the edge server" in err.value.message
    assert "gave up after" in err.value.message


def test_ws_a_refused_handshake_is_final():
    peer = Peer(refuse=401)
    try:
        with pytest.raises(ServerError) as err:
            Client(ws_transport(peer.url)).send(CALL)
    finally:
        peer.close()
    assert err.value.code == ErrorCode.UNAUTHORIZED and err.value.status == 401 and len(peer.handshakes) == 1

"""The WebSocket transport against a scripted peer: a peer that stops answering pings is noticed within
about ping_interval + ping_timeout, and the unanswered request is resent on a new connection, answered once."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from websockets.asyncio.server import ServerConnection, serve

from edensplit.client.policy import Client
from edensplit.client.requests import Call
from edensplit.client.ws import WsTransport, bounded_open
from edensplit.errors import EdenError, ErrorCode
from edensplit.wire.blob import BLOB_MEDIA_TYPE
from edensplit.wire.frames import FRAMES_MEDIA_TYPE
from edensplit.wire.messages import pack_binary, unpack_binary

CALL = Call("session_frame", "/api/v1/sessions/s/frames/0", {"interpolate": False}, BLOB_MEDIA_TYPE,
            FRAMES_MEDIA_TYPE, body=b"blob", ids={"session_id": "s", "index": 0})


class ScriptedPeer:
    """A WebSocket server on 127.0.0.1 in its own thread. The first `silent` connections complete the handshake,
    then read nothing at all (so no ping is ever answered: websockets pongs from its reader); later ones answer
    each binary request like the edge's store-only session answer."""

    def __init__(self, silent: int = 1):
        self.silent, self.connections, self.requests, self.open = silent, 0, [], []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _start(self):
        self.stopping = asyncio.Event()
        return await serve(self.handler, "127.0.0.1", 0, compression=None, ping_interval=None)

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        self.open.append(ws)
        if self.connections <= self.silent:
            ws.transport.pause_reading()  # no frames read: pings unanswered, requests unseen
            await self.stopping.wait()
            return
        async for received in ws:
            header, _ = unpack_binary(received)
            self.requests.append(header)
            await ws.send(pack_binary({"type": f"{header['type']}_result", "request_id": header["request_id"],
                                       "status": "success", "metadata": {"session_id": "s", "stored": 0}}))

    def close(self) -> None:
        async def stop() -> None:
            self.stopping.set()
            for ws in self.open:
                ws.transport.abort()  # no closing handshake with a peer that reads nothing
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def peer():
    peer = ScriptedPeer()
    yield peer
    peer.close()


def test_a_peer_that_stops_answering_pings_is_dropped_and_the_request_resent(peer):
    interval, timeout = 0.5, 0.5
    transport = WsTransport(peer.url, ping_interval=interval, ping_timeout=timeout, close_timeout=0.5, timeout=30,
                            name="edge server")
    try:
        started = time.monotonic()
        answer = Client(transport).send(CALL)
        elapsed = time.monotonic() - started
    finally:
        transport.close()
    assert answer.metadata["stored"] == 0 and answer.body == b""
    assert transport.reconnects == 1 and peer.connections == 2
    assert [r["index"] for r in peer.requests] == [0]  # seen once: on the new connection
    assert peer.requests[0]["content_type"] == BLOB_MEDIA_TYPE and peer.requests[0]["interpolate"] is False
    # Noticed after the first unanswered ping times out; generous slack for a loaded 2-core machine.
    assert interval + timeout - 0.1 <= elapsed <= interval + timeout + 0.5 + 5.0, elapsed


def test_a_request_fails_when_the_peer_never_answers():
    """Every connection goes silent: each is dropped by the heartbeat, and the request fails at its timeout."""
    peer = ScriptedPeer(silent=10**6)
    transport = WsTransport(peer.url, ping_interval=0.3, ping_timeout=0.3, close_timeout=0.3, timeout=1.0, retries=0,
                            name="edge server")
    try:
        with pytest.raises(EdenError) as err:
            Client(transport).send(CALL)
    finally:
        transport.close()
        peer.close()
    assert err.value.code == ErrorCode.UPSTREAM_ERROR and "no answer from the edge server" in err.value.message


class Opened:
    def __init__(self):
        self.closed = threading.Event()

    def close(self):
        self.closed.set()


def test_a_connect_that_hangs_is_given_up_on_and_what_it_opens_later_is_closed():
    """websockets' connect once stayed blocked for minutes after a failed TLS handshake: the transport waits for
    it only so long (open_timeout + close_timeout + OPEN_GRACE_S), then retries; a connection that still comes
    is closed, never leaked."""
    release, late = threading.Event(), Opened()

    def hanging():
        release.wait(10)
        return late

    started = time.monotonic()
    with pytest.raises(TimeoutError, match="not open within"):
        bounded_open(hanging, 0.2)
    assert time.monotonic() - started < 2
    release.set()
    assert late.closed.wait(5)  # the late connection, closed by the thread that opened it
    on_time = Opened()
    assert bounded_open(lambda: on_time, 5) is on_time and not on_time.closed.is_set()
    with pytest.raises(ConnectionRefusedError):  # a failure to open is the caller's, as it was
        bounded_open(lambda: (_ for _ in ()).throw(ConnectionRefusedError(111, "refused")), 5)

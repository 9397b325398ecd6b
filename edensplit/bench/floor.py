"""The floor of `edensplit bench --mode overhead`: what moving a row's bytes costs through a bare app on the same
loopback, with nothing of edensplit's around it.

The app (`floor_app`, started with uvicorn like the servers) has a POST route that reads the whole body
(`await request.body()`) and answers 16 bytes, and a WebSocket echo that reads N bytes (a text message saying N,
then binary messages of at most the transports' chunk size, as edensplit's WebSocket clients send large bodies)
and answers 16 bytes. `Floor` times one hop of N bytes through either from a keep-alive client: httpx as the
HTTP transport uses it, the websockets sync client as the WebSocket transport uses it (no compression).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from websockets.sync.client import ClientConnection, connect

from edensplit.servers.launch import ServerProcess
from edensplit.wire.messages import CHUNK_BYTES


class Floor:
    """The bare app in a uvicorn process of its own, and keep-alive clients of it: `time_hops` gives the median
    milliseconds of moving each of some byte counts through the transport, summed."""

    TRANSPORTS = ("http", "ws")

    def __init__(self, log_dir: Path, chunk_bytes: int = CHUNK_BYTES):
        self.server = ServerProcess("floor_app:create_app", log_path=log_dir / "floor.log",
                                    extra_args=("--factory", "--app-dir", str(Path(__file__).parent)))
        self.chunk_bytes = chunk_bytes
        self.http: httpx.Client | None = None
        self.ws: ClientConnection | None = None
        self._buffers: dict[int, bytes] = {}

    def __enter__(self) -> Floor:
        if self.server.proc is None:  # not launched along with the servers (systems.servers' `others`)
            self.server.start()
        self.http = httpx.Client(timeout=600.0)
        self.ws = connect(self.server.url.replace("http", "ws", 1) + "/echo", legacy=True, compression=None,
                          max_size=2 * self.chunk_bytes + 2**20, ping_interval=None, open_timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        for client in (self.http, self.ws):
            if client is not None:
                client.close()
        self.server.stop()

    def _body(self, nbytes: int) -> bytes:
        """A body of `nbytes` (kept: one allocation per size, its pages touched once)."""
        if nbytes not in self._buffers:
            self._buffers[nbytes] = bytes(range(256)) * (nbytes // 256) + bytes(nbytes % 256)
        return self._buffers[nbytes]

    def hop(self, transport: str, nbytes: int) -> float:
        """Seconds to send `nbytes` and get the 16-byte answer, once."""
        body = self._body(nbytes)
        started = time.perf_counter()
        if transport == "http":
            assert self.http is not None
            response = self.http.post(self.server.url + "/sink", content=body)
            response.raise_for_status()
        elif transport == "ws":
            assert self.ws is not None
            view = memoryview(body)
            self.ws.send(str(nbytes))
            for start in range(0, nbytes, self.chunk_bytes):
                self.ws.send(view[start:start + self.chunk_bytes])
            self.ws.recv()
        else:
            raise ValueError(f"no floor for transport {transport!r}; there is one for {', '.join(self.TRANSPORTS)}")
        return time.perf_counter() - started

    def time_hops(self, transport: str, sizes: Sequence[int], reps: int = 3) -> float:
        """Milliseconds: for each byte count, the median of `reps` hops; summed over the byte counts."""
        return sum(statistics.median(self.hop(transport, n) for _ in range(reps)) for n in sizes if n > 0) * 1000

"""Typed clients for the two servers, over any transport: `Cloud` (frames -> enc_out blobs), `Edge`
(blobs or frames -> the middle frame) and `AsyncCloud` (the cloud from asyncio code: the edge's flow B).

They build each request (`edensplit.client.requests`) for the chosen payload, send it through their
`Client` (`edensplit.client.policy`: retries and hooks over the transport: `HttpTransport`, `WsTransport`,
`AsyncHttpTransport`) and read the answer; they never branch on the transport, and the transports never look
inside a request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from edensplit.client import requests
from edensplit.client.policy import AsyncClient, Client
from edensplit.client.requests import Answer, Call, EncodedBlob, Payload, check_payload
from edensplit.client.transport import AsyncTransport, Transport
from edensplit.errors import EdenError, ErrorCode
from edensplit.wire import codecs
from edensplit.wire.options import Options

T = TypeVar("T")
# A request's seconds, step by step: building its Call (pack), sending it and getting its answer over every attempt
# (exchange), reading the answer (unpack). `edensplit bench --mode overhead` sets one on each service.
StepTimer = Callable[[Call, float, float, float], None]


class _Service:
    """What both servers' clients share: the policy-wrapped transport, health, closing, and a step timer."""

    def __init__(self, transport: Transport | Client, payload: Payload):
        self.client = transport if isinstance(transport, Client) else Client(transport)
        self.payload = check_payload(payload)
        self.timer: StepTimer | None = None  # unset, a request costs no clock reading

    def _call(self, build: Callable[[], Call], read: Callable[[Answer], T]) -> T:
        """Build a request, send it through the client and read its answer (each step timed when a timer is set)."""
        if self.timer is None:
            return read(self.client.send(build()))
        started = time.perf_counter()
        call = build()
        packed = time.perf_counter()
        answer = self.client.send(call)
        answered = time.perf_counter()
        out = read(answer)
        self.timer(call, packed - started, answered - packed, time.perf_counter() - answered)
        return out

    @property
    def transport(self) -> Transport:
        """The transport under the client's policy."""
        return self.client.transport

    def health(self) -> dict[str, Any]:
        """The server's health (HTTP GET /health; over WebSocket, an application-level ping)."""
        return self.client.health()

    def close(self) -> None:
        """Close the transport."""
        self.client.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Cloud(_Service):
    """The cloud encoder: `encode` (a pair) and `encode_frame` (one video frame) -> EncodedBlob."""

    WS_PATH = "/ws/encode"

    def __init__(self, transport: Transport | Client, *, payload: Payload = "binary",
                 wire_dtype: str = codecs.DEFAULT):
        super().__init__(transport, payload)
        self.options = Options.from_flat({"wire_dtype": wire_dtype})  # INVALID_PARAMETER for an unknown one

    def encode(self, frame0: np.ndarray, frame1: np.ndarray, *, request_id: str | None = None) -> EncodedBlob:
        """A pair -> its enc_out blob (both frames, and their difference)."""
        return self._call(lambda: requests.encode(frame0, frame1, self.options, payload=self.payload,
                                                  request_id=request_id), requests.blob_from)

    def encode_frame(self, frame: np.ndarray, *, request_id: str | None = None) -> EncodedBlob:
        """One video frame -> its enc_out blob (frame-once sessions)."""
        return self._call(lambda: requests.encode_frame(frame, self.options, payload=self.payload,
                                                        request_id=request_id), requests.blob_from)


class Edge(_Service):
    """The edge: `interpolate` (a pair's blob), `session_frame` (frame-once), `interpolate_frames` (flow B)."""

    WS_PATH = "/ws/interpolate"

    def __init__(self, transport: Transport | Client, *, payload: Payload = "binary", options: Options | None = None):
        """`options`: sent with every request (num_steps, method, vae_scaler, vae_shift); per-call ones are added."""
        super().__init__(transport, payload)
        self.options = options or Options()

    def _options(self, **per_call: Any) -> Options:
        """The client's options plus this call's (validated: a bad value is INVALID_PARAMETER here)."""
        return Options.from_flat({**self.options.flat(), **per_call})

    def _frame(self, build: Callable[[], Call]) -> np.ndarray:
        frame = self._call(build, requests.frame_from)
        if frame is None:
            raise EdenError("the edge stored the frame but answered without interpolating",
                            code=ErrorCode.UPSTREAM_ERROR)
        return frame

    def interpolate(self, pair: EncodedBlob, *, seed: int = 0) -> np.ndarray:
        """A pair's blob -> the middle frame."""
        return self._frame(lambda: requests.interpolate(pair, self._options(seed=seed), payload=self.payload))

    def session_frame(self, session_id: str, index: int, frame: EncodedBlob | np.ndarray, *,
                      difference: float | None = None, seed: int = 0, interpolate: bool | None = None
                      ) -> np.ndarray | None:
        """Frame `index` of a frame-once session: its blob (flow A) or the frame itself (flow B, the edge has the
        cloud encode it). Stores it; for index > 0 (unless interpolate=False) returns the frame (index-1, index)."""
        options = self._options(seed=seed, difference=difference, interpolate=interpolate)
        return self._call(lambda: requests.session_frame(session_id, index, frame, options, payload=self.payload),
                          requests.frame_from)

    def interpolate_frames(self, frame0: np.ndarray, frame1: np.ndarray, *, seed: int = 0) -> np.ndarray:
        """Flow B: raw frames to the edge, which calls the cloud itself."""
        return self._frame(lambda: requests.interpolate_frames(frame0, frame1, self._options(seed=seed),
                                                               payload=self.payload))


class AsyncCloud:
    """The cloud from asyncio code (the edge in flow B): `await encode(...)` / `await encode_frame(...)`."""

    def __init__(self, transport: AsyncTransport | AsyncClient, *, payload: Payload = "binary",
                 wire_dtype: str = codecs.DEFAULT):
        self.client = transport if isinstance(transport, AsyncClient) else AsyncClient(transport)
        self.payload = check_payload(payload)
        self.options = Options.from_flat({"wire_dtype": wire_dtype})

    @property
    def transport(self) -> AsyncTransport:
        return self.client.transport

    @transport.setter
    def transport(self, transport: AsyncTransport) -> None:
        """Another transport under the same policy and hooks (tests reach an in-process cloud this way)."""
        self.client = AsyncClient(transport, self.client.hooks)

    async def encode(self, frame0: np.ndarray, frame1: np.ndarray, *, request_id: str | None = None
                     ) -> EncodedBlob:
        """A pair -> its enc_out blob."""
        call = requests.encode(frame0, frame1, self.options, payload=self.payload, request_id=request_id)
        return requests.blob_from(await self.client.send(call))

    async def encode_frame(self, frame: np.ndarray, *, request_id: str | None = None) -> EncodedBlob:
        """One frame -> its enc_out blob."""
        call = requests.encode_frame(frame, self.options, payload=self.payload, request_id=request_id)
        return requests.blob_from(await self.client.send(call))

    async def health(self) -> dict[str, Any]:
        """GET /health, retried as requests are."""
        return await self.client.health()

    async def aclose(self) -> None:
        """Close the transport."""
        await self.client.aclose()

"""Typed clients for the two servers, over any transport: `Cloud` (frames -> enc_out blobs), `Edge`
(blobs or frames -> the middle frame) and `AsyncCloud` (the cloud from asyncio code: the edge's flow B).

They build each request (`edensplit.client.requests`) for the chosen payload, send it through their
`Client` (`edensplit.client.policy`: retries and hooks over the transport: `HttpTransport`, `WsTransport`,
`AsyncHttpTransport`) and read the answer; they never branch on the transport, and the transports never look
inside a request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np

from edensplit.client import requests, shared
from edensplit.client.policy import AsyncClient, Client
from edensplit.client.requests import Answer, Call, EncodedBlob, Payload, check_payload
from edensplit.client.transport import AsyncTransport, Transport
from edensplit.errors import EdenError, ErrorCode
from edensplit.wire import codecs
from edensplit.wire.options import Options
from edensplit.wire.shm import SHM_MEDIA_TYPE, Spares

log = logging.getLogger("edensplit.client")
T = TypeVar("T")
# A request's seconds, step by step: building its Call (pack), sending it and getting its answer over every attempt
# (exchange: with shared memory, writing and taking the segments too), reading the answer (unpack).
# `edensplit bench --mode overhead` sets one on each service.
StepTimer = Callable[[Call, float, float, float], None]


def check_shm(shm: bool, payload: Payload) -> bool:
    """Shared-memory handles travel on the binary path only."""
    if shm and payload != "binary":
        raise EdenError("shared memory (--shm) moves binary bodies: use it with --payload binary",
                        code=ErrorCode.INVALID_PARAMETER)
    return shm


class _Service:
    """What both servers' clients share: the policy-wrapped transport, shared memory, health, closing, and a step
    timer."""

    def __init__(self, transport: Transport | Client, payload: Payload, shm: bool = False):
        self.client = transport if isinstance(transport, Client) else Client(transport)
        self.payload = check_payload(payload)
        self.shm = check_shm(shm, self.payload)  # bodies and answers through shared memory (server on this host)
        self.timer: StepTimer | None = None  # unset, a request costs no clock reading
        self._spares: Spares | None = None  # with shm: segments for request bodies, allocated ahead
        self._spares_lock = threading.Lock()  # pairs in flight share a service: one Spares, closed with it

    @property
    def transport(self) -> Transport:
        """The transport under the client's policy."""
        return self.client.transport

    def _send(self, call: requests.Call) -> requests.Answer:
        """`call`'s answer; with `shm`, its binary body and its answer through shared memory, or, from a server
        that takes no handles (SHM_DISABLED: said once), the bytes."""
        if not (self.shm and call.binary):
            return self.client.send(call)
        try:
            with self._spares_lock:
                if self._spares is None:
                    self._spares = shared.spares()
                spares = self._spares
            return shared.taken(shared.send(self.client, shared.asking_handles(call), spares))
        except EdenError as exc:
            if exc.code != ErrorCode.SHM_DISABLED or call.content_type == SHM_MEDIA_TYPE:
                raise
        log.warning("the %s takes no shared-memory handles (ALLOW_SHM is off there): bodies go as bytes",
                    self.client.transport.name)
        self.shm = False
        return self.client.send(call)

    def _call(self, build: Callable[[], Call], read: Callable[[Answer], T],
              send: Callable[[Call], Answer] | None = None) -> T:
        """Build a request, send it (`send`, else `_send`) and read its answer (each step timed when a timer is
        set)."""
        send = send or self._send
        if self.timer is None:
            return read(send(build()))
        started = time.perf_counter()
        call = build()
        packed = time.perf_counter()
        answer = send(call)
        answered = time.perf_counter()
        out = read(answer)
        self.timer(call, packed - started, answered - packed, time.perf_counter() - answered)
        return out

    def health(self) -> dict[str, Any]:
        """The server's health (HTTP GET /health; over WebSocket, an application-level ping)."""
        return self.client.health()

    def close(self) -> None:
        """Close the transport (and remove spare segments)."""
        with self._spares_lock:
            spares, self._spares = self._spares, None
        if spares is not None:
            spares.close()
        self.client.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Cloud(_Service):
    """The cloud encoder: `encode` (a pair) and `encode_frame` (one video frame) -> EncodedBlob. With `shm` (a
    cloud on this host) the frames go and the encodings come back as shared-memory handles, which the client
    passes on to the edge; a cloud that takes none gets and gives the bytes."""

    WS_PATH = "/ws/encode"

    def __init__(self, transport: Transport | Client, *, payload: Payload = "binary",
                 wire_dtype: str = codecs.DEFAULT, shm: bool = False):
        super().__init__(transport, payload, shm)
        self.options = Options.from_flat({"wire_dtype": wire_dtype})  # INVALID_PARAMETER for an unknown one

    def encode(self, frame0: np.ndarray, frame1: np.ndarray, *, request_id: str | None = None) -> EncodedBlob:
        """A pair -> its enc_out blob (both frames, and their difference)."""
        blob = self._call(lambda: requests.encode(frame0, frame1, self.options, payload=self.payload,
                                                  request_id=request_id), requests.blob_from)
        return replace(blob, renew=lambda: self.encode(frame0, frame1)) if blob.handle is not None else blob

    def encode_frame(self, frame: np.ndarray, *, request_id: str | None = None) -> EncodedBlob:
        """One video frame -> its enc_out blob (frame-once sessions)."""
        blob = self._call(lambda: requests.encode_frame(frame, self.options, payload=self.payload,
                                                        request_id=request_id), requests.blob_from)
        return replace(blob, renew=lambda: self.encode_frame(frame)) if blob.handle is not None else blob


class Edge(_Service):
    """The edge: `interpolate` (a pair's blob), `session_frame` (frame-once), `interpolate_frames` (flow B). An
    encoding that came as a shared-memory handle goes to it as the handle (as the bytes, to an edge that takes
    none); with `shm`, frames go and come back through shared memory too."""

    WS_PATH = "/ws/interpolate"

    def __init__(self, transport: Transport | Client, *, payload: Payload = "binary", options: Options | None = None,
                 shm: bool = False):
        """`options`: sent with every request (num_steps, method, vae_scaler, vae_shift); per-call ones are added."""
        super().__init__(transport, payload, shm)
        self.options = options or Options()
        self.takes_handles = True  # until it answers SHM_DISABLED: then encodings from shared memory go as bytes

    def _options(self, **per_call: Any) -> Options:
        """The client's options plus this call's (validated: a bad value is INVALID_PARAMETER here)."""
        return Options.from_flat({**self.options.flat(), **per_call})

    def _call_encoded(self, build: Callable[[EncodedBlob], Call], encoded: EncodedBlob,
                      read: Callable[[Answer], T]) -> T:
        """The call `build` makes of `encoded`, sent and its answer read: a shared-memory handle goes as the bytes
        to an edge that takes no handles, and is asked for again (`renew`) once when its segment is gone (a retry
        after the edge took it, or a second use)."""
        if encoded.handle is not None and not self.takes_handles:
            encoded = encoded.bytes_only()

        def send(call: Call) -> Answer:
            try:
                return self._send(call)
            except EdenError as exc:
                if encoded.handle is None or exc.code not in (ErrorCode.SHM_DISABLED, ErrorCode.SHM_NOT_FOUND):
                    raise
                if exc.code == ErrorCode.SHM_DISABLED:
                    self.takes_handles = False
                    log.warning("the edge takes no shared-memory handles (ALLOW_SHM is off there): encodings go as "
                                "bytes")
                    return self._send(build(encoded.bytes_only()))
                if encoded.renew is None:
                    raise
                return self._send(build(encoded.renew()))

        return self._call(lambda: build(encoded), read, send)

    @staticmethod
    def _frame(answer: Answer) -> np.ndarray:
        frame = requests.frame_from(answer)
        if frame is None:
            raise EdenError("the edge stored the frame but answered without interpolating",
                            code=ErrorCode.UPSTREAM_ERROR)
        return frame

    def interpolate(self, pair: EncodedBlob, *, seed: int = 0) -> np.ndarray:
        """A pair's blob -> the middle frame."""
        options = self._options(seed=seed)
        return self._call_encoded(lambda p: requests.interpolate(p, options, payload=self.payload), pair,
                                  self._frame)

    def session_frame(self, session_id: str, index: int, frame: EncodedBlob | np.ndarray, *,
                      difference: float | None = None, seed: int = 0, interpolate: bool | None = None
                      ) -> np.ndarray | None:
        """Frame `index` of a frame-once session: its blob (flow A) or the frame itself (flow B, the edge has the
        cloud encode it). Stores it; for index > 0 (unless interpolate=False) returns the frame (index-1, index)."""
        options = self._options(seed=seed, difference=difference, interpolate=interpolate)
        if isinstance(frame, np.ndarray):
            pixels = frame
            return self._call(lambda: requests.session_frame(session_id, index, pixels, options,
                                                             payload=self.payload), requests.frame_from)
        return self._call_encoded(
            lambda f: requests.session_frame(session_id, index, f, options, payload=self.payload), frame,
            requests.frame_from)

    def drop_session(self, session_id: str) -> bool:
        """Have the edge forget a finished session now (`DELETE /api/v1/sessions/{id}`, one attempt, no retries),
        rather than hold its encodings until they expire; whether it answered. An edge that does not answer (gone,
        restarted) lets the session expire."""
        try:
            self.client.transport.delete(f"/api/v1/sessions/{session_id}")
        except EdenError as exc:  # no answer, or an error answer: the job is done, its clean-up never fails it
            log.debug("the %s did not drop session %s: %s", self.client.transport.name, session_id, exc)
            return False
        return True

    def interpolate_frames(self, frame0: np.ndarray, frame1: np.ndarray, *, seed: int = 0) -> np.ndarray:
        """Flow B: raw frames to the edge, which calls the cloud itself."""
        return self._call(lambda: requests.interpolate_frames(frame0, frame1, self._options(seed=seed),
                                                              payload=self.payload), self._frame)


class AsyncCloud:
    """The cloud from asyncio code (the edge in flow B): `await encode(...)` / `await encode_frame(...)`. With
    `shm` (a cloud on this host) the encodings come back as shared-memory handles (the frames go as bytes)."""

    def __init__(self, transport: AsyncTransport | AsyncClient, *, payload: Payload = "binary",
                 wire_dtype: str = codecs.DEFAULT, shm: bool = False):
        self.client = transport if isinstance(transport, AsyncClient) else AsyncClient(transport)
        self.payload = check_payload(payload)
        self.options = Options.from_flat({"wire_dtype": wire_dtype})
        self.shm = check_shm(shm, self.payload)

    @property
    def transport(self) -> AsyncTransport:
        return self.client.transport

    @transport.setter
    def transport(self, transport: AsyncTransport) -> None:
        """Another transport under the same policy and hooks (tests reach an in-process cloud this way)."""
        self.client = AsyncClient(transport, self.client.hooks)

    async def encode(self, frame0: np.ndarray, frame1: np.ndarray, *, request_id: str | None = None
                     ) -> EncodedBlob:
        """A pair -> its enc_out blob (a handle to it, with `shm`, from a cloud that gives them)."""
        call = requests.encode(frame0, frame1, self.options, payload=self.payload, request_id=request_id)
        return requests.blob_from(await self.client.send(shared.asking_handles(call) if self.shm else call))

    async def encode_frame(self, frame: np.ndarray, *, request_id: str | None = None) -> EncodedBlob:
        """One frame -> its enc_out blob (a handle to it, with `shm`, from a cloud that gives them)."""
        call = requests.encode_frame(frame, self.options, payload=self.payload, request_id=request_id)
        return requests.blob_from(await self.client.send(shared.asking_handles(call) if self.shm else call))

    async def health(self) -> dict[str, Any]:
        """GET /health, retried as requests are."""
        return await self.client.health()

    async def aclose(self) -> None:
        """Close the transport."""
        await self.client.aclose()

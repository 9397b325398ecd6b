"""WebSocket clients: one reused connection per server, many requests in flight, reconnection.

`WsChannel` owns the connection: a reader thread matches answers to requests by request_id, at most
`window` requests are unanswered at once, and when the connection drops the reader reconnects (with
backoff) and resends every unanswered request. Answers to a request that was already answered are
dropped, so a resend never yields a frame twice. Pings (every `ping_interval` s, `ping_timeout` to
answer) notice a dead peer. permessage-deflate is off: on float tensors it costs far more CPU time
than the bytes it saves (see docs/protocol.md, Compression).

`WsCloudClient` and `WsEdgeClient` have the HTTP clients' methods, so every flow runs on either.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from edensplit import __version__
from edensplit.client.http import RetryPolicy, ServerError
from edensplit.client.payloads import EncodedBlob, Sampling, frame_from_container, frame_from_json, images_json
from edensplit.errors import EdenError, ErrorCode
from edensplit.wire import WIRE_DTYPES, pack_frames
from edensplit.wire.messages import CHUNK_BYTES, Reassembler, split_binary, split_text

log = logging.getLogger("edensplit.client")
Payload = Literal["json", "binary"]


@dataclass
class _Pending:
    frames: list[Any]
    done: threading.Event = field(default_factory=threading.Event)
    answer: tuple[dict[str, Any], bytes] | None = None


class WsChannel:
    """A reconnecting WebSocket to one endpoint; `request` is thread-safe and blocks for its answer."""

    def __init__(self, url: str, *, binary: bool = True, window: int = 4, timeout: float = 30.0, retries: int = 3,
                 chunk_bytes: int = CHUNK_BYTES, ping_interval: float = 10.0, ping_timeout: float = 10.0,
                 name: str = "server"):
        self.url, self.binary, self.timeout, self.name = url, binary, timeout, name
        self.retry = RetryPolicy(retries)
        self.chunk_bytes, self.ping_interval, self.ping_timeout = chunk_bytes, ping_interval, ping_timeout
        self.reconnects = 0
        self._window = threading.BoundedSemaphore(window)
        self._lock = threading.Lock()  # guards _pending, _ready, _conn
        self._send_lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._ready = False
        self._closed = False
        self._conn = self._connect_with_retries(deadline=time.monotonic() + timeout)
        self._ready = True
        self._reader = threading.Thread(target=self._read_forever, name=f"edensplit-ws-{name}", daemon=True)
        self._reader.start()

    # -- connection ----------------------------------------------------------------------------------

    def _connect(self) -> ClientConnection:
        return connect(self.url, legacy=True, open_timeout=min(self.timeout, 10.0), close_timeout=2.0, compression=None,
                       max_size=2 * self.chunk_bytes + 2**20, ping_interval=self.ping_interval,
                       ping_timeout=self.ping_timeout,
                       additional_headers={"X-Client-Version": f"edensplit/{__version__}"})

    def _connect_with_retries(self, deadline: float) -> ClientConnection:
        attempt = 0
        while True:
            try:
                return self._connect()
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                if self._closed or time.monotonic() >= deadline:
                    raise EdenError(f"cannot reach the {self.name} at {self.url}: {type(exc).__name__}: {exc}",
                                    code=ErrorCode.UPSTREAM_ERROR) from None
                time.sleep(self.retry.delay(attempt))
                attempt += 1
            except InvalidURI as exc:
                raise EdenError(f"invalid WebSocket URL {self.url}: {exc}", code=ErrorCode.INVALID_PARAMETER) from None

    def _read_forever(self) -> None:
        while not self._closed:
            reassembler = Reassembler(max_bytes=2**34)
            try:
                for message in self._conn:
                    self._deliver(message, reassembler)
            except ConnectionClosed:
                pass
            except Exception:  # a bug must not kill the reader silently
                log.exception("%s: reader failed", self.name)
            with self._lock:
                self._ready = False
            if self._closed:
                return
            log.warning("%s: connection to %s lost; reconnecting", self.name, self.url)
            self._reconnect()

    def _reconnect(self) -> None:
        while not self._closed:
            try:
                conn = self._connect_with_retries(deadline=time.monotonic() + self.timeout)
            except EdenError as exc:
                self._fail_pending(exc)  # nobody can wait forever; keep trying for later requests
                continue
            with self._lock:
                self._conn, self._ready = conn, True
                resend = list(self._pending.values())
            self.reconnects += 1
            log.warning("%s: reconnected; resending %d unanswered requests", self.name, len(resend))
            for pending in resend:
                self._send(pending.frames)
            return

    def _fail_pending(self, exc: EdenError) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for p in pending.values():
            p.answer = ({"type": "error", "error": {"code": str(exc.code), "message": exc.message}}, b"")
            p.done.set()

    def _deliver(self, message: str | bytes, reassembler: Reassembler) -> None:
        try:
            if isinstance(message, bytes):
                whole = reassembler.feed_binary(message)
            else:
                text = reassembler.feed_text(message)
                whole = None if text is None else (text, b"")
        except EdenError as exc:
            log.warning("%s: unreadable message: %s", self.name, exc.message)
            return
        if whole is None:
            return
        header, payload = whole
        with self._lock:
            pending = self._pending.get(str(header.get("request_id")))
        if pending is None or pending.done.is_set():
            return  # an answer to a request already answered (resent after a reconnect): dropped
        pending.answer = (header, payload)
        pending.done.set()

    def _send(self, frames: list[Any]) -> None:
        try:
            with self._send_lock:
                for frame in frames:
                    self._conn.send(frame)
        except (ConnectionClosed, OSError):
            pass  # the reader notices, reconnects and resends every unanswered request

    # -- requests ------------------------------------------------------------------------------------

    def request(self, message: dict[str, Any], data: bytes = b"") -> tuple[dict[str, Any], bytes]:
        """Send one request (binary: `message` is the header and `data` the payload) and wait for its answer."""
        attempt = 0
        while True:
            rid = uuid.uuid4().hex
            header = {**message, "request_id": rid}
            frames = split_binary(header, data, self.chunk_bytes) if self.binary else split_text(header,
                                                                                               self.chunk_bytes)
            with self._window:
                pending = _Pending(frames)
                with self._lock:
                    self._pending[rid] = pending
                    ready = self._ready
                if ready:
                    self._send(frames)
                answered = pending.done.wait(self.timeout + self.timeout * self.retry.retries)
                with self._lock:
                    self._pending.pop(rid, None)
            if not answered:
                raise EdenError(f"no answer from the {self.name} at {self.url} within the timeout",
                                code=ErrorCode.UPSTREAM_ERROR)
            answer, payload = pending.answer or ({}, b"")
            if answer.get("type") != "error":
                return answer, payload
            error = answer.get("error") or {}
            code = ErrorCode(error.get("code", "INTERNAL_ERROR"))
            if code in (ErrorCode.OVERLOADED, ErrorCode.NOT_READY) and attempt < self.retry.retries:
                time.sleep(self.retry.delay(attempt))
                attempt += 1
                continue
            raise ServerError(error.get("message", "error"), code=code, status=code.status,
                              server=f"{self.name} {self.url}")

    def close(self) -> None:
        self._closed = True
        try:
            self._conn.close()
        except Exception:  # closing a connection that is already gone
            log.debug("%s: close failed", self.name, exc_info=True)


def ws_url(base_url: str, path: str) -> str:
    """http://host:port -> ws://host:port/path (https -> wss)."""
    base = base_url.rstrip("/")
    if base.startswith("http"):
        base = "ws" + base[4:]
    return base + path


class WsCloudClient:
    """The cloud over WS /ws/encode: `encode` (a pair) and `encode_frame` (one frame)."""

    def __init__(self, base_url: str, *, payload: Payload = "binary", wire_dtype: str = "float32",
                 **kwargs: Any):
        if wire_dtype not in WIRE_DTYPES:
            raise EdenError(f"wire_dtype must be one of {', '.join(WIRE_DTYPES)}", code=ErrorCode.INVALID_PARAMETER)
        self.wire_dtype, self.payload = wire_dtype, payload
        self.channel = WsChannel(ws_url(base_url, "/ws/encode"), binary=payload == "binary", name="cloud server",
                                 **kwargs)

    def _encode(self, kind: str, frames: dict[str, np.ndarray]) -> EncodedBlob:
        if self.payload == "binary":
            _, blob = self.channel.request({"type": kind, "wire_dtype": self.wire_dtype}, pack_frames(frames))
            return EncodedBlob.from_bytes(blob)
        message = {"type": kind, "wire_dtype": self.wire_dtype, "payload": images_json(**frames)}
        answer, _ = self.channel.request(message)
        return EncodedBlob.from_json(answer["payload"]["enc_out"], answer["metadata"])

    def encode(self, frame0: np.ndarray, frame1: np.ndarray) -> EncodedBlob:
        return self._encode("encode", {"frame0": frame0, "frame1": frame1})

    def encode_frame(self, frame: np.ndarray) -> EncodedBlob:
        return self._encode("encode_frame", {"frame": frame})

    def close(self) -> None:
        self.channel.close()


class WsEdgeClient:
    """The edge over WS /ws/interpolate: pairs, frame-once sessions and flow B."""

    def __init__(self, base_url: str, *, payload: Payload = "binary", sampling: Sampling | None = None,
                 **kwargs: Any):
        self.payload, self.sampling = payload, sampling or Sampling()
        self.channel = WsChannel(ws_url(base_url, "/ws/interpolate"), binary=payload == "binary",
                                 name="edge server", **kwargs)

    def _frame(self, kind: str, *, data: bytes, body: dict[str, Any], flat: dict[str, Any]) -> np.ndarray | None:
        if self.payload == "binary":
            answer, payload = self.channel.request({"type": kind, **flat}, data)
            return frame_from_container(payload) if payload else None
        answer, _ = self.channel.request({"type": kind, "payload": body})
        generated = (answer.get("payload") or {}).get("generated_frame")
        return frame_from_json(generated) if generated else None

    def interpolate(self, pair: EncodedBlob, *, seed: int = 0) -> np.ndarray:
        body = {"enc_out": pair.b64 if self.payload == "json" else "", **self.sampling.json(seed)}
        return self._frame("interpolate", data=pair.raw if self.payload == "binary" else b"", body=body,
                           flat=self.sampling.flat(seed))

    def session_frame(self, session_id: str, index: int, frame: EncodedBlob | np.ndarray, *,
                      difference: float | None = None, seed: int = 0, interpolate: bool | None = None
                      ) -> np.ndarray | None:
        ids = {"session_id": session_id, "index": index}
        raw = isinstance(frame, np.ndarray)
        flat = {**ids, **self.sampling.flat(seed, difference=difference, interpolate=interpolate)}
        if self.payload == "binary":
            data = pack_frames({"frame": frame}) if raw else frame.raw
            return self._frame("session_frame", data=data, body={}, flat=flat)
        content = images_json(frame=frame) if raw else {"enc_out": frame.b64}
        body = {**ids, **content, **self.sampling.json(seed, difference=difference, interpolate=interpolate)}
        return self._frame("session_frame", data=b"", body=body, flat=flat)

    def interpolate_frames(self, frame0: np.ndarray, frame1: np.ndarray, *, seed: int = 0) -> np.ndarray:
        frames = {"frame0": frame0, "frame1": frame1}
        body = {**images_json(**frames), **self.sampling.json(seed)} if self.payload == "json" else {}
        data = pack_frames(frames) if self.payload == "binary" else b""
        return self._frame("interpolate_frames", data=data, body=body, flat=self.sampling.flat(seed))

    def close(self) -> None:
        self.channel.close()

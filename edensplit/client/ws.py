"""The WebSocket transport: one reused connection per server endpoint, many requests in flight, reconnection.

`WsTransport` owns the connection: a reader thread matches answers to requests by request_id, at most
`window` requests are unanswered at once, and when the connection drops the reader reconnects (with
backoff) and resends every unanswered request. Answers to a request that was already answered are
dropped, so a resend never yields a frame twice. Pings (every `ping_interval` s, `ping_timeout` to
answer) notice a dead peer. permessage-deflate is off: on float tensors it costs far more CPU time
than the bytes it saves (see docs/protocol.md, Compression).

A `Call` with a binary body travels as an EDS1 binary message (its options, identity fields and
`content_type` in the header); one with a JSON document as a text message with the document as
`payload`. Either is chunked when large (edensplit.wire.messages).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from edensplit.client.requests import JSON, Answer, Call
from edensplit.client.transport import CLIENT_VERSION, RetryPolicy, server_error
from edensplit.errors import EdenError, ErrorCode
from edensplit.wire.messages import CHUNK_BYTES, Reassembler, split_binary, split_text

log = logging.getLogger("edensplit.client")
RETRY_CODES = frozenset({ErrorCode.OVERLOADED, ErrorCode.NOT_READY})
PING = Call("ping", "/health", {}, JSON, JSON, document={})


def ws_url(base_url: str, path: str = "") -> str:
    """http://host:port + path -> ws://host:port/path (https -> wss); ws:// URLs are kept."""
    base = base_url.rstrip("/")
    if base.startswith("http"):
        base = "ws" + base[4:]
    return base + path


def message(call: Call, request_id: str) -> dict[str, Any]:
    """The JSON message (text) or EDS1 header (binary) of `call`: type, request_id, identity fields, options;
    a binary one names its payload's media type, a JSON one carries its document as `payload`."""
    head = {"type": call.operation, "request_id": request_id, **call.ids, **call.options}
    if call.binary:
        head["content_type"] = call.content_type
    else:
        head["payload"] = call.document or {}
    return head


def frames_of(call: Call, request_id: str, chunk_bytes: int = CHUNK_BYTES) -> list[Any]:
    """The WebSocket messages carrying `call` (several when it is over `chunk_bytes`)."""
    head = message(call, request_id)
    return split_binary(head, call.body or b"", chunk_bytes) if call.binary else split_text(head, chunk_bytes)


def answer_of(header: dict[str, Any], payload: bytes, call: Call) -> Answer:
    """A success message -> Answer: `metadata`, the JSON `payload` fields, the binary payload."""
    data = header.get("payload")
    kind = header.get("content_type") or (call.accept if payload else JSON)
    return Answer(header.get("metadata") or {}, data if isinstance(data, dict) else {}, payload, kind)


@dataclass
class _Pending:
    frames: list[Any]
    done: threading.Event = field(default_factory=threading.Event)
    answer: tuple[dict[str, Any], bytes] | None = None


class WsTransport:
    """A reconnecting WebSocket to one endpoint; `send` is thread-safe and blocks for its answer."""

    def __init__(self, url: str, *, path: str = "", window: int = 4, timeout: float = 30.0, retries: int = 3,
                 chunk_bytes: int = CHUNK_BYTES, ping_interval: float = 10.0, ping_timeout: float = 10.0,
                 close_timeout: float = 2.0, name: str = "server"):
        """`url`: ws(s):// or http(s):// base URL, `path` appended (e.g. Cloud.WS_PATH). Connects now."""
        self.url, self.timeout, self.name = ws_url(url, path), timeout, name
        self.retry = RetryPolicy(retries)
        self.chunk_bytes, self.ping_interval, self.ping_timeout = chunk_bytes, ping_interval, ping_timeout
        self.close_timeout = close_timeout
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
        return connect(self.url, legacy=True, open_timeout=min(self.timeout, 10.0), close_timeout=self.close_timeout,
                       compression=None, max_size=2 * self.chunk_bytes + 2**20, ping_interval=self.ping_interval,
                       ping_timeout=self.ping_timeout, additional_headers={"X-Client-Version": CLIENT_VERSION})

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
                for received in self._conn:
                    self._deliver(received, reassembler)
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

    def _deliver(self, received: str | bytes, reassembler: Reassembler) -> None:
        try:
            if isinstance(received, bytes):
                whole = reassembler.feed_binary(received)
            else:
                text = reassembler.feed_text(received)
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

    def send(self, call: Call) -> Answer:
        """Send `call` and wait for its answer; OVERLOADED / NOT_READY are retried with back-off."""
        attempt = 0
        while True:
            rid = uuid.uuid4().hex
            frames = frames_of(call, rid, self.chunk_bytes)
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
            header, payload = pending.answer or ({}, b"")
            if header.get("type") != "error":
                return answer_of(header, payload, call)
            error = server_error(header.get("error"), server=f"{self.name} {self.url}",
                                 fallback=f"unreadable error message {str(header)[:200]}")
            if error.code in RETRY_CODES and attempt < self.retry.retries:
                time.sleep(self.retry.delay(attempt))
                attempt += 1
                continue
            raise error

    def health(self) -> dict[str, Any]:
        """An application-level ping: {"status": "ok", ...} once the server's pong arrives."""
        self.send(PING)
        return {"status": "ok", "url": self.url, "reconnects": self.reconnects}

    def close(self) -> None:
        """Close the connection; the reader stops instead of reconnecting."""
        self._closed = True
        try:
            self._conn.close()
        except Exception:  # closing a connection that is already gone
            log.debug("%s: close failed", self.name, exc_info=True)

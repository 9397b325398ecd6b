"""The WebSocket transport: one reused connection per server endpoint, many requests in flight.

`WsTransport` owns the connection: a reader thread per connection matches answers to requests by request_id,
and at most `window` requests are unanswered at once. `send` makes one attempt of a request: it connects if
there is no live connection (a handshake refused with an HTTP error is a `ServerError`, a connection that
cannot be made a `TransportError`), sends the request's messages under its request id, and waits `timeout`
for the answer. A request still unanswered on a live connection is not sent on it again at the next attempt,
only waited for (the server refuses an id already in flight on a connection as a conflict); one whose
connection dropped is sent again on the next. Answers to a request that was already answered are dropped, so a
resend never yields a frame twice. Retries, back-off and the outage budget are the policy layer's
(`edensplit.client.policy`). Pings (every `ping_interval` s, `ping_timeout` to answer) notice a dead peer.
permessage-deflate is off: on float tensors it costs far more CPU time than the bytes it saves (see
docs/protocol.md, Compression).

A `Call` with a binary body travels as an EDS1 binary message (its options, identity fields and
`content_type` in the header); one with a JSON document as a text message with the document as
`payload`. Either is chunked when large (edensplit.wire.messages).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection, connect

from edensplit.client.http import READ_BYTES
from edensplit.client.requests import JSON, Answer, Call
from edensplit.client.transport import ClientConfig, ServerError, TransportError, connection_failure, http_error
from edensplit.client.transport import server_error as error_message
from edensplit.errors import EdenError, ErrorCode
from edensplit.tracing import outgoing
from edensplit.wire.messages import CHUNK_BYTES, Reassembler, split_binary, split_text

log = logging.getLogger("edensplit.client")
PING = Call("ping", "/health", {}, JSON, JSON, document={})


class _Connection(ClientConnection):
    """websockets' sync client connection, reading the socket 1 MiB at a time: its default, 64 KiB, is one round of
    its parser in Python per 64 KiB read, ~400 for a 25 MB answer (docs/performance.md, overhead)."""

    recv_bufsize = READ_BYTES


OPEN_GRACE_S = 5.0  # past open_timeout + close_timeout, how long a connect may take before it is given up on


def bounded_open(open_: Callable[[], Any], limit_s: float) -> Any:
    """`open_()` on a thread of its own, waited for at most `limit_s` (TimeoutError past it): websockets' connect
    can stay blocked far past its open_timeout after a failed TLS handshake, joining its reader thread (seen once
    in four runs of the suite here, for about nine minutes), and a client must not hang on it. What it opens
    after the wait was given up on is closed."""
    opened: Future[Any] = Future()

    def run() -> None:
        try:
            conn = open_()
        except BaseException as exc:  # handed to the caller's thread (unless it gave up waiting)
            with contextlib.suppress(InvalidStateError):
                opened.set_exception(exc)
            return
        try:
            opened.set_result(conn)
        except InvalidStateError:  # given up on (cancelled): nobody will use it
            conn.close()

    threading.Thread(target=run, name="edensplit-ws-connect", daemon=True).start()
    try:
        return opened.result(timeout=limit_s)
    except TimeoutError:
        if opened.cancel():  # still not open: from now on, what it opens is closed
            raise TimeoutError(f"the connection was not open within {limit_s:.0f} s") from None
        return opened.result()  # done meanwhile (or its own TimeoutError, raised again)


def ws_url(base_url: str, path: str = "") -> str:
    """http://host:port + path -> ws://host:port/path (https -> wss); ws:// URLs are kept."""
    base = base_url.rstrip("/")
    if base.startswith("http"):
        base = "ws" + base[4:]
    return base + path


def http_origin(url: str) -> str:
    """ws://host:port/path -> http://host:port (wss -> https)."""
    parts = urlsplit(url)
    return f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"


def message(call: Call, request_id: str) -> dict[str, Any]:
    """The JSON message (text) or EDS1 header (binary) of `call`: type, request_id, identity fields, options;
    a binary one names its payload's media type and the answers it accepts, a JSON one carries its document as
    `payload`."""
    head = {"type": call.operation, "request_id": request_id, **call.ids, **call.options, **outgoing()}
    if call.binary:
        head["content_type"], head["accept"] = call.content_type, call.accept
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
    """One request in flight: the connection it was last sent on, and how the wait ended."""

    conn: ClientConnection | None = None
    answer: tuple[dict[str, Any], bytes] | None = None
    lost: bool = False  # the connection it was sent on dropped before the answer came
    event: threading.Event = field(default_factory=threading.Event)


class WsTransport:
    """A reconnecting WebSocket to one endpoint; `send` is thread-safe and blocks for its answer."""

    def __init__(self, url: str, config: ClientConfig | None = None, *, path: str = "", window: int = 4,
                 chunk_bytes: int = CHUNK_BYTES, ping_interval: float = 10.0, ping_timeout: float = 10.0,
                 close_timeout: float = 2.0, **settings: Any):
        """`url`: ws(s):// or http(s):// base URL, `path` appended (e.g. Cloud.WS_PATH). `config`, or its fields
        as keywords (`ClientConfig.of`: timeout, retries, retry_for, retry_policy, api_key, ca_cert, name): the
        key goes in the handshake's `Authorization: Bearer`, the CA bundle verifies a wss server."""
        self.config = config or ClientConfig.of(**settings)
        self.url = ws_url(url, path)
        self.config.check_url(self.url)
        self.chunk_bytes, self.ping_interval, self.ping_timeout = chunk_bytes, ping_interval, ping_timeout
        self.close_timeout = close_timeout
        self._ssl = self.config.tls if self.url.startswith("wss://") else None  # websockets refuses ssl= on ws://
        self.connections = 0
        self._window = threading.BoundedSemaphore(window)
        self._lock = threading.Lock()  # guards _pending and _conn
        self._connect_lock = threading.Lock()  # one thread (re)connects at a time
        self._send_lock = threading.Lock()
        self._stop = threading.Event()  # set by close()
        self._pending: dict[str, _Pending] = {}
        self._conn: ClientConnection | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def reconnects(self) -> int:
        """Connections made after the first one."""
        return max(self.connections - 1, 0)

    # -- connection ----------------------------------------------------------------------------------

    def _closed(self) -> TransportError:
        return TransportError(f"the connection to the {self.name} at {self.url}", "closed", retryable=False)

    def _refused(self, exc: InvalidStatus) -> ServerError:
        """A handshake answered with an HTTP error (401 without the right key, 503 while starting...)."""
        response = exc.response
        return http_error(response.status_code, response.body or b"", response.headers.get("Retry-After"),
                          f"{self.name} {self.url}", "handshake refused: ")

    def _connection(self) -> ClientConnection:
        """The live connection, or one new attempt to make it."""
        with self._connect_lock:
            with self._lock:
                if self._conn is not None:
                    return self._conn
            if self._stop.is_set():
                raise self._closed()
            try:
                open_timeout = min(self.config.timeout, 10.0)
                conn = bounded_open(lambda: connect(
                    self.url, legacy=True, create_connection=_Connection, open_timeout=open_timeout,
                    close_timeout=self.close_timeout, compression=None, max_size=2 * self.chunk_bytes + 2**20,
                    ping_interval=self.ping_interval, ping_timeout=self.ping_timeout,
                    additional_headers=self.config.headers(), ssl=self._ssl),
                    open_timeout + (self.close_timeout or 0) + OPEN_GRACE_S)
            except InvalidURI as exc:
                raise EdenError(f"invalid WebSocket URL {self.url}: {exc}", code=ErrorCode.INVALID_PARAMETER) from None
            except InvalidStatus as exc:
                raise self._refused(exc) from None
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                raise connection_failure(f"cannot reach the {self.name} at {self.url}", exc) from None
            with self._lock:
                self._conn = conn
                self.connections += 1
            if self.connections > 1:
                log.warning("%s: reconnected to %s", self.name, self.url)
            threading.Thread(target=self._read, args=(conn,), name=f"edensplit-ws-{self.name}", daemon=True).start()
            return conn

    def _read(self, conn: ClientConnection) -> None:
        """Deliver the answers arriving on `conn` until it closes; then every request sent on it is lost."""
        reassembler = Reassembler(max_bytes=2**34)
        try:
            for received in conn:
                self._deliver(received, reassembler)
        except ConnectionClosed:
            pass
        except Exception:  # a bug must not kill the reader silently
            log.exception("%s: reader failed", self.name)
        self._lost(conn)

    def _lost(self, conn: ClientConnection) -> None:
        """`conn` is gone: forget it, and wake every request waiting for an answer on it."""
        with self._lock:
            if self._conn is conn:
                self._conn = None
            waiting = [p for p in self._pending.values() if p.conn is conn and p.answer is None]
            for pending in waiting:
                pending.lost = True
        if waiting and not self._stop.is_set():
            log.warning("%s: connection to %s lost with %d requests unanswered; they are sent again",
                        self.name, self.url, len(waiting))
        for pending in waiting:
            pending.event.set()
        try:
            conn.close()
        except Exception:  # closing a connection that is already gone
            log.debug("%s: close failed", self.name, exc_info=True)

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
            if pending is None or pending.answer is not None:
                return  # an answer to a request already answered (sent again after a reconnect): dropped
            pending.answer = (header, payload)
        pending.event.set()

    def _send_on(self, conn: ClientConnection, pending: _Pending, frames: list[Any]) -> None:
        """Send `frames` on `conn` for `pending`, unless they are already there unanswered (a request id in flight
        on a connection is never sent on it again: the server would refuse it as a conflict); a connection that
        fails meanwhile counts as lost."""
        with self._lock:
            if pending.answer is not None:
                return  # the answer to an earlier attempt came during the back-off: nothing to send
            if pending.conn is conn and not pending.lost:
                pending.event.clear()
                return  # sent on this live connection and not answered yet: wait on
            pending.conn, pending.lost = conn, False
            pending.event.clear()
            alive = self._conn is conn
        if not alive:
            self._lost(conn)
            return
        try:
            with self._send_lock:
                for frame in frames:
                    conn.send(frame)
        except (ConnectionClosed, OSError):
            self._lost(conn)  # the reader may not have noticed yet

    # -- requests ------------------------------------------------------------------------------------

    def send(self, call: Call, request_id: str) -> Answer:
        """One attempt of `call` under `request_id`: its answer, or ServerError (an error answer, a refused
        handshake) / TransportError (no connection, the connection lost, no answer within the timeout)."""
        with self._lock:
            pending = self._pending.get(request_id)
        if pending is None:
            self._window.acquire()  # held until done(request_id): the request counts as in flight till then
            pending = _Pending()
            with self._lock:
                self._pending[request_id] = pending
        frames = frames_of(call, request_id, self.chunk_bytes)
        self._send_on(self._connection(), pending, frames)
        answered = pending.event.wait(self.config.timeout)
        if self._stop.is_set():
            raise self._closed()
        with self._lock:
            answer, lost = pending.answer, pending.lost
            if answer is not None and answer[0].get("type") == "error":
                pending.answer, pending.conn = None, None  # answered: the next attempt is sent anew
        if answer is None:
            why = "the connection was lost" if answered and lost else f"none within {self.config.timeout:g} s"
            raise TransportError(f"no answer from the {self.name} at {self.url}", why)  # then: waited for again
        header, payload = answer
        if header.get("type") == "error":
            raise error_message(header.get("error"), server=f"{self.name} {self.url}",
                               fallback=f"unreadable error message {str(header)[:200]}")
        return answer_of(header, payload, call)

    def delete(self, path: str) -> None:
        """DELETE `path` over plain HTTP(S) at this server's origin (the WebSocket server is an HTTP server; the
        message protocol has no deletes), once: ServerError for an error answer, TransportError for none."""
        origin = http_origin(self.url)
        try:
            with httpx.Client(timeout=self.config.timeout, verify=self.config.tls or True) as http:
                response = http.delete(origin + path, headers=self.config.headers())
        except httpx.TransportError as exc:
            raise connection_failure(f"the {self.name} at {origin}{path}", exc) from None
        if response.status_code >= 400:
            raise http_error(response.status_code, response.content, response.headers.get("Retry-After"),
                             f"{self.name} {origin}", "error: ")

    def done(self, request_id: str) -> None:
        """The request is over: its place in the window is free, late answers to it are dropped."""
        with self._lock:
            pending = self._pending.pop(request_id, None)
        if pending is not None:
            self._window.release()

    def health(self) -> dict[str, Any]:
        """An application-level ping, once: {"status": "ok", ...} when the server's pong arrives."""
        ping = f"ping-{uuid.uuid4().hex}"
        try:
            self.send(PING, ping)
        finally:
            self.done(ping)
        return {"status": "ok", "url": self.url, "reconnects": self.reconnects}

    def close(self) -> None:
        """Close the connection; waiting requests fail at once, and nothing reconnects."""
        self._stop.set()
        with self._lock:
            conn, self._conn = self._conn, None
            waiting = list(self._pending.values())
        for pending in waiting:
            pending.event.set()
        if conn is not None:
            try:
                conn.close()
            except Exception:  # closing a connection that is already gone
                log.debug("%s: close failed", self.name, exc_info=True)

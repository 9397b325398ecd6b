"""The WebSocket transport: one reused connection per server endpoint, many requests in flight, reconnection.

`WsTransport` owns the connection: a reader thread per connection matches answers to requests by
request_id, and at most `window` requests are unanswered at once. Each request keeps one request id (its
idempotency key) and one retry budget (`edensplit.client.transport.RetryPolicy`) for its whole life: when
the connection drops, or when the server answers OVERLOADED, NOT_READY or DEADLINE_EXCEEDED (or a
transient UPSTREAM_ERROR), the request reconnects if need be and is sent again with the same id, after a
full-jitter back-off (never shorter than the error's `retry_after_s`), until `retry_for` seconds have
passed since its first failure. A request still unanswered after `timeout` on a live connection is
waited for again within the same budget, not sent again on that connection (the server refuses an id
already in flight on a connection as a conflict). A handshake refused
with a 4xx (401 without the right bearer key) or a certificate that does not verify is final. Answers to
a request that was already answered are dropped, so a resend never yields a frame twice. Pings (every
`ping_interval` s, `ping_timeout` to answer) notice a dead peer. permessage-deflate is off: on float
tensors it costs far more CPU time than the bytes it saves (see docs/protocol.md, Compression).

A `Call` with a binary body travels as an EDS1 binary message (its options, identity fields and
`content_type` in the header); one with a JSON document as a text message with the document as
`payload`. Either is chunked when large (edensplit.wire.messages).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection, connect

from edensplit.client.requests import JSON, Answer, Call
from edensplit.client.transport import (
    CLIENT_VERSION,
    DEFAULT_RETRIES,
    DEFAULT_RETRY_FOR,
    RETRY_STATUSES,
    RetryBudget,
    RetryPolicy,
    ServerError,
    bearer_headers,
    parse_retry_after,
    server_error,
    should_retry,
    tls_context,
    tls_failure,
)
from edensplit.errors import EdenError, ErrorCode
from edensplit.tracing import client_span, outgoing
from edensplit.wire.messages import CHUNK_BYTES, Reassembler, split_binary, split_text

log = logging.getLogger("edensplit.client")
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
    head = {"type": call.operation, "request_id": request_id, **call.ids, **call.options, **outgoing()}
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
    """One request waiting for its answer: the connection it was last sent on, and how the wait ended."""

    conn: ClientConnection | None = None
    answer: tuple[dict[str, Any], bytes] | None = None
    lost: bool = False  # the connection it was sent on dropped before the answer came
    event: threading.Event = field(default_factory=threading.Event)


class _Closed(EdenError):
    """The transport was closed while a request waited."""


class WsTransport:
    """A reconnecting WebSocket to one endpoint; `send` is thread-safe and blocks for its answer."""

    def __init__(self, url: str, *, path: str = "", window: int = 4, timeout: float = 30.0,
                 retries: int = DEFAULT_RETRIES, retry_for: float = DEFAULT_RETRY_FOR, chunk_bytes: int = CHUNK_BYTES,
                 ping_interval: float = 10.0, ping_timeout: float = 10.0, close_timeout: float = 2.0,
                 name: str = "server", api_key: str | None = None, ca_cert: str | Path | None = None,
                 retry_policy: RetryPolicy | None = None):
        """`url`: ws(s):// or http(s):// base URL, `path` appended (e.g. Cloud.WS_PATH). `api_key` goes in the
        handshake's `Authorization: Bearer`; `ca_cert` (wss): the CA bundle that signed the server's
        certificate; `retry_policy` replaces `retries`/`retry_for` (and sets the back-off). Connects now
        (riding out an outage of up to `retry_for` seconds)."""
        self.url, self.timeout, self.name = ws_url(url, path), timeout, name
        self.retry = retry_policy or RetryPolicy(retries, retry_for)
        self.chunk_bytes, self.ping_interval, self.ping_timeout = chunk_bytes, ping_interval, ping_timeout
        self.close_timeout = close_timeout
        context = tls_context(ca_cert)
        self._ssl = context if self.url.startswith("wss://") else None  # websockets refuses ssl= on ws://
        self._headers = {"X-Client-Version": CLIENT_VERSION, **bearer_headers(api_key)}
        self.connections = 0
        self._window = threading.BoundedSemaphore(window)
        self._lock = threading.Lock()  # guards _pending and _conn
        self._connect_lock = threading.Lock()  # one thread (re)connects at a time
        self._send_lock = threading.Lock()
        self._stop = threading.Event()  # set by close(): back-off waits end at once
        self._pending: dict[str, _Pending] = {}
        self._conn: ClientConnection | None = None
        self._connection(self.retry.budget())

    @property
    def reconnects(self) -> int:
        """Connections made after the first one."""
        return max(self.connections - 1, 0)

    # -- connection ----------------------------------------------------------------------------------

    def _connect(self) -> ClientConnection:
        return connect(self.url, legacy=True, open_timeout=min(self.timeout, 10.0), close_timeout=self.close_timeout,
                       compression=None, max_size=2 * self.chunk_bytes + 2**20, ping_interval=self.ping_interval,
                       ping_timeout=self.ping_timeout, additional_headers=self._headers, ssl=self._ssl)

    def _refused(self, exc: InvalidStatus) -> ServerError:
        """A handshake answered with an HTTP error (401 without the right key, 503 while starting...)."""
        response = exc.response
        try:
            error = json.loads(response.body or b"")["error"]
        except (ValueError, KeyError, TypeError):
            error = None
        body = (response.body or b"").decode(errors="replace")[:200]
        return server_error(error, server=f"{self.name} {self.url}", status=response.status_code,
                            fallback=f"handshake refused: HTTP {response.status_code}: {body}",
                            retry_after=parse_retry_after(response.headers.get("Retry-After")))

    def _connection(self, budget: RetryBudget) -> ClientConnection:
        """The live connection, or a new one: transient failures are retried within `budget`; a refusal that
        is not transient (a 4xx, a certificate that does not verify) is final."""
        with self._connect_lock:
            while True:
                with self._lock:
                    if self._conn is not None:
                        return self._conn
                if self._stop.is_set():
                    raise _Closed(f"the connection to the {self.name} was closed", code=ErrorCode.UPSTREAM_ERROR)
                try:
                    conn = self._connect()
                except InvalidURI as exc:
                    raise EdenError(f"invalid WebSocket URL {self.url}: {exc}",
                                    code=ErrorCode.INVALID_PARAMETER) from None
                except InvalidStatus as exc:
                    error = self._refused(exc)
                    if exc.response.status_code not in RETRY_STATUSES or not should_retry(error):
                        raise error from None
                    self._back_off(budget, error, error.retry_after)
                except (OSError, InvalidHandshake, TimeoutError) as exc:
                    tls = tls_failure(exc)
                    if tls is not None:
                        raise EdenError(f"TLS failure talking to the {self.name} at {self.url}: {tls} (a server "
                                        "certificate signed by another CA needs --ca_cert / EDENSPLIT_CA_CERT)",
                                        code=ErrorCode.UPSTREAM_ERROR) from None
                    cannot = EdenError(f"cannot reach the {self.name} at {self.url}: {type(exc).__name__}: {exc}",
                                       code=ErrorCode.UPSTREAM_ERROR)
                    self._back_off(budget, cannot)
                else:
                    with self._lock:
                        self._conn = conn
                        self.connections += 1
                    if self.connections > 1:
                        log.warning("%s: reconnected to %s", self.name, self.url)
                    threading.Thread(target=self._read, args=(conn,), name=f"edensplit-ws-{self.name}",
                                     daemon=True).start()
                    return conn

    def _back_off(self, budget: RetryBudget, error: EdenError, retry_after: float | None = None) -> None:
        """Wait before the next attempt, or raise `error` (its message saying for how long it was tried)."""
        if self._stop.is_set():
            raise _Closed(f"the connection to the {self.name} was closed", code=ErrorCode.UPSTREAM_ERROR)
        delay = budget.next_delay(retry_after)
        if delay is None:
            error.message += f" (gave up after {budget.summary()})"
            raise error
        log.log(logging.WARNING if budget.retries == 1 else logging.INFO, "%s: %s; retry %d in %.2f s",
                self.name, error.message, budget.retries, delay)
        if self._stop.wait(delay):
            raise _Closed(f"the connection to the {self.name} was closed", code=ErrorCode.UPSTREAM_ERROR)

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

    def send(self, call: Call) -> Answer:
        """Send `call` and wait for its answer (a client span, its trace context in the message)."""
        with client_span(call):
            return self._send(call)

    def _send(self, call: Call) -> Answer:
        """Send `call` and wait for its answer: one request id for all its attempts; reconnection, timeouts and
        transient error answers retried within the retry budget (see the module docstring)."""
        rid = call.request_id or uuid.uuid4().hex  # the idempotency key of this request, and only of it
        frames = frames_of(call, rid, self.chunk_bytes)
        budget = self.retry.budget()
        pending = _Pending()
        with self._window:
            with self._lock:
                self._pending[rid] = pending
            try:
                while True:
                    self._send_on(self._connection(budget), pending, frames)
                    header, payload = self._wait(pending, budget)
                    if not header:
                        continue  # lost: sent again (same id) on a new connection; timed out: waited for again
                    if header.get("type") != "error":
                        return answer_of(header, payload, call)
                    error = server_error(header.get("error"), server=f"{self.name} {self.url}",
                                         fallback=f"unreadable error message {str(header)[:200]}")
                    if not should_retry(error):
                        raise error
                    with self._lock:
                        pending.answer, pending.conn = None, None  # answered: the next attempt is sent anew
                    self._back_off(budget, error, error.retry_after)
            except _Closed:
                raise EdenError(f"the connection to the {self.name} at {self.url} was closed before request "
                                f"{rid} was answered", code=ErrorCode.UPSTREAM_ERROR) from None
            finally:
                with self._lock:
                    self._pending.pop(rid, None)

    def _wait(self, pending: _Pending, budget: RetryBudget) -> tuple[dict[str, Any], bytes]:
        """The answer; or ({}, b"") after backing off when the connection was lost or no answer came in time."""
        answered = pending.event.wait(self.timeout)
        if self._stop.is_set():
            raise _Closed("closed", code=ErrorCode.UPSTREAM_ERROR)
        with self._lock:
            answer, lost = pending.answer, pending.lost
        if answer is not None:
            return answer
        why = "the connection was lost" if answered and lost else f"none within {self.timeout:g} s"  # then: wait on
        self._back_off(budget, EdenError(f"no answer from the {self.name} at {self.url}: {why}",
                                         code=ErrorCode.UPSTREAM_ERROR))
        return {}, b""

    def health(self) -> dict[str, Any]:
        """An application-level ping: {"status": "ok", ...} once the server's pong arrives."""
        self.send(PING)
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

"""Middlewares for Ray Serve's HTTP proxy, which reads a request's whole body into its own memory as soon as it
hands the request to a replica (while the request waits in Ray's queue, too): what can be refused is refused
here, before any of the body is read.

- `Gate`: with a key (EDENSPLIT_API_KEY, one client, or EDENSPLIT_API_KEYS_FILE, many: `servers.auth.Access`,
  read from the proxy's own environment), a request without a known `Authorization: Bearer` key is `401
  UNAUTHORIZED` (`WWW-Authenticate: Bearer`), a WebSocket handshake too; /health, /health/live, /health/ready
  under any prefix (and Ray's /-/healthz, /-/routes) stay open to GET and HEAD without a body. A declared
  `Content-Length` over the proxy's limit is `413 PAYLOAD_TOO_LARGE`, and a body without one (chunked) is cut
  there (413 too). The headers through which a caller could steer Ray's proxy are set here: `x-session-id`
  (the session affinity router's key) is the id in a session route's path and nothing elsewhere;
  `x-request-timeout-seconds` (Ray's per-request override of `request_timeout_s`) and
  `x-request-disconnect-disabled` are dropped, except that a WebSocket connection gets no end-to-end timeout
  (Ray would count the connection's whole life against it).
- `ReplicaLost`: a request whose replica was lost before it answered (the replica's process died, its node went
  away) gets `503 NOT_READY` with `Retry-After: 1` in the edensplit error envelope, which the client retries,
  instead of the proxy's bare `500`, which it would not. Every edensplit route answers, errors included, so a
  request that got no answer at all is one the replica never finished: sending it again (same request id) is
  safe, and a video session whose replica is gone continues on another one after one SESSION_NOT_FOUND.

Ray reads the proxy's middlewares from `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`, in the proxy's own
environment, as it does the keys and the limit (`EDENSPLIT_PROXY_MAX_REQUEST_MB`, else MAX_REQUEST_MB, else
512): `edensplit serve-ray` sets them for the local cluster it starts; for a cluster made with `ray start`,
export them on the proxy's nodes first (docs/scaling.md). Imports no torch.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edensplit.errors import ConfigError, EdenError, ErrorCode
from edensplit.servers.auth import ANONYMOUS, Access, access_from_environment
from edensplit.servers.envelope import error_body

log = logging.getLogger("edensplit.server")
CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "edensplit.serve_ray.proxy.middlewares"
LIMIT_ENV = "EDENSPLIT_PROXY_MAX_REQUEST_MB"
SESSION_HEADER = b"x-session-id"  # Ray's session header (RAY_SERVE_SESSION_ID_HEADER_KEY left at its default)
STEERING = (SESSION_HEADER, b"x-request-timeout-seconds", b"x-request-disconnect-disabled")
SESSION_PATH = re.compile(r"/api/v1/sessions/([A-Za-z0-9._:-]{1,128})/frames/")  # the servers' id syntax
OPEN_ENDINGS = ("/health", "/health/live", "/health/ready")
RAY_OPEN = ("/-/healthz", "/-/routes")
GUARDED = "/"  # what Access is asked about for every path but an open one (a route prefix may start /health)
WHERE = {"refused_by": "ray-proxy"}
LOST = json.dumps(error_body(ErrorCode.NOT_READY, "the replica serving this request was lost before it answered; "
                             "send it again", {"retry_after_s": 1})).encode()


def proxy_limit_mb() -> float:
    """The largest body the proxy passes on, MiB: EDENSPLIT_PROXY_MAX_REQUEST_MB, else MAX_REQUEST_MB, else 512."""
    return float(os.environ.get(LIMIT_ENV) or os.environ.get("MAX_REQUEST_MB") or 512)


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in headers if k.lower() == name), None)


def is_open(method: str, path: str) -> bool:
    """A health route (under any route prefix) or Ray's own, asked with GET or HEAD."""
    path = path.rstrip("/") or "/"
    return method in ("GET", "HEAD") and (path.endswith(OPEN_ENDINGS) or path in RAY_OPEN)


def session_key(kind: str, path: str) -> str | None:
    """The session a request belongs to for Ray's router: the id in an HTTP session route's path, else None."""
    match = SESSION_PATH.search(path) if kind == "http" else None
    return match.group(1) if match else None


def steered(headers: list[tuple[bytes, bytes]], kind: str, path: str) -> list[tuple[bytes, bytes]]:
    """The request's headers with the ones that steer Ray's proxy set by this middleware, not the caller (Ray
    reads `x_session_id` as `x-session-id`: both spellings go)."""
    out = [(k, v) for k, v in headers if k.lower().replace(b"_", b"-") not in STEERING]
    session = session_key(kind, path)
    if session is not None:
        out.append((SESSION_HEADER, session.encode("latin-1")))
    if kind == "websocket":
        out.append((b"x-request-timeout-seconds", b"0"))  # 0: no end-to-end timeout (Ray's own header)
    return out


def envelope(exc: EdenError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An error's status, headers and body as the servers send it."""
    body = json.dumps(error_body(exc.code, exc.message, exc.details)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]  # a body left unread: the connection is not reused
    if exc.code == ErrorCode.UNAUTHORIZED:
        headers.append((b"www-authenticate", b"Bearer"))
    if exc.code in (ErrorCode.OVERLOADED, ErrorCode.NOT_READY):
        headers.append((b"retry-after", str(exc.details.get("retry_after_s", 1)).encode()))
    return exc.code.status, headers, body


async def refuse(scope: Scope, send: Send, exc: EdenError) -> None:
    """Answer `exc` without reading the request: an HTTP answer (to a WebSocket handshake too, where the server
    can send one; else the handshake is closed, 1008)."""
    status, headers, body = envelope(exc)
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif "websocket.http.response" in (scope.get("extensions") or {}):
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": exc.message[:120]})


class Gate:
    """Key, declared size and steering headers checked before the proxy reads a byte of the body; a body without
    a declared size is counted as it is read and cut at the limit."""

    def __init__(self, app: ASGIApp, access: Access | None = None, max_request_mb: float | None = None):
        self.app = app
        self.max_body = int((max_request_mb if max_request_mb is not None else proxy_limit_mb()) * 2**20)
        self.broken: str | None = None
        try:
            self.access = access if access is not None else access_from_environment()
        except ConfigError as exc:  # refuse everything rather than serve without the keys meant
            self.access, self.broken = Access(), exc.message
            log.error("the Ray proxy refuses every request: %s", exc.message)

    def admit(self, scope: Scope) -> int:
        """The most body bytes the request may carry; EdenError (401, 413, 503) if it is refused as it stands."""
        headers = scope.get("headers") or []
        method, path = scope.get("method", "GET"), scope.get("path", "")
        declared = header(headers, b"content-length")
        size = int(declared) if declared is not None and declared.strip().isdigit() else None
        bodyless = not size and header(headers, b"transfer-encoding") is None
        open_route = scope["type"] == "http" and bodyless and is_open(method, path)
        if self.broken is not None and not open_route:
            raise EdenError(f"the proxy's keys cannot be read: {self.broken}", code=ErrorCode.NOT_READY,
                            details={**WHERE, "retry_after_s": 5})
        client = self.access.client("/health" if open_route else GUARDED, header(headers, b"authorization"))
        limit = 0 if client == ANONYMOUS and self.access.enabled else self.max_body
        if size is not None and size > limit:
            raise EdenError(f"the request body is {size} bytes, over the limit of {self.max_body} (MAX_REQUEST_MB)",
                            code=ErrorCode.PAYLOAD_TOO_LARGE, details=WHERE)
        return limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            limit = self.admit(scope)
        except EdenError as exc:
            if exc.code == ErrorCode.UNAUTHORIZED:
                exc.details = {**exc.details, **WHERE}
            await refuse(scope, send, exc)
            return
        scope = {**scope, "headers": steered(scope.get("headers") or [], scope["type"], scope.get("path", ""))}
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
        else:
            await self.bounded(scope, receive, send, limit)

    async def bounded(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Pass the request on; past `limit` body bytes, tell the proxy the client left (it cancels the request)
        and answer 413 if nothing was answered yet."""
        received, over, started = 0, False, False

        async def counting() -> Message:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def watching(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # what the proxy says about a request it was told was abandoned: 413 instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counting, watching)
        if over and not started:
            await refuse(scope, send, EdenError(f"the request body is over the limit of {limit} bytes "
                                                "(MAX_REQUEST_MB)", code=ErrorCode.PAYLOAD_TOO_LARGE, details=WHERE))


class ReplicaLost:
    """An HTTP request the app never started to answer gets 503 NOT_READY (the proxy would send a bare 500)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watching(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watching)
        except Exception:
            if started:
                raise
        if not started:
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(LOST)).encode()), (b"retry-after", b"1")]})
            await send({"type": "http.response.body", "body": LOST})


def middlewares() -> list[Any]:
    """What Ray's proxy calls (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH); the last is the outermost: the Gate
    runs first."""
    return [Middleware(ReplicaLost), Middleware(Gate)]

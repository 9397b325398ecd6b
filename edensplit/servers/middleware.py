"""Per HTTP request: the request id, the body limit, Content-Encoding both ways, bytes on the wire, one log
line and the request metrics."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from opentelemetry.trace import SpanKind
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edensplit.errors import EdenError, ErrorCode
from edensplit.servers.auth import check_access
from edensplit.servers.budget import ByteBudget
from edensplit.servers.envelope import error_response
from edensplit.servers.idempotency import IdempotencyCache, digest
from edensplit.servers.metrics import Metrics
from edensplit.settings import ServerSettings
from edensplit.tracing import continued, tracer
from edensplit.wire.compression import compress, decompress, normalise_codec

access_log = logging.getLogger("edensplit.access")


RESPONSE_CODECS = ("zstd", "lz4")  # the fast codecs: gzip/deflate cost more time than they save on tensors
COMPRESSIBLE = ("application/vnd.edensplit.",)


def response_codec(accept_encoding: str | None) -> str | None:
    """The codec to compress a binary response with: zstd or lz4 when the client lists it, else None."""
    offered = {}
    for part in (accept_encoding or "").split(","):
        name, _, params = part.strip().partition(";")
        q = params.strip().removeprefix("q=") if params.strip().startswith("q=") else "1"
        try:
            offered[name.strip().lower()] = float(q)
        except ValueError:
            continue
    return next((c for c in RESPONSE_CODECS if offered.get(c, 0) > 0), None)


class Abandoned(Exception):
    """The client went away while its request was being read."""


class RequestContextMiddleware:
    """Per HTTP request: read or make X-Request-ID and echo it; read the whole body (and undo its
    Content-Encoding) before the app runs, under a read deadline, a bound on concurrent reads and the
    server's byte budget, so slow or huge uploads never hold a model place; replay the answer of a retried
    request; compress binary answers with a fast codec the client accepts; count bytes on the wire, and
    write one log line (request id, route, status, bytes in/out, milliseconds) plus metrics."""

    def __init__(self, app: ASGIApp, *, settings: ServerSettings, metrics: Metrics, budget: ByteBudget,
                 idempotency: IdempotencyCache, component: str):
        self.app, self.metrics, self.budget, self.idempotency = app, metrics, budget, idempotency
        self.component = component  # cloud or edge: names the spans
        self.max_body = int(settings.max_request_mb * 2**20)
        self.body_timeout_s, self.max_body_reads = settings.body_timeout_s, settings.max_body_reads
        self.api_key = settings.edensplit_api_key
        self.reading = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with continued(dict(Headers(scope=scope))), tracer().start_as_current_span(
                f"{self.component} {scope['method']} {scope['path']}", kind=SpanKind.SERVER) as span:
            await self._handle(scope, receive, send)
            state = scope["state"]
            span.set_attributes({"edensplit.component": self.component, "edensplit.request_id": state["request_id"],
                                 "http.request.method": scope["method"], "http.route": state.get("route", ""),
                                 "http.response.status_code": state.get("status", 0)})
            if state.get("error_code"):
                span.set_attribute("edensplit.error_code", state["error_code"])

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        client_id = headers.get("x-request-id")
        rid = client_id or uuid.uuid4().hex
        start, counts, status = time.perf_counter(), {"in": 0, "out": 0, "held": 0}, [500]
        state = scope.setdefault("state", {})
        state["request_id"], state["received"] = rid, start
        out_codec = response_codec(headers.get("accept-encoding"))
        held: list[Message] = []

        async def tagging_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = rid
                kind = Headers(raw=message["headers"]).get("content-type", "")
                if out_codec and kind.startswith(COMPRESSIBLE) and status[0] == 200:
                    held.append(message)  # compress the body first, then send the headers
                    return
            elif message["type"] == "http.response.body" and held:
                start_message = held.pop()
                body = await run_in_threadpool(compress, message.get("body", b""), out_codec)
                response_headers = MutableHeaders(scope=start_message)
                response_headers["Content-Encoding"] = out_codec
                response_headers["Content-Length"] = str(len(body))
                await send(start_message)
                message = {**message, "body": body}
            if message["type"] == "http.response.body":
                counts["out"] += len(message.get("body", b""))
            await send(message)

        abandoned = False
        try:
            check_access(scope, self.api_key)
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body, inner = await self._read(scope, receive, headers, counts)
                key = f"http:{client_id}" if client_id else None
                await self._answer(inner, body, receive, tagging_send, key)
                if "route" in inner:
                    scope["route"] = inner["route"]  # the log line and the metrics name the route it matched
            else:
                await self.app(scope, receive, tagging_send)
        except Abandoned:
            abandoned, status[0] = True, 499
            state["error_code"] = str(ErrorCode.CANCELLED)
        except EdenError as exc:
            state["error_code"] = str(exc.code)
            response = error_response(exc.code, exc.message, exc.details)
            if exc.code == ErrorCode.UNAUTHORIZED:
                response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, tagging_send)
        finally:
            self.budget.release(counts["held"])
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            state["route"], state["status"] = route, status[0]
            elapsed = time.perf_counter() - start
            what = "abandoned upload" if abandoned else rid
            access_log.info("%s %s %s %d in=%d out=%d %.1fms client=%s", what, scope["method"], scope["path"],
                            status[0], counts["in"], counts["out"], elapsed * 1000,
                            headers.get("x-client-version", "-"), extra={
                                "request_id": rid, "transport": "http", "method": scope["method"], "route": route,
                                "path": scope["path"], "status": status[0], "code": state.get("error_code"),
                                "bytes_in": counts["in"], "bytes_out": counts["out"], "ms": round(elapsed * 1000, 1),
                                "client": headers.get("x-client-version")})
            self.metrics.requests.labels(route, scope["method"], str(status[0])).inc()
            if status[0] >= 400:
                self.metrics.errors.labels(route, state.get("error_code") or f"HTTP_{status[0]}").inc()
            self.metrics.latency.labels(route).observe(elapsed)
            self.metrics.bytes_in.labels(route).inc(counts["in"])
            self.metrics.bytes_out.labels(route).inc(counts["out"])

    async def _read(self, scope: Scope, receive: Receive, headers: Headers, counts: dict[str, int]
                    ) -> tuple[bytes, Scope]:
        """The whole body, decompressed, and the scope the app sees (its headers describing that body)."""
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise EdenError(f"request body of {declared} bytes is over the limit of {self.max_body}",
                            code=ErrorCode.PAYLOAD_TOO_LARGE)
        encoding = headers.get("content-encoding", "identity").strip().lower()
        codec = None if encoding == "identity" else normalise_codec(encoding)
        if self.reading >= self.max_body_reads:
            raise EdenError(f"{self.reading} request bodies are being read (limit {self.max_body_reads}); retry "
                            "shortly", code=ErrorCode.OVERLOADED, details={"retry_after_s": 1})
        self.reading += 1
        try:
            chunks = await self._receive_body(receive, counts)
        finally:
            self.reading -= 1
        body = b"".join(chunks)
        if codec is None:
            return body, scope
        # It may inflate to MAX_REQUEST_MB, or as far as the budget has room for (503 past that, not 413).
        cap = min(self.max_body, self.budget.limit - self.budget.used)
        self.budget.reserve(max(cap, 1), "decompressed request bodies")
        counts["held"] += max(cap, 1)
        try:
            body = await run_in_threadpool(decompress, body, codec, cap)
        except EdenError as exc:
            if exc.code == ErrorCode.PAYLOAD_TOO_LARGE and cap < self.max_body:
                raise EdenError("the server has no room to decompress this body now; retry shortly",
                                code=ErrorCode.OVERLOADED, details={"retry_after_s": 1}) from None
            raise
        self.budget.release(max(cap, 1) - len(body))
        counts["held"] -= max(cap, 1) - len(body)
        raw = [(k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")]
        return body, {**scope, "headers": [*raw, (b"content-length", str(len(body)).encode())]}

    async def _receive_body(self, receive: Receive, counts: dict[str, int]) -> list[bytes]:
        chunks: list[bytes] = []
        try:
            async with asyncio.timeout(self.body_timeout_s):
                more = True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise Abandoned
                    chunk = message.get("body", b"")
                    counts["in"] += len(chunk)
                    if counts["in"] > self.max_body:
                        raise EdenError(f"request body over the limit of {self.max_body} bytes",
                                        code=ErrorCode.PAYLOAD_TOO_LARGE)
                    self.budget.reserve(len(chunk))
                    counts["held"] += len(chunk)
                    chunks.append(chunk)
                    more = message.get("more_body", False)
        except TimeoutError:
            raise EdenError(f"the request body did not arrive within {self.body_timeout_s:g} s (received "
                            f"{counts['in']} bytes)", code=ErrorCode.BODY_TIMEOUT) from None
        return chunks

    async def _answer(self, scope: Scope, body: bytes, receive: Receive, send: Send, key: str | None) -> None:
        """Run the app on `body`, or replay the stored answer of the same request (same id, same content)."""
        delivered = False

        async def replay_body() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()  # only a disconnect can come now
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        if key is None:
            await self.app(scope, replay_body, send)
            return
        headers = Headers(scope=scope)
        request_digest = await run_in_threadpool(
            digest, scope["method"], scope["path"], scope.get("query_string", b""),
            headers.get("content-type", ""), headers.get("accept", ""), body)
        stored = await self.idempotency.begin(key, request_digest)
        if stored is not None:
            start, parts = stored.answer
            await send({**start, "headers": [*start["headers"], (b"x-idempotent-replay", b"true")]})
            await send({"type": "http.response.body", "body": parts, "more_body": False})
            return
        captured: list[Message] = []

        async def capturing_send(message: Message) -> None:
            captured.append({**message, "headers": list(message.get("headers", []))})  # before send edits them
            await send(message)

        answer = None
        try:
            await self.app(scope, replay_body, capturing_send)
            start = next((m for m in captured if m["type"] == "http.response.start"), None)
            if start is not None and 200 <= start["status"] < 300:
                parts = b"".join(m.get("body", b"") for m in captured if m["type"] == "http.response.body")
                answer = ({**start, "headers": list(start["headers"])}, parts)
        finally:
            self.idempotency.finish(key, answer, len(answer[1]) if answer else 0)

"""Per HTTP request: the request id, the body limit, Content-Encoding both ways, bytes on the wire, one log
line and the request metrics."""

from __future__ import annotations

import logging
import time
import uuid

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edensplit.errors import EdenError, ErrorCode
from edensplit.servers.envelope import error_response
from edensplit.servers.metrics import Metrics
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


class RequestContextMiddleware:
    """Per HTTP request: read or make X-Request-ID and echo it, enforce the body limit, undo a request's
    Content-Encoding and apply a fast one the client accepts to binary responses, count bytes on the
    wire, and write one log line (request id, route, status, bytes in/out, milliseconds) plus metrics."""

    def __init__(self, app: ASGIApp, *, max_body: int, metrics: Metrics):
        self.app, self.max_body, self.metrics = app, max_body, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        rid = headers.get("x-request-id") or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        start, counts, status = time.perf_counter(), {"in": 0, "out": 0}, [500]
        declared = headers.get("content-length")
        too_large = declared is not None and declared.isdigit() and int(declared) > self.max_body
        out_codec = response_codec(headers.get("accept-encoding"))
        held: list[Message] = []

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                counts["in"] += len(message.get("body", b""))
                if counts["in"] > self.max_body:
                    raise EdenError(f"request body over the limit of {self.max_body} bytes",
                                    code=ErrorCode.PAYLOAD_TOO_LARGE)
            return message

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

        try:
            if too_large:
                response = error_response(ErrorCode.PAYLOAD_TOO_LARGE,
                                          f"request body of {declared} bytes is over the limit of {self.max_body}")
                await response(scope, receive, tagging_send)
            elif headers.get("content-encoding", "identity").strip().lower() != "identity":
                await self._decoded(scope, counting_receive, tagging_send, headers["content-encoding"])
            else:
                await self.app(scope, counting_receive, tagging_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            elapsed = time.perf_counter() - start
            access_log.info("%s %s %s %d in=%d out=%d %.1fms client=%s", rid, scope["method"], scope["path"],
                            status[0], counts["in"], counts["out"], elapsed * 1000,
                            headers.get("x-client-version", "-"))
            self.metrics.requests.labels(route, scope["method"], str(status[0])).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            self.metrics.bytes_in.labels(route).inc(counts["in"])
            self.metrics.bytes_out.labels(route).inc(counts["out"])

    async def _decoded(self, scope: Scope, receive: Receive, send: Send, encoding: str) -> None:
        """Run the app on the decompressed body of a request sent with a Content-Encoding."""
        try:
            codec = normalise_codec(encoding)
            chunks, more = [], True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            body = await run_in_threadpool(decompress, b"".join(chunks), codec, self.max_body)
        except EdenError as exc:
            await error_response(exc.code, exc.message)(scope, receive, send)
            return
        raw = [(k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")]
        inner = {**scope, "headers": [*raw, (b"content-length", str(len(body)).encode())]}
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            await self.app(inner, replay, send)
        finally:
            if "route" in inner:
                scope["route"] = inner["route"]  # the log line and the metrics name the route it matched



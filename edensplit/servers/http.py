"""HTTP framing over the request pipeline: a request becomes an `OperationInput` (body, Content-Type, query
options, path parameters, the answer negotiated from Accept), a `Reply` becomes a response.

What is HTTP's own stays here: the body read whole before the app runs (under a read deadline, a bound on
concurrent reads, `MAX_REQUEST_MB` and the pipeline's byte budget) with its Content-Encoding undone,
binary answers compressed with a fast codec the client accepts, `Accept` negotiation, `X-Request-Timeout`,
and the disconnect watch that drops the work of a caller that went away. Everything else is the pipeline's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edensplit.errors import EdenError, ErrorCode
from edensplit.servers.contract import JSON, Operation, OperationInput, Reply
from edensplit.servers.envelope import error_response, success_body
from edensplit.servers.idempotency import digest
from edensplit.servers.pipeline import Exchange, Pipeline
from edensplit.wire.compression import compress, decompress, normalise_codec

RESPONSE_CODECS = ("zstd", "lz4")  # the fast codecs: gzip/deflate cost more time than they save on tensors
COMPRESSIBLE = ("application/vnd.edensplit.",)
BODY_METHODS = ("POST", "PUT", "PATCH")
# What the HTTP framing of an operation can refuse: reading the body (over MAX_REQUEST_MB, late, a Content-Encoding
# it does not know or that does not decode, no read slot or budget left), its Content-Type, the Accept header.
BODY_ERRORS = (ErrorCode.PAYLOAD_TOO_LARGE, ErrorCode.BODY_TIMEOUT, ErrorCode.UNSUPPORTED_MEDIA_TYPE,
               ErrorCode.INVALID_BLOB, ErrorCode.OVERLOADED)
SERVE_ERRORS = (ErrorCode.UNSUPPORTED_MEDIA_TYPE, ErrorCode.NOT_ACCEPTABLE)


@dataclass(frozen=True)
class HttpAnswer:
    """A rendered success answer, kept whole for idempotent replays."""

    body: bytes | memoryview
    media_type: str
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def nbytes(self) -> int:
        return len(self.body) + len(self.media_type) + sum(len(k) + len(v) for k, v in self.headers)

    def response(self, replayed: bool = False) -> Response:
        extra = (("X-Idempotent-Replay", "true"),) if replayed else ()
        return Response(self.body, media_type=self.media_type, headers=dict(self.headers + extra))


def exchange_of(request: Request | Scope) -> Exchange:
    """The pipeline's record of this HTTP request (made by `HttpFraming`)."""
    scope = request.scope if isinstance(request, Request) else request
    return scope["state"]["exchange"]


def media_type(request: Request) -> str:
    """The request's content type without parameters, lower-cased ('' when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


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


def render(reply: Reply) -> HttpAnswer:
    """The reply as an HTTP answer: the binary body as is, or the JSON envelope (serialized here, off the event
    loop: `run_operation` calls this on the thread pool)."""
    headers = (("X-Processing-Time", str(reply.metadata["processing_time"])),) \
        if "processing_time" in reply.metadata else ()
    if reply.body is not None:
        return HttpAnswer(reply.body, reply.media_type, headers)
    data = {**reply.data, "metadata": reply.metadata} if reply.metadata else reply.data
    return HttpAnswer(JSONResponse(success_body(data)).body, JSON, headers)


async def serve(operation: Operation[Any, Any], request: Request, batcher: str | None = None) -> Response:
    """One HTTP request through `operation` (via the pipeline): its body is already read whole, before a model
    place is taken, and a caller that disconnects meanwhile has its work dropped (CANCELLED, logged, never
    sent)."""
    pipeline: Pipeline = request.app.state.pipeline
    exchange = exchange_of(request)
    kind = media_type(request)
    pipeline.check_content_type(operation, kind)
    operation, answer = pipeline.negotiate(exchange, operation, kind, request.headers.get("accept", ""))
    cancellation = pipeline.deadline(request.headers.get("x-request-timeout"), "X-Request-Timeout")
    body = request.scope.get("state", {}).get("body")  # as the framing read it: no copy of Starlette's
    if body is None:
        body = await request.body()
    content_type = request.headers.get("content-type", "")
    inp = OperationInput(kind, body, None, request.query_params, request.path_params, answer, exchange.request_id,
                         content_type, cancellation, exchange.started, exchange.client_name)
    scope = request.scope

    def request_digest() -> str:
        return digest(scope["method"], scope["path"], scope.get("query_string", b""), content_type,
                      request.headers.get("accept", ""), body)

    work = asyncio.ensure_future(pipeline.answer(exchange, operation, inp, render, request_digest, batcher))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if work.done():
        return work.result().response(exchange.replayed)
    cancellation.caller_gone()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError, EdenError):
        await work  # until the model thread lets go of it
    raise EdenError("the caller went away; the work was dropped", code=ErrorCode.CANCELLED)


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects (the body is read: the next message can only be a disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Abandoned(Exception):
    """The client went away while its request was being read."""


class HttpFraming:
    """ASGI middleware: each HTTP request through the pipeline (id, key, span, budget, log, metrics), its body
    read whole and decompressed before the app runs, its binary answer compressed on the way out."""

    def __init__(self, app: ASGIApp, *, pipeline: Pipeline):
        self.app, self.pipeline = app, pipeline
        settings = pipeline.settings
        self.max_body = int(settings.max_request_mb * 2**20)
        self.body_timeout_s, self.max_body_reads = settings.body_timeout_s, settings.max_body_reads
        self.max_ratio = settings.max_inflate_ratio
        self.reading = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        exchange = self.pipeline.begin("http", scope["method"], scope["path"], request_id=headers.get("x-request-id"),
                                       client=headers.get("x-client-version"))
        scope.setdefault("state", {})["exchange"] = exchange
        with self.pipeline.span(exchange, dict(headers)):
            await self._handle(scope, receive, send, headers, exchange)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, headers: Headers, exchange: Exchange) -> None:
        out_codec = response_codec(headers.get("accept-encoding"))
        held: list[Message] = []
        holding = [0]  # bytes of this request held against the pipeline's budget

        async def framed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = exchange.request_id
                kind = Headers(raw=message["headers"]).get("content-type", "")
                if out_codec and kind.startswith(COMPRESSIBLE) and exchange.status == 200:
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
                exchange.bytes_out += len(message.get("body", b""))
            await send(message)

        try:
            self.pipeline.admit(exchange, headers, "X-Request-ID")
            if scope["method"] in BODY_METHODS:
                reading = time.perf_counter()
                body, inner = await self._read(scope, receive, headers, exchange, holding)
                exchange.read = time.perf_counter() - reading
                scope["state"]["body"] = body  # the operations read it from here (`serve`); the app too, below
                delivered = False

                async def replay_body() -> Message:
                    nonlocal delivered
                    if delivered:
                        return await receive()  # only a disconnect can come now
                    delivered = True
                    return {"type": "http.request", "body": body, "more_body": False}

                await self.app(inner, replay_body, framed_send)
                if "route" in inner:
                    scope["route"] = inner["route"]  # the log line and the metrics name the route it matched
            else:
                await self.app(scope, receive, framed_send)
        except Abandoned:
            exchange.abandoned, exchange.status, exchange.code = True, 499, str(ErrorCode.CANCELLED)
        except EdenError as exc:
            self.pipeline.failed(exchange, exc)
            response = error_response(exc.code, exc.message, exc.details)
            await response(scope, receive, framed_send)
        finally:
            self.pipeline.release(holding[0])
            exchange.route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.pipeline.wire_bytes(exchange.route, exchange.bytes_in, exchange.bytes_out)
            self.pipeline.finish(exchange)

    async def _read(self, scope: Scope, receive: Receive, headers: Headers, exchange: Exchange,
                    holding: list[int]) -> tuple[bytes | bytearray, Scope]:
        """The whole body, decompressed, and the scope the app sees (its headers describing that body). An
        uncompressed body is a bytearray, joined from its chunks in one copy: the tensors and frames of a binary
        body are views of it (wire.container.views), not copies."""
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
            chunks = await self._receive_body(receive, exchange, holding)
        finally:
            self.reading -= 1
        sent = bytearray().join(chunks)
        if codec is None:
            return sent, scope

        def pay(n: int) -> None:  # it inflates a step at a time, each paid for from the budget (503 without room)
            self.pipeline.hold(n, "request bodies being decompressed")
            holding[0] += n

        # up to MAX_REQUEST_MB, and MAX_INFLATE_RATIO times its own size (413 past either)
        body = await run_in_threadpool(decompress, sent, codec, self.max_body, max_ratio=self.max_ratio, reserve=pay)
        raw = [(k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")]
        return body, {**scope, "headers": [*raw, (b"content-length", str(len(body)).encode())]}

    async def _receive_body(self, receive: Receive, exchange: Exchange, holding: list[int]) -> list[bytes]:
        chunks: list[bytes] = []
        try:
            async with asyncio.timeout(self.body_timeout_s):
                more = True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise Abandoned
                    chunk = message.get("body", b"")
                    exchange.bytes_in += len(chunk)
                    if exchange.bytes_in > self.max_body:
                        raise EdenError(f"request body over the limit of {self.max_body} bytes",
                                        code=ErrorCode.PAYLOAD_TOO_LARGE)
                    self.pipeline.hold(len(chunk))
                    holding[0] += len(chunk)
                    chunks.append(chunk)
                    more = message.get("more_body", False)
        except TimeoutError:
            raise EdenError(f"the request body did not arrive within {self.body_timeout_s:g} s (received "
                            f"{exchange.bytes_in} bytes)", code=ErrorCode.BODY_TIMEOUT) from None
        return chunks

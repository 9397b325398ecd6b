"""WebSocket framing over the request pipeline: one connection, many requests in flight, each answered by its
request_id.

Messages are JSON text (the user's shapes, base64 payloads) or binary (an EDS1 header naming the request and
its `content_type`, then raw bytes), chunked when large (see edensplit.wire.messages). A whole message
becomes an `OperationInput` (a text message's fields are its document and options; a binary message's header
its options), so each operation is the same code as over HTTP, and the same pipeline (id, budget, replays,
deadline, log, metrics, span) runs it. What is the WebSocket's own stays here: the handshake, reassembly of
chunked messages (held against the pipeline's byte budget), the per-connection window of `window` unanswered
requests (more get OVERLOADED), an id in flight on a connection refused, answers sent as they are ready (out
of order: clients match them by request_id), `{"type": "ping"}` answered with `{"type": "pong"}`.
Transport-level ping/pong is uvicorn's (every 20 s by default). A bad message gets an `error` message and
the connection and the server keep going.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketState

from edensplit.errors import EdenError, ErrorCode
from edensplit.servers.contract import JSON, OperationInput, Reply
from edensplit.servers.envelope import error_body, error_response
from edensplit.servers.idempotency import digest
from edensplit.servers.ids import check_id
from edensplit.servers.pipeline import Exchange, Pipeline
from edensplit.servers.service import Endpoint
from edensplit.tracing import HEADERS as TRACE_FIELDS
from edensplit.wire.messages import (
    CHUNK_BYTES,
    Reassembler,
    parse_text,
    split_binary,
    split_text,
    unpack_binary_view,
)

WS_WINDOW = 8
INLINE_PARSE_BYTES = 64 * 2**10  # text messages larger than this are parsed on the thread pool
# Fields that do not change what is asked (the id, chunking, the deadline, the trace context): a retry may carry
# other values and is still the same request, as over HTTP, whose digest leaves the headers carrying them out.
VOLATILE = ("request_id", "chunk", "chunks", "timeout_s", *TRACE_FIELDS)


@dataclass(frozen=True)
class WsAnswer:
    """A rendered answer: the messages carrying it, kept whole for idempotent replays."""

    frames: tuple[str, ...] | tuple[bytes, ...]

    @property
    def nbytes(self) -> int:
        return sum(len(f) for f in self.frames)


@dataclass
class WsRequest:
    """One whole request message: the JSON message (or binary header), the binary payload, its wire size."""

    type: str
    request_id: str
    binary: bool
    header: dict[str, Any]
    payload: bytes | bytearray = b""
    size: int = 0
    started: float = field(default_factory=time.perf_counter)  # when its first message (or chunk) arrived
    read: float = 0.0  # seconds from then to the request whole (its chunks reassembled, a text message parsed)

    def digest(self) -> str:
        """What identifies the request's content (its VOLATILE fields aside), for idempotent replays: the fields
        (a text message's, nested ones sorted too, or a binary message's header) and the binary payload."""
        fields = json.dumps({k: v for k, v in self.header.items() if k not in VOLATILE}, sort_keys=True)
        return digest(fields, self.payload) if self.binary else digest(fields)

    @property
    def fields(self) -> dict[str, Any]:
        """The message's fields with its `payload` object merged in (the user's shape nests them there)."""
        inner = self.header.get("payload")
        return {**self.header, **inner} if isinstance(inner, dict) else self.header

    def operation_input(self, endpoint: Endpoint, pipeline: Pipeline, client: str) -> OperationInput:
        operation = endpoint.operation
        cancellation = pipeline.deadline(self.header.get("timeout_s"), "timeout_s")
        if self.binary:
            kind = str(self.header.get("content_type") or operation.binary_inputs[0]).lower()
            return OperationInput(kind, self.payload, None, self.header, self.header, operation.answers[0],
                                  self.request_id, cancellation=cancellation, received=self.started, client=client)
        fields = self.fields
        return OperationInput(JSON, b"", fields, fields, fields, JSON, self.request_id, cancellation=cancellation,
                              received=self.started, client=client)


def render(req: WsRequest, reply: Reply) -> WsAnswer:
    """The reply as WebSocket messages (chunked when large), built on the thread pool."""
    metadata = reply.metadata or {**reply.data, "request_id": req.request_id}
    kind = f"{req.type}_result"
    if req.binary:
        header = {"type": kind, "request_id": req.request_id, "status": "success", "content_type": reply.media_type,
                  "metadata": metadata}
        return WsAnswer(tuple(split_binary(header, reply.body or b"", CHUNK_BYTES)))
    payload = reply.data if reply.metadata else {}
    return WsAnswer(tuple(split_text({"type": kind, "request_id": req.request_id, "status": "success",
                                      "payload": payload, "metadata": metadata})))


class Connection:
    """The per-connection state: reassembly, the window of requests in flight, serialized sends."""

    def __init__(self, websocket: WebSocket, endpoints: Mapping[str, Endpoint], window: int, max_bytes: int,
                 client_name: str):
        self.ws, self.endpoints, self.window = websocket, endpoints, window
        self.client_name = client_name  # the client the handshake's key named: every message is its
        self.pipeline: Pipeline = websocket.app.state.pipeline
        self.reassembler = Reassembler(max_bytes, writable=True)  # tensors are views of a request's payload
        self.received: dict[tuple[str, Any], int] = {}  # wire bytes of chunked requests still arriving
        self.first_chunk: dict[tuple[str, Any], float] = {}  # when their first chunk arrived
        self.inflight: set[asyncio.Task[None]] = set()
        self.send_lock = asyncio.Lock()
        self.running: set[str] = set()  # request ids in flight on this connection
        self.path = websocket.scope["path"]
        self.client = websocket.headers.get("x-client-version")

    def exchange(self, request_id: Any, operation: str | None, size: int = 0) -> Exchange:
        """The pipeline's record of one request on this connection."""
        exchange = self.pipeline.begin("ws", "WS", self.path, request_id=request_id,
                                       target=f"{self.path} {operation or '-'}", client=self.client)
        exchange.operation, exchange.bytes_in, exchange.client_name = operation, size, self.client_name
        return exchange

    async def send(self, frames: tuple[str, ...] | tuple[bytes, ...] | list[str]) -> int:
        sent = 0
        async with self.send_lock:
            for frame in frames:
                if isinstance(frame, bytes):
                    await self.ws.send_bytes(frame)
                else:
                    await self.ws.send_text(frame)
                sent += len(frame)
        self.pipeline.wire_bytes(self.path, sent=sent)
        return sent

    async def send_error(self, request_id: Any, exc: EdenError) -> int:
        message = {"type": "error", "request_id": request_id, **error_body(exc.code, exc.message, exc.details)}
        try:
            return await self.send(split_text(message))
        except (WebSocketDisconnect, RuntimeError):
            return 0

    async def handle(self, req: WsRequest, endpoint: Endpoint) -> None:
        """One request through the pipeline; its answer (or error) sent when ready."""
        exchange = self.exchange(req.request_id, req.type, req.size)
        exchange.started, exchange.read = req.started, req.read
        with self.pipeline.span(exchange, req.header):
            try:
                inp = req.operation_input(endpoint, self.pipeline, self.client_name)
                operation = endpoint.operation
                if req.binary:  # its header's `accept`: a binary answer type, or a shared-memory handle
                    operation, answer = self.pipeline.negotiate(exchange, operation, inp.content_type,
                                                                str(req.header.get("accept") or ""))
                    inp = dataclasses.replace(inp, answer=endpoint.operation.answers[0] if answer == JSON else answer)
                answer = await self.pipeline.answer(exchange, operation, inp, lambda r: render(req, r),
                                                    req.digest, endpoint.batcher)
                exchange.bytes_out = await self.send(answer.frames)
                self.pipeline.succeeded(exchange)
            except EdenError as exc:
                self.pipeline.failed(exchange, exc)
                exchange.bytes_out = await self.send_error(req.request_id, exc)
            except Exception as exc:  # a fault, not the caller's: logged, INTERNAL_ERROR answered, serving on
                exchange.bytes_out = await self.send_error(req.request_id, self.pipeline.fault(exchange, exc))
            finally:
                self.pipeline.finish(exchange)

    async def refuse(self, exc: EdenError, size: int, req: WsRequest | None = None) -> None:
        """A message refused before it became a running request: unreadable or over a limit (`req` None), or a
        whole request refused at dispatch (the window full, an id in flight, a content type the operation does
        not read), which is logged, counted and traced as its operation's, as HTTP does."""
        rid = exc.details.get("request_id")
        operation = req.type if req is not None and req.type in self.endpoints else None
        exchange = self.exchange(rid if isinstance(rid, str) else None, operation, size if req is None else req.size)
        if req is not None:
            exchange.started = req.started
        with self.pipeline.span(exchange, req.header if req is not None else {}):
            self.pipeline.failed(exchange, exc)
            exchange.bytes_out = await self.send_error(rid, exc)
            self.pipeline.finish(exchange)

    def _hold(self, key: tuple[str, Any], size: int, arrived: float) -> None:
        """Count a chunk's bytes against the server's budget while its message is being reassembled."""
        try:
            self.pipeline.hold(size, "request bodies and WebSocket messages being reassembled")
        except EdenError as exc:
            self.reassembler.drop(key)
            self._release(key)
            exc.details["request_id"] = key[1]
            raise
        self.received[key] = self.received.get(key, 0) + size
        self.first_chunk.setdefault(key, arrived)

    def _release(self, key: tuple[str, Any]) -> int:
        """A chunked message is whole (or refused): give its bytes back; its wire size."""
        total = self.received.pop(key, 0)
        self.first_chunk.pop(key, None)
        self.pipeline.release(total)
        return total

    def _forget_refused(self) -> None:
        pending = self.reassembler.pending()
        for key in [k for k in self.received if k not in pending]:
            self._release(key)

    async def receive_message(self, message: dict[str, Any], size: int, arrived: float) -> WsRequest | None:
        """A whole request from one WebSocket message (which `arrived` then), None while chunks are missing;
        EdenError if bad."""
        data, text = message.get("bytes"), message.get("text")
        first = arrived
        if data is not None:
            header, payload = unpack_binary_view(data)
            rid = header.get("request_id")
            key = ("b", rid) if "chunks" in header and isinstance(rid, str) else None
            if key is not None:
                self._hold(key, size, arrived)
            whole = self.reassembler.feed_parts(header, payload)
            if whole is None:
                return None
            first = self.first_chunk.get(key, arrived) if key is not None else arrived
            total = size if key is None else self._release(key)
            header, payload = whole
            binary = True
        else:
            parsed = await self._parse(text or "")
            if parsed.get("type") != "chunk":
                header, total = parsed, size
                if size > self.reassembler.max_bytes:
                    raise EdenError(f"message over the server's limit of {self.reassembler.max_bytes} bytes",
                                    code=ErrorCode.PAYLOAD_TOO_LARGE, details={"request_id": parsed.get("request_id")})
            else:
                key = ("t", parsed.get("request_id"))
                if isinstance(key[1], str):
                    self._hold(key, size, arrived)
                raw = self.reassembler.feed_chunk(parsed) or ""
                if not raw:
                    return None
                first = self.first_chunk.get(key, arrived)
                total = self._release(key)
                try:
                    header = await self._parse(raw)
                except EdenError as exc:
                    exc.details["request_id"] = key[1]  # the chunks named their request
                    raise
            payload, binary = b"", False
        rid, kind = header.get("request_id"), header.get("type")
        if not isinstance(rid, str) or not rid:
            raise EdenError("every request needs a non-empty string request_id", code=ErrorCode.INVALID_REQUEST,
                            details={"type": kind})
        check_id(rid, "request_id")  # INVALID_PARAMETER: 1-128 characters of A-Z a-z 0-9 . _ : -
        return WsRequest(str(kind), rid, binary, header, payload, total, first, time.perf_counter() - first)

    @staticmethod
    async def _parse(text: str) -> dict[str, Any]:
        return parse_text(text) if len(text) <= INLINE_PARSE_BYTES else await run_in_threadpool(parse_text, text)

    async def dispatch(self, req: WsRequest) -> None:
        if req.type == "ping":
            await self.send(split_text({"type": "pong", "request_id": req.request_id}))
            return
        endpoint = self.endpoints.get(req.type)
        if endpoint is None:
            raise EdenError(f"unknown message type {req.type!r}; this endpoint takes "
                            f"{', '.join(sorted(self.endpoints))} or ping", code=ErrorCode.INVALID_REQUEST,
                            details={"request_id": req.request_id})
        if req.binary:
            try:
                self.pipeline.check_content_type(endpoint.operation, str(req.header.get("content_type")
                                                           or endpoint.operation.binary_inputs[0]).lower())
            except EdenError as exc:
                exc.details["request_id"] = req.request_id
                raise
        if req.request_id in self.running:
            raise EdenError(f"request {req.request_id!r} is already in flight on this connection; a retry waits "
                            "for its answer, a new request needs a new id", code=ErrorCode.IDEMPOTENCY_CONFLICT,
                            details={"request_id": req.request_id})
        if len(self.inflight) >= self.window:
            raise EdenError(f"{len(self.inflight)} requests in flight on this connection (window "
                            f"{self.window}); wait for answers", code=ErrorCode.OVERLOADED,
                            details={"request_id": req.request_id})
        task = asyncio.create_task(self.handle(req, endpoint))
        self.inflight.add(task)
        self.running.add(req.request_id)
        task.add_done_callback(self.inflight.discard)
        task.add_done_callback(lambda _: self.running.discard(req.request_id))

    async def run(self) -> None:
        await self.ws.accept()
        try:
            while True:
                message = await self.ws.receive()
                arrived = time.perf_counter()
                if message["type"] == "websocket.disconnect":
                    break
                data, text = message.get("bytes"), message.get("text")
                size = len(data) if data is not None else len(text or "")
                self.pipeline.wire_bytes(self.path, received=size)
                req = None
                try:
                    req = await self.receive_message(message, size, arrived)
                    if req is not None:
                        await self.dispatch(req)
                except EdenError as exc:
                    self._forget_refused()
                    await self.refuse(exc, size, req)
        except WebSocketDisconnect:
            pass
        finally:
            for key in list(self.received):
                self._release(key)
            for task in list(self.inflight):
                task.cancel()
            if self.ws.client_state == WebSocketState.CONNECTED:
                await self.ws.close()


async def serve_websocket(websocket: WebSocket, endpoints: Mapping[str, Endpoint], window: int = WS_WINDOW) -> None:
    """Serve one WebSocket connection whose message types are the keys of `endpoints` (after the bearer key,
    when the server has one, and within the server's cap on connections)."""
    state = websocket.app.state
    pipeline: Pipeline = state.pipeline
    settings = pipeline.settings
    exchange = pipeline.begin("ws", "WS", websocket.scope["path"], target=f"{websocket.scope['path']} handshake",
                              client=websocket.headers.get("x-client-version"))
    try:
        pipeline.admit(exchange, websocket.headers)
        if state.websockets >= settings.max_ws_connections:
            raise EdenError(f"the server has {state.websockets} WebSocket connections open (limit "
                            f"{settings.max_ws_connections}); retry shortly", code=ErrorCode.OVERLOADED,
                            details={"retry_after_s": 1})
    except EdenError as exc:
        with pipeline.span(exchange, dict(websocket.headers)):
            pipeline.failed(exchange, exc)
            await deny(websocket, error_response(exc.code, exc.message, exc.details))
            pipeline.finish(exchange)
        return
    state.websockets += 1
    try:
        await Connection(websocket, endpoints, window, int(settings.max_request_mb * 2**20),
                         exchange.client_name).run()
    finally:
        state.websockets -= 1


async def deny(websocket: WebSocket, response: Any) -> None:
    """Refuse a WebSocket handshake with an HTTP answer where the server can send one, else close it (1008)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.close(1008, reason=bytes(response.body).decode(errors="replace")[:120])

"""The WebSocket adapter of the stage contract: one connection, many requests in flight, each answered by
its request_id.

Messages are JSON text (the user's shapes, base64 payloads) or binary (an EDS1 header naming the
request and its `content_type`, then raw bytes), chunked when large (see edensplit.wire.messages).
A message becomes a `StageInput` (a text message's fields are its document and options; a binary
message's header its options), so each operation is the same code as over HTTP. Each connection
admits at most `window` unanswered requests; more get an OVERLOADED error. Answers are sent as they
are ready, which may be out of order: clients match them by request_id. A bad message gets an `error`
message and the connection and the server keep going. Transport-level ping/pong is uvicorn's (every
20 s by default); `{"type": "ping"}` is answered with `{"type": "pong"}` too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect
from opentelemetry.trace import SpanKind
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketState

from edensplit.errors import EdenError, ErrorCode
from edensplit.servers.auth import check_access, deny
from edensplit.servers.contract import (
    JSON,
    Cancellation,
    Stage,
    StageInput,
    StageReply,
    check_content_type,
    request_timeout,
    run_stage,
)
from edensplit.servers.envelope import error_body, error_response, log_refusal
from edensplit.servers.idempotency import digest
from edensplit.tracing import continued, tracer
from edensplit.wire.messages import CHUNK_BYTES, Reassembler, parse_text, split_binary, split_text, unpack_binary

log = logging.getLogger("edensplit.server")
access_log = logging.getLogger("edensplit.access")
WS_WINDOW = 8
INLINE_PARSE_BYTES = 64 * 2**10  # text messages larger than this are parsed on the thread pool


@dataclass
class WsRequest:
    """One whole request message: the JSON message (or binary header), the binary payload, its wire size."""

    type: str
    request_id: str
    binary: bool
    header: dict[str, Any]
    payload: bytes = b""
    size: int = 0
    raw: str = ""  # a text message's JSON text, for its digest
    started: float = field(default_factory=time.perf_counter)

    def digest(self) -> str:
        """What identifies the request's content (its id aside), for idempotent replays."""
        if not self.binary:
            return digest(self.raw)
        volatile = ("request_id", "chunk", "chunks", "timeout_s")
        return digest(json.dumps({k: v for k, v in self.header.items() if k not in volatile}, sort_keys=True),
                      self.payload)

    @property
    def fields(self) -> dict[str, Any]:
        """The message's fields with its `payload` object merged in (the user's shape nests them there)."""
        inner = self.header.get("payload")
        return {**self.header, **inner} if isinstance(inner, dict) else self.header

    def stage_input(self, stage: Stage[Any, Any], default_timeout_s: float | None) -> StageInput:
        cancellation = Cancellation(request_timeout(self.header.get("timeout_s"), default_timeout_s, "timeout_s"))
        if self.binary:
            kind = str(self.header.get("content_type") or stage.binary_inputs[0]).lower()
            return StageInput(kind, self.payload, None, self.header, self.header, stage.answers[0], self.request_id,
                              cancellation=cancellation, received=self.started)
        fields = self.fields
        return StageInput(JSON, b"", fields, fields, fields, JSON, self.request_id, cancellation=cancellation,
                          received=self.started)


def render(req: WsRequest, reply: StageReply) -> list[str] | list[bytes]:
    """The reply as WebSocket messages (chunked when large), built on the thread pool."""
    metadata = reply.metadata or {**reply.data, "request_id": req.request_id}
    kind = f"{req.type}_result"
    if req.binary:
        header = {"type": kind, "request_id": req.request_id, "status": "success", "metadata": metadata}
        return split_binary(header, reply.body or b"", CHUNK_BYTES)
    payload = reply.data if reply.metadata else {}
    return split_text({"type": kind, "request_id": req.request_id, "status": "success", "payload": payload,
                       "metadata": metadata})


class Connection:
    """The per-connection state: reassembly, the window of requests in flight, serialized sends."""

    def __init__(self, websocket: WebSocket, stages: Mapping[str, Stage[Any, Any]], window: int, max_bytes: int):
        self.ws, self.stages, self.window = websocket, stages, window
        self.reassembler = Reassembler(max_bytes)
        self.received: dict[tuple[str, Any], int] = {}  # wire bytes of chunked requests still arriving
        self.inflight: set[asyncio.Task[None]] = set()
        self.send_lock = asyncio.Lock()
        self.runtime = websocket.app.state.runtime
        self.settings = websocket.app.state.settings
        self.budget = websocket.app.state.budget
        self.idempotency = websocket.app.state.idempotency
        self.running: set[str] = set()  # request ids in flight on this connection
        self.route = websocket.scope["path"]
        self.metrics = websocket.app.state.metrics

    async def send(self, frames: list[str] | list[bytes]) -> int:
        sent = 0
        async with self.send_lock:
            for frame in frames:
                if isinstance(frame, bytes):
                    await self.ws.send_bytes(frame)
                else:
                    await self.ws.send_text(frame)
                sent += len(frame)
        self.metrics.bytes_out.labels(self.route).inc(sent)
        return sent

    async def send_error(self, request_id: Any, exc: EdenError) -> int:
        message = {"type": "error", "request_id": request_id, **error_body(exc.code, exc.message, exc.details)}
        return await self.send(split_text(message))

    async def handle(self, req: WsRequest, stage: Stage[Any, Any]) -> None:
        component = "cloud" if self.route == "/ws/encode" else "edge"
        with continued(req.header), tracer().start_as_current_span(f"{component} WS {req.type}",
                                                                   kind=SpanKind.SERVER) as span:
            span.set_attributes({"edensplit.component": component, "edensplit.request_id": req.request_id,
                                 "edensplit.message_type": req.type})
            await self._handle(req, stage)

    async def _handle(self, req: WsRequest, stage: Stage[Any, Any]) -> None:
        status, sent, timings = str(ErrorCode.CANCELLED), 0, {}  # status: until an answer or an error is sent
        try:
            frames = await self.answer(req, stage, timings)
            sent = await self.send(frames)
            status = "success"
        except EdenError as exc:
            status = str(exc.code)
            log_refusal(req.request_id, exc)
            sent = await self._try_error(req.request_id, exc)
        except Exception as exc:  # a fault, not the caller's: log it, answer INTERNAL_ERROR, keep serving
            log.exception("%s %s failed", req.request_id, req.type)
            status = str(ErrorCode.INTERNAL_ERROR)
            sent = await self._try_error(req.request_id, EdenError(
                f"internal error ({type(exc).__name__}); see the server log for request {req.request_id}"))
        finally:
            elapsed = time.perf_counter() - req.started
            access_log.info("%s WS %s %s %s in=%d out=%d %.1fms", req.request_id, self.route, req.type, status,
                            req.size, sent, elapsed * 1000, extra={
                                "request_id": req.request_id, "transport": "ws", "method": "WS", "route": self.route,
                                "type": req.type, "status": status, "code": None if status == "success" else status,
                                "bytes_in": req.size, "bytes_out": sent, "ms": round(elapsed * 1000, 1)})
            self.metrics.requests.labels(self.route, "WS", status).inc()
            self.metrics.latency.labels(self.route).observe(elapsed)
            self.metrics.observe_stages(self.route, timings)
            if status != "success":
                self.metrics.errors.labels(self.route, status).inc()

    async def answer(self, req: WsRequest, stage: Stage[Any, Any], timings: dict[str, float]
                     ) -> list[str] | list[bytes]:
        """The request's answer messages: run through the stage, or replayed for a retried request."""
        key = f"ws:{req.request_id}"
        request_digest = await run_in_threadpool(req.digest)
        stored = await self.idempotency.begin(key, request_digest)
        if stored is not None:
            return stored.answer
        frames = None
        try:
            inp = req.stage_input(stage, self.settings.request_timeout_s)
            frames = await run_stage(stage, inp, self.runtime, lambda reply: render(req, reply), timings)
            return frames
        finally:
            self.idempotency.finish(key, frames, sum(len(f) for f in frames or ()))

    async def _try_error(self, request_id: Any, exc: EdenError) -> int:
        try:
            return await self.send_error(request_id, exc)
        except (WebSocketDisconnect, RuntimeError):
            return 0

    def _hold(self, key: tuple[str, Any], size: int) -> None:
        """Count a chunk's bytes against the server's budget while its message is being reassembled."""
        try:
            self.budget.reserve(size, "request bodies and WebSocket messages being reassembled")
        except EdenError as exc:
            self.reassembler.drop(key)
            self._release(key)
            exc.details["request_id"] = key[1]
            raise
        self.received[key] = self.received.get(key, 0) + size

    def _release(self, key: tuple[str, Any]) -> int:
        """A chunked message is whole (or refused): give its bytes back; its wire size."""
        total = self.received.pop(key, 0)
        self.budget.release(total)
        return total

    def _forget_refused(self) -> None:
        pending = self.reassembler.pending()
        for key in [k for k in self.received if k not in pending]:
            self._release(key)

    async def receive_message(self, message: dict[str, Any]) -> WsRequest | None:
        """A whole request from one WebSocket message, None while chunks are missing; EdenError if bad."""
        data, text = message.get("bytes"), message.get("text")
        size = len(data) if data is not None else len(text or "")
        self.metrics.bytes_in.labels(self.route).inc(size)
        raw = ""
        if data is not None:
            header, payload = unpack_binary(data)
            rid = header.get("request_id")
            key = ("b", rid) if "chunks" in header and isinstance(rid, str) else None
            if key is not None:
                self._hold(key, size)
            whole = self.reassembler.feed_parts(header, payload)
            if whole is None:
                return None
            total = size if key is None else self._release(key)
            header, payload = whole
            binary = True
        else:
            parsed = await self._parse(text or "")
            if parsed.get("type") != "chunk":
                header, total, raw = parsed, size, text or ""
                if size > self.reassembler.max_bytes:
                    raise EdenError(f"message over the server's limit of {self.reassembler.max_bytes} bytes",
                                    code=ErrorCode.PAYLOAD_TOO_LARGE, details={"request_id": parsed.get("request_id")})
            else:
                key = ("t", parsed.get("request_id"))
                if isinstance(key[1], str):
                    self._hold(key, size)
                raw = self.reassembler.feed_chunk(parsed) or ""
                if not raw:
                    return None
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
        return WsRequest(str(kind), rid, binary, header, payload, total, raw)

    @staticmethod
    async def _parse(text: str) -> dict[str, Any]:
        return parse_text(text) if len(text) <= INLINE_PARSE_BYTES else await run_in_threadpool(parse_text, text)

    async def dispatch(self, req: WsRequest) -> None:
        if req.type == "ping":
            await self.send(split_text({"type": "pong", "request_id": req.request_id}))
            return
        stage = self.stages.get(req.type)
        if stage is None:
            raise EdenError(f"unknown message type {req.type!r}; this endpoint takes "
                            f"{', '.join(sorted(self.stages))} or ping", code=ErrorCode.INVALID_REQUEST,
                            details={"request_id": req.request_id})
        if req.binary:
            try:
                check_content_type(stage, str(req.header.get("content_type") or stage.binary_inputs[0]).lower())
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
        task = asyncio.create_task(self.handle(req, stage))
        self.inflight.add(task)
        self.running.add(req.request_id)
        task.add_done_callback(self.inflight.discard)
        task.add_done_callback(lambda _: self.running.discard(req.request_id))

    async def run(self) -> None:
        await self.ws.accept()
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                try:
                    req = await self.receive_message(message)
                    if req is not None:
                        await self.dispatch(req)
                except EdenError as exc:
                    self._forget_refused()
                    await self.send_error(exc.details.get("request_id"), exc)
        except WebSocketDisconnect:
            pass
        finally:
            for key in list(self.received):
                self._release(key)
            for task in list(self.inflight):
                task.cancel()
            if self.ws.client_state == WebSocketState.CONNECTED:
                await self.ws.close()


async def serve_websocket(websocket: WebSocket, stages: Mapping[str, Stage[Any, Any]],
                          window: int = WS_WINDOW) -> None:
    """Serve one WebSocket connection whose message types are the keys of `stages` (after the bearer key,
    when the server has one, and within the server's cap on connections)."""
    state = websocket.app.state
    settings = state.settings
    try:
        check_access(websocket.scope, settings.edensplit_api_key)
        if state.websockets >= settings.max_ws_connections:
            raise EdenError(f"the server has {state.websockets} WebSocket connections open (limit "
                            f"{settings.max_ws_connections}); retry shortly", code=ErrorCode.OVERLOADED,
                            details={"retry_after_s": 1})
    except EdenError as exc:
        state.metrics.requests.labels(websocket.scope["path"], "WS", str(exc.code)).inc()
        response = error_response(exc.code, exc.message, exc.details)
        if exc.code == ErrorCode.UNAUTHORIZED:
            response.headers["WWW-Authenticate"] = "Bearer"
        await deny(websocket, response)
        return
    state.websockets += 1
    try:
        await Connection(websocket, stages, window, int(settings.max_request_mb * 2**20)).run()
    finally:
        state.websockets -= 1

"""WebSocket serving: one connection, many requests in flight, each answered by its request_id.

Messages are JSON text (the user's shapes, base64 payloads) or binary (an EDS1 header naming the
request, then raw bytes), chunked when large (see edensplit.wire.messages). Each connection admits
at most `window` unanswered requests; more get an OVERLOADED error. Answers are sent as they are
ready, which may be out of order: clients match them by request_id. A bad message gets an `error`
message and the connection and the server keep going. Transport-level ping/pong is uvicorn's
(every 20 s by default); `{"type": "ping"}` is answered with `{"type": "pong"}` too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from edensplit.errors import EdenError, ErrorCode
from edensplit.servers.runtime import ModelRuntime
from edensplit.wire.messages import CHUNK_BYTES, Reassembler, split_binary, split_text

log = logging.getLogger("edensplit.server")
access_log = logging.getLogger("edensplit.access")
WS_WINDOW = 8


@dataclass
class WsRequest:
    """One whole request message: the JSON message (or binary header) and the binary payload."""

    type: str
    request_id: str
    binary: bool
    header: dict[str, Any]
    payload: bytes = b""
    started: float = field(default_factory=time.perf_counter)

    @property
    def body(self) -> dict[str, Any]:
        """The JSON message's `payload` object, falling back to the message itself (top-level fields)."""
        inner = self.header.get("payload")
        return {**self.header, **inner} if isinstance(inner, dict) else self.header


@dataclass
class WsReply:
    """An answer: JSON `payload` fields for text messages, `data` bytes for binary ones, and metadata."""

    metadata: dict[str, Any]
    payload: dict[str, Any] | None = None
    data: bytes = b""


Handler = Callable[[WsRequest, FastAPI, ModelRuntime], Awaitable[WsReply]]


class Connection:
    """The per-connection state: reassembly, the window of requests in flight, serialized sends."""

    def __init__(self, websocket: WebSocket, handlers: dict[str, Handler], window: int, max_bytes: int):
        self.ws, self.handlers, self.window = websocket, handlers, window
        self.reassembler = Reassembler(max_bytes)
        self.inflight: set[asyncio.Task[None]] = set()
        self.send_lock = asyncio.Lock()
        self.app: FastAPI = websocket.app
        self.runtime: ModelRuntime = websocket.app.state.runtime
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
        message = {"type": "error", "request_id": request_id, "status": "error",
                   "error": {"code": str(exc.code), "message": exc.message, "details": exc.details}}
        return await self.send(split_text(message))

    async def reply(self, req: WsRequest, reply: WsReply) -> int:
        kind = f"{req.type}_result"
        if req.binary:
            header = {"type": kind, "request_id": req.request_id, "status": "success", "metadata": reply.metadata}
            return await self.send(split_binary(header, reply.data, CHUNK_BYTES))
        message = {"type": kind, "request_id": req.request_id, "status": "success", "payload": reply.payload or {},
                   "metadata": reply.metadata}
        return await self.send(split_text(message))

    async def handle(self, req: WsRequest, handler: Handler, size: int) -> None:
        status, sent = "success", 0
        try:
            async with self.runtime.admission():
                reply = await handler(req, self.app, self.runtime)
            sent = await self.reply(req, reply)
        except EdenError as exc:
            status = str(exc.code)
            sent = await self._try_error(req.request_id, exc)
        except Exception as exc:  # a fault, not the caller's: log it, answer INTERNAL_ERROR, keep serving
            log.exception("%s %s failed", req.request_id, req.type)
            status = str(ErrorCode.INTERNAL_ERROR)
            sent = await self._try_error(req.request_id, EdenError(
                f"internal error ({type(exc).__name__}); see the server log for request {req.request_id}"))
        finally:
            elapsed = time.perf_counter() - req.started
            access_log.info("%s WS %s %s %s in=%d out=%d %.1fms", req.request_id, self.route, req.type, status,
                            size, sent, elapsed * 1000)
            self.metrics.requests.labels(self.route, "WS", status).inc()
            self.metrics.latency.labels(self.route).observe(elapsed)

    async def _try_error(self, request_id: Any, exc: EdenError) -> int:
        try:
            return await self.send_error(request_id, exc)
        except (WebSocketDisconnect, RuntimeError):
            return 0

    def receive_message(self, message: dict[str, Any]) -> WsRequest | None:
        """A whole request from one WebSocket message, None while chunks are missing; EdenError if bad."""
        data, text = message.get("bytes"), message.get("text")
        size = len(data) if data is not None else len(text or "")
        self.metrics.bytes_in.labels(self.route).inc(size)
        if data is not None:
            whole = self.reassembler.feed_binary(data)
            if whole is None:
                return None
            header, payload = whole
            binary = True
        else:
            header = self.reassembler.feed_text(text or "")
            if header is None:
                return None
            payload, binary = b"", False
        rid, kind = header.get("request_id"), header.get("type")
        if not isinstance(rid, str) or not rid:
            raise EdenError("every request needs a non-empty string request_id", code=ErrorCode.INVALID_REQUEST,
                            details={"type": kind})
        return WsRequest(str(kind), rid, binary, header, payload)

    async def run(self) -> None:
        await self.ws.accept()
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                try:
                    req = self.receive_message(message)
                    if req is None:
                        continue
                    if req.type == "ping":
                        await self.send(split_text({"type": "pong", "request_id": req.request_id}))
                        continue
                    handler = self.handlers.get(req.type)
                    if handler is None:
                        raise EdenError(f"unknown message type {req.type!r}; this endpoint takes "
                                        f"{', '.join(sorted(self.handlers))} or ping", code=ErrorCode.INVALID_REQUEST,
                                        details={"request_id": req.request_id})
                    if len(self.inflight) >= self.window:
                        raise EdenError(f"{len(self.inflight)} requests in flight on this connection (window "
                                        f"{self.window}); wait for answers", code=ErrorCode.OVERLOADED,
                                        details={"request_id": req.request_id})
                    task = asyncio.create_task(self.handle(req, handler, len(req.payload) + len(str(req.header))))
                    self.inflight.add(task)
                    task.add_done_callback(self.inflight.discard)
                except EdenError as exc:
                    await self.send_error(exc.details.get("request_id"), exc)
        except WebSocketDisconnect:
            pass
        finally:
            for task in list(self.inflight):
                task.cancel()
            if self.ws.client_state == WebSocketState.CONNECTED:
                await self.ws.close()


async def serve_websocket(websocket: WebSocket, handlers: dict[str, Handler], window: int = WS_WINDOW) -> None:
    settings = websocket.app.state.settings
    await Connection(websocket, handlers, window, int(settings.max_request_mb * 2**20)).run()

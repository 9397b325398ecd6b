"""What the cloud and edge apps share: lifespan model loading, the error envelope, request ids,
the per-request log line and metrics, body-size limits, and the health and metrics routes."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edensplit import __version__
from edensplit.errors import EdenError, ErrorCode
from edensplit.servers.runtime import ModelRuntime, load_model_for
from edensplit.servers.schemas import HealthResponse, schema_error
from edensplit.settings import ServerSettings
from edensplit.wire.compression import compress, decompress, normalise_codec

log = logging.getLogger("edensplit.server")
access_log = logging.getLogger("edensplit.access")


def configure_logging() -> None:
    """Give edensplit's loggers a handler when the host (uvicorn) did not."""
    ours = logging.getLogger("edensplit")
    ours.setLevel(logging.INFO)
    if not ours.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        ours.addHandler(handler)


def error_body(code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"status": "error", "data": None, "error": {"code": str(code), "message": message,
                                                       "details": details or {}}}


def error_response(code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> JSONResponse:
    headers = {"Retry-After": "1"} if code in (ErrorCode.OVERLOADED, ErrorCode.NOT_READY) else None
    return JSONResponse(error_body(code, message, details), status_code=code.status, headers=headers)


def request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id") or uuid.uuid4().hex


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can share a process)."""

    def __init__(self, stage: str):
        self.registry = CollectorRegistry()
        labels = ("route", "method", "status")
        self.requests = Counter("edensplit_requests", "requests answered", labels, registry=self.registry)
        self.latency = Histogram("edensplit_request_seconds", "request wall time", ("route",),
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                                 registry=self.registry)
        self.bytes_in = Counter("edensplit_request_bytes", "request body bytes", ("route",), registry=self.registry)
        self.bytes_out = Counter("edensplit_response_bytes", "response body bytes", ("route",),
                                 registry=self.registry)
        self.inflight = Gauge("edensplit_inflight", "requests admitted and not yet answered", registry=self.registry)
        self.info = Gauge("edensplit_info", "server identity", ("stage", "version"), registry=self.registry)
        self.info.labels(stage, __version__).set(1)


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

        await self.app(inner, replay, send)


def health_router(runtime_of: Callable[[Request], ModelRuntime]) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/health", response_model=HealthResponse, summary="Model, device and weights source")
    async def health(request: Request) -> dict[str, Any]:
        return runtime_of(request).health()

    @router.get("/health/live", summary="The process answers")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/health/ready", response_model=HealthResponse, summary="200 once the model is loaded, else 503")
    async def ready(request: Request) -> Response:
        info = runtime_of(request).health()
        return JSONResponse(info, status_code=200 if info["model_loaded"] else 503)

    @router.get("/metrics", summary="Prometheus metrics")
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def runtime(request: Request) -> ModelRuntime:
    """FastAPI dependency: the app's resident model runtime."""
    return request.app.state.runtime


Runtime = Annotated[ModelRuntime, Depends(runtime)]


def create_app(stage: str, title: str, settings: ServerSettings | None = None,
               model_loader: Callable[[ServerSettings], Any] | None = None) -> FastAPI:
    """An app for `stage` whose model is loaded once at start-up (lifespan) and kept resident."""
    configure_logging()
    settings = settings or ServerSettings()
    metrics = Metrics(stage)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt: ModelRuntime = app.state.runtime
        if rt.model is None:
            try:
                rt.model = (model_loader or (lambda s: load_model_for({stage}, s)))(settings)
            except EdenError as exc:  # stay up, not ready: /health says why, requests get 503 NOT_READY
                rt.load_error = exc.message
                log.error("%s server cannot load its model (not ready; see /health): %s", stage, exc.message)
        yield
        rt.close()

    app = FastAPI(title=title, version=__version__, lifespan=lifespan,
                  description="See docs/protocol.md for the binary formats and the error codes.")
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.runtime = ModelRuntime(stage, settings.max_inflight, max_batch=settings.max_batch,
                                     batch_wait_s=settings.batch_wait_ms / 1000)
    metrics.inflight.set_function(lambda: app.state.runtime.inflight)
    app.add_middleware(RequestContextMiddleware, max_body=int(settings.max_request_mb * 2**20), metrics=metrics)

    @app.exception_handler(EdenError)
    async def eden_error(request: Request, exc: EdenError) -> JSONResponse:
        if exc.code.status >= 500:
            log.error("%s %s: %s", request_id(request), exc.code, exc.message)
        return error_response(exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = schema_error(list(exc.errors()))
        return error_response(error.code, error.message, error.details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = ErrorCode.NOT_FOUND if exc.status_code in (404, 405) else ErrorCode.INVALID_REQUEST
        response = error_response(code, f"{request.method} {request.url.path}: {exc.detail}")
        response.status_code = exc.status_code
        return response

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s unhandled error on %s", request_id(request), request.url.path)
        return error_response(ErrorCode.INTERNAL_ERROR, f"internal error ({type(exc).__name__}); "
                              f"see the server log for request {request_id(request)}")

    app.include_router(health_router(runtime))
    return app

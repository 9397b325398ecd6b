"""The app factory the cloud and edge share: lifespan model loading, the error handlers, request
context, and the health and metrics routes."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from edensplit.errors import EdenError, ErrorCode
from edensplit.model.eden import ENCODE, Eden
from edensplit.model.loading import load_model_for
from edensplit.servers.budget import ByteBudget
from edensplit.servers.envelope import error_response, log_refusal
from edensplit.servers.idempotency import IdempotencyCache
from edensplit.servers.logs import configure_logging
from edensplit.servers.metrics import Metrics
from edensplit.servers.middleware import RequestContextMiddleware
from edensplit.servers.runtime import ModelRuntime
from edensplit.servers.schemas import HealthResponse, schema_error
from edensplit.settings import ServerSettings, resolve_max_batch
from edensplit.tracing import setup_tracing
from edensplit.version import __version__

log = logging.getLogger("edensplit.server")


def request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id") or uuid.uuid4().hex


def runtime_of(request: Request) -> ModelRuntime:
    """The app's resident model runtime."""
    return request.app.state.runtime


def health_router() -> APIRouter:
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
        return JSONResponse(info, status_code=200 if info["ready"] else 503)

    @router.get("/metrics", summary="Prometheus metrics (of every worker, under gunicorn)")
    async def metrics(request: Request) -> Response:
        return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router


def drain_on_sigterm(runtime: ModelRuntime) -> Callable[[], None]:
    """Chain a SIGTERM handler that stops admission before the server's own (uvicorn's) handler runs;
    returns what undoes it. Only the main thread can listen to signals: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        runtime.draining = True
        log.warning("%s server: SIGTERM, admitting nothing new; finishing %d requests in flight", runtime.stage,
                    runtime.inflight)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handler)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, previous)
    return restore


def create_app(stage: str, title: str, settings: ServerSettings, model: Eden | None = None, *,
               routers: Sequence[APIRouter] = (), on_shutdown: Sequence[Callable[[], Awaitable[Any]]] = (),
               warm_up: Callable[[Eden], Any] | None = None) -> FastAPI:
    """An app for `stage` whose model is `model`, or is loaded once at start-up (lifespan) and kept resident,
    then warmed up (`warm_up`, one small pass) before the server reports ready; `on_shutdown` closes what
    the stage's routes hold (clients of other servers). On SIGTERM it stops admitting and finishes what is
    in flight (uvicorn waits for it, up to its graceful-shutdown timeout).

    As gunicorn workers (`gunicorn ... -k uvicorn.workers.UvicornWorker`) each worker loads its own model and
    takes no connection before it is ready; their metrics go to files they share (edensplit.servers.metrics),
    so that /metrics, whichever worker answers, counts them all, `edensplit_workers_ready` the ready ones."""
    configure_logging(settings.log_format)
    metrics = Metrics(stage)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt: ModelRuntime = app.state.runtime
        if rt.model is None:
            try:
                rt.model = await run_in_threadpool(load_model_for, {stage}, settings)
            except EdenError as exc:  # stay up, not ready: /health says why, requests get 503 NOT_READY
                rt.load_error = exc.message
                log.error("%s server cannot load its model (not ready; see /health): %s", stage, exc.message)
        await run_in_threadpool(rt.warm_up, warm_up if settings.warmup else None)
        metrics.workers_ready.set(1 if rt.ready else 0)
        restore = drain_on_sigterm(rt)
        try:
            yield
        finally:
            restore()
            metrics.workers_ready.set(0)
            for close in on_shutdown:
                await close()
            await rt.close()

    app = FastAPI(title=title, version=__version__, lifespan=lifespan,
                  description="See docs/protocol.md for the binary formats and the error codes.")
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.budget = ByteBudget(int(settings.body_memory_mb * 2**20))
    app.state.idempotency = IdempotencyCache(int(settings.idempotency_cache_mb * 2**20))
    app.state.websockets = 0  # connections open
    app.state.runtime = ModelRuntime(stage, settings.max_inflight, model, max_batch=resolve_max_batch(settings),
                                     batch_wait_s=settings.batch_wait_ms / 1000)

    def on_load(inflight: int, queued: int) -> None:  # set as they change: workers' gauges add up (livesum)
        metrics.inflight.set(inflight)
        metrics.queue_depth.set(queued)

    app.state.runtime.on_load = on_load
    app.state.runtime.on_batch = metrics.batch_size.observe
    component = "cloud" if stage == ENCODE else "edge"
    setup_tracing(f"edensplit-{component}")
    app.add_middleware(RequestContextMiddleware, settings=settings, metrics=metrics, budget=app.state.budget,
                       idempotency=app.state.idempotency, component=component)

    @app.exception_handler(EdenError)
    async def eden_error(request: Request, exc: EdenError) -> JSONResponse:
        request.state.error_code = str(exc.code)
        log_refusal(request_id(request), exc)
        return error_response(exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = schema_error(list(exc.errors()))
        request.state.error_code = str(error.code)
        return error_response(error.code, error.message, error.details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = ErrorCode.NOT_FOUND if exc.status_code in (404, 405) else ErrorCode.INVALID_REQUEST
        request.state.error_code = str(code)
        response = error_response(code, f"{request.method} {request.url.path}: {exc.detail}")
        response.status_code = exc.status_code
        return response

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        request.state.error_code = str(ErrorCode.INTERNAL_ERROR)
        log.exception("%s unhandled error on %s", request_id(request), request.url.path)
        return error_response(ErrorCode.INTERNAL_ERROR, f"internal error ({type(exc).__name__}); "
                              f"see the server log for request {request_id(request)}")

    app.include_router(health_router())
    for router in routers:
        app.include_router(router)
    return app

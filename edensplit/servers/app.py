"""The app factory both servers share: from a `Service` declaration, an app with its model loaded once at
start-up (lifespan), warmed up and kept resident, its operations' HTTP routes and WebSocket dispatcher, the
health and metrics routes, the error envelope for every failure, and the request pipeline around it all."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from edensplit.allocator import keep_freed_memory
from edensplit.errors import EdenError, ErrorCode
from edensplit.model.eden import Eden
from edensplit.model.loading import load_model_for
from edensplit.servers import http
from edensplit.servers.auth import Access, bearer_scheme
from edensplit.servers.envelope import error_response
from edensplit.servers.logs import configure_logging
from edensplit.servers.metrics import Metrics
from edensplit.servers.openapi import REQUEST_ID, endpoint_responses, route_responses, with_handles
from edensplit.servers.pipeline import Pipeline
from edensplit.servers.runtime import ModelRuntime
from edensplit.servers.schemas import HealthResponse, schema_error
from edensplit.servers.service import Endpoint, Service
from edensplit.servers.ws import serve_websocket
from edensplit.settings import ServerSettings, resolve_max_batch
from edensplit.tracing import setup_tracing
from edensplit.version import __version__

log = logging.getLogger("edensplit.server")


def runtime_of(request: Request) -> ModelRuntime:
    """The app's resident model runtime."""
    return request.app.state.runtime


class MetricsResponse(Response):
    """Prometheus' text exposition format, as prometheus_client writes it."""

    media_type = CONTENT_TYPE_LATEST


def health_router(keyed: bool = False) -> APIRouter:
    """The health routes (open) and /metrics (guarded by `key`, when set)."""
    router = APIRouter(tags=["health"])

    @router.get("/health", response_model=HealthResponse, summary="Model, device and weights source",
                responses=route_responses("/health", keyed))
    async def health(request: Request) -> dict[str, Any]:
        return {**runtime_of(request).health(), "shared_memory": request.app.state.pipeline.shm.enabled}

    @router.get("/health/live", summary="The process answers", responses=route_responses("/health/live", keyed))
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    not_ready = {"model": HealthResponse, "headers": REQUEST_ID,
                 "description": "not ready: loading, warming up, failed to load (see `error`) or shutting down"}
    ready_responses = {**route_responses("/health/ready", keyed), 503: not_ready}

    @router.get("/health/ready", response_model=HealthResponse, summary="200 once the model is loaded, else 503",
                responses=ready_responses)
    async def ready(request: Request) -> Response:
        info = runtime_of(request).health()
        return JSONResponse(info, status_code=200 if info["ready"] else 503)

    @router.get("/metrics", summary="Prometheus metrics (of every worker, under gunicorn)",
                response_class=MetricsResponse, dependencies=bearer_scheme("/metrics", keyed),
                responses=route_responses("/metrics", keyed, success={
                    "description": f"Prometheus text exposition format ({CONTENT_TYPE_LATEST})"}))
    async def metrics(request: Request) -> Response:
        return MetricsResponse(request.app.state.metrics.render())

    return router


def operations_router(service: Service, keyed: bool = False, shm: bool = False) -> APIRouter:
    """Each declared operation as a POST route, and all of them as the message types of one WebSocket; `key`,
    when set, guards them (documented: 401 and the bearer scheme)."""
    router = APIRouter()
    for endpoint in service.endpoints:
        router.add_api_route(endpoint.path, _handler(endpoint), methods=["POST"], tags=[service.component],
                             summary=endpoint.summary, description=endpoint.description,
                             response_model=endpoint.response_model, responses=endpoint_responses(endpoint, keyed, shm),
                             dependencies=bearer_scheme(endpoint.path, keyed), openapi_extra=_openapi(endpoint, shm))
    endpoints = service.by_name

    async def websocket(websocket: WebSocket) -> None:
        await serve_websocket(websocket, endpoints)

    websocket.__doc__ = f"{', '.join(endpoints)} messages; see docs/protocol.md."
    router.add_api_websocket_route(service.ws_path, websocket)
    return router


def _handler(endpoint: Endpoint) -> Callable[..., Any]:
    """The route's function: its path parameters typed as declared (FastAPI validates and documents them), the
    request handed to the HTTP framing."""
    async def handle(request: Request, **path_params: Any) -> Response:
        http.exchange_of(request).operation = endpoint.name
        return await http.serve(endpoint.operation, request, endpoint.batcher)

    handle.__name__ = endpoint.name
    handle.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
         *(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind)
           for name, kind in endpoint.path_params.items())], return_annotation=Response)
    return handle


def _openapi(endpoint: Endpoint, shm: bool) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if endpoint.request_body:
        extra["requestBody"] = with_handles(endpoint.request_body) if shm else dict(endpoint.request_body)
    if endpoint.parameters:
        extra["parameters"] = [dict(p) for p in endpoint.parameters]
    return extra


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


def build_or_exit(factory: Callable[[], FastAPI], name: str) -> FastAPI:
    """`factory()`, the app of a server started from its environment (`uvicorn edensplit.cloud:app`, gunicorn): a
    configuration a person must fix (an empty key, a keys file that cannot be read, a setting out of range) is one
    line on stderr and exit status 2, not a traceback."""
    try:
        return factory()
    except EdenError as exc:
        message = exc.message
    except ValidationError as exc:
        error = exc.errors()[0]
        message = f"{'.'.join(map(str, error['loc'])).upper()}: {error['msg']}"
    print(f"edensplit {name}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def reload_on_sighup(access: Access) -> Callable[[], None]:
    """With a keys file, SIGHUP reads it again at once (instead of ending the process); returns what undoes it.
    Only the main thread can listen to signals: elsewhere (and without a keys file) this does nothing."""
    if access.path is None or threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGHUP)

    def handler(signum: int, frame: Any) -> None:
        access.reload()

    signal.signal(signal.SIGHUP, handler)

    def restore() -> None:
        if signal.getsignal(signal.SIGHUP) is handler:
            signal.signal(signal.SIGHUP, previous)
    return restore


async def every_second(chores: tuple[Callable[[], Any], ...]) -> None:
    """Run each of a service's housekeeping chores once a second, on the event loop, until cancelled (one that
    fails is logged, and runs again the next second)."""
    while True:
        await asyncio.sleep(1.0)
        for chore in chores:
            try:
                chore()
            except Exception:
                log.exception("housekeeping failed: %s", getattr(chore, "__qualname__", chore))


def create_app(service: Service, settings: ServerSettings, model: Eden | None = None) -> FastAPI:
    """The app serving `service`, whose model is `model`, or is loaded once at start-up (after the server starts
    listening: 503 "loading" until then) and kept resident, then warmed up before the server reports ready. On
    SIGTERM it stops admitting and finishes what is in flight (uvicorn waits for it, up to its graceful-shutdown
    timeout).

    As gunicorn workers (`gunicorn ... -k uvicorn.workers.UvicornWorker`) each worker loads its own model and
    answers 503 NOT_READY until it is ready; their metrics go to files they share (edensplit.servers.metrics),
    so that /metrics, whichever worker answers, counts them all, `edensplit_workers_ready` the ready ones."""
    keep_freed_memory()  # request-sized buffers reused, not faulted in again for each request
    configure_logging(settings.log_format)
    metrics = Metrics(service.stage)
    runtime = ModelRuntime(service.stage, settings.max_inflight, model, max_batch=resolve_max_batch(settings),
                           batch_wait_s=settings.batch_wait_ms / 1000)

    async def start_model() -> None:
        """Load the model (unless given), warm it up, then report ready; a model that cannot load leaves the server
        up and not ready: /health says so, requests get 503 NOT_READY."""
        model = runtime.model
        if model is None:
            try:
                model = await run_in_threadpool(load_model_for, {service.stage}, settings)
            except EdenError as exc:
                runtime.load_error = exc.message
                log.error("%s server cannot load its model (not ready; see /health): %s", service.component,
                          exc.message)
        await run_in_threadpool(runtime.warm_up, service.warm_up if settings.warmup else None, model)
        metrics.workers_ready.set(1 if runtime.ready else 0)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A model to load is loaded after the server starts listening: meanwhile /health/ready answers 503
        # "loading" (a client waits for it: edensplit.client.preflight) instead of the port refusing connections.
        loading = None
        if runtime.model is None:
            loading = asyncio.ensure_future(start_model())
        else:
            await start_model()
        restore = drain_on_sigterm(runtime)
        unhook = reload_on_sighup(pipeline.access)
        chores = asyncio.ensure_future(every_second(service.every_second)) if service.every_second else None
        try:
            async with pipeline.shm.running():  # ALLOW_SHM: crashed processes' segments swept, expired ones too
                yield
        finally:
            if chores is not None:
                chores.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await chores
            if loading is not None and not loading.done():
                loading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loading
            unhook()
            restore()
            metrics.workers_ready.set(0)
            for close in service.on_shutdown:
                await close()
            await runtime.close()

    # The request pipeline makes each request's server span, alike for HTTP requests and WebSocket messages.
    # FastAPI's own tracing (newer FastAPI) would add a second server span to every HTTP request, with the
    # pipeline's steps under its endpoint span, and one span for a whole WebSocket connection, under which every
    # message without a traceparent would fall: off (older FastAPI keeps an unknown keyword in `extra`).
    app = FastAPI(title=service.title, version=__version__, lifespan=lifespan, telemetry={"tracing": False},
                  description="See docs/protocol.md for the binary formats and the error codes.")
    pipeline = Pipeline(service.component, settings, runtime, metrics)
    app.state.settings, app.state.metrics, app.state.runtime = settings, metrics, runtime
    app.state.pipeline, app.state.service = pipeline, service
    app.state.websockets = 0  # connections open
    for name, value in service.state.items():
        setattr(app.state, name, value)

    def on_load(inflight: int, queued: int) -> None:  # set as they change: workers' gauges add up (livesum)
        metrics.inflight.set(inflight)
        metrics.queue_depth.set(queued)

    runtime.on_load = on_load
    runtime.on_batch = metrics.batch_size.observe
    setup_tracing(f"edensplit-{service.component}")
    app.add_middleware(http.HttpFraming, pipeline=pipeline)
    _error_handlers(app, pipeline)
    app.include_router(health_router(settings.keyed))
    app.include_router(operations_router(service, settings.keyed, pipeline.shm.enabled))
    for router in service.routers:
        app.include_router(router)
    return app


def _error_handlers(app: FastAPI, pipeline: Pipeline) -> None:
    """Every failure answered in the error envelope, its code noted for the log line and the metrics."""

    def answer(request: Request, exc: EdenError) -> JSONResponse:
        pipeline.failed(http.exchange_of(request), exc)
        return error_response(exc.code, exc.message, exc.details)

    @app.exception_handler(EdenError)
    async def eden_error(request: Request, exc: EdenError) -> JSONResponse:
        return answer(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return answer(request, schema_error(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            response = answer(request, EdenError(f"{where}: method not allowed (allowed: {allowed or 'none'})",
                                                 code=ErrorCode.METHOD_NOT_ALLOWED))
            response.headers["Allow"] = allowed
            return response
        code = ErrorCode.NOT_FOUND if exc.status_code == 404 else ErrorCode.INVALID_REQUEST
        response = answer(request, EdenError(f"{where}: {exc.detail}", code=code))
        response.status_code = exc.status_code
        return response

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        error = pipeline.fault(http.exchange_of(request), exc)
        return error_response(error.code, error.message)

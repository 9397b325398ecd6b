"""The page's app: its routers, the servers' access rules on every route, their error envelope on every failure,
and a sweeper that removes what outlived UI_UPLOAD_TTL_S."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from edensplit.errors import EdenError, ErrorCode
from edensplit.servers.auth import Access
from edensplit.servers.envelope import error_response
from edensplit.servers.pipeline import listed
from edensplit.servers.schemas import schema_error
from edensplit.settings import UiSettings
from edensplit.ui.dependencies import admitted
from edensplit.ui.jobs import Jobs
from edensplit.ui.routers import jobs, pages
from edensplit.version import __version__

log = logging.getLogger("edensplit.ui")


def create_ui_app(settings: UiSettings | None = None, *, local: bool = False,
                  options: list[str] | None = None) -> FastAPI:
    """The page's app: jobs against the servers of `settings` (or `local`), with `edensplit interpolate`'s
    `options` added to each."""
    settings = settings or UiSettings()
    store = Jobs(settings, local, list(options or []))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.ensure_future(sweep(store, min(settings.ui_upload_ttl_s / 4, 30.0)))
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await asyncio.to_thread(store.close)

    app = FastAPI(title="edensplit ui", version=__version__, lifespan=lifespan, dependencies=[Depends(admitted)],
                  description="Interpolate a clip from a web page; see the README's Web page section.")
    app.state.settings, app.state.jobs = settings, store
    app.state.access = Access(settings.api_key())
    app.state.allowed_hosts = {host.lower() for host in listed(settings.allowed_hosts)}
    app.state.origins = {origin.lower() for origin in listed(settings.allowed_origins)}
    app.include_router(pages.router)
    app.include_router(jobs.router)
    _error_handlers(app)
    return app


async def sweep(store: Jobs, every_s: float) -> None:
    """Remove what outlived the TTL, every `every_s` seconds."""
    while True:
        await asyncio.sleep(every_s)
        try:
            removed = await asyncio.to_thread(store.sweep)
        except OSError as exc:  # a folder that cannot be removed now is tried again next time
            log.warning("ui: sweeping %s: %s", store.root, exc)
            continue
        if removed:
            log.info("ui: removed %d expired uploads and jobs", removed)


def _error_handlers(app: FastAPI) -> None:
    """Every failure in the servers' error envelope."""

    @app.exception_handler(EdenError)
    async def eden_error(request: Request, exc: EdenError) -> JSONResponse:
        return error_response(exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = schema_error(list(exc.errors()))
        return error_response(error.code, error.message, error.details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}.get(exc.status_code,
                                                                                ErrorCode.INVALID_REQUEST)
        response = error_response(code, f"{request.method} {request.url.path}: {exc.detail}")
        response.status_code = exc.status_code
        return response

"""The JSON envelope every answer comes in: `{"status", "data", "error"}`, on HTTP and WebSocket alike."""

from __future__ import annotations

import logging
from typing import Any

from fastapi.responses import JSONResponse

from edensplit.errors import EdenError, ErrorCode

log = logging.getLogger("edensplit.server")


def success_body(data: dict[str, Any]) -> dict[str, Any]:
    return {"status": "success", "data": data, "error": None}


def error_body(code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"status": "error", "data": None, "error": {"code": str(code), "message": message,
                                                       "details": details or {}}}


def error_response(code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> JSONResponse:
    """The envelope with the code's status; an answer worth retrying says when (Retry-After, seconds), a 401
    which scheme it wants (WWW-Authenticate)."""
    headers = {}
    if code in (ErrorCode.OVERLOADED, ErrorCode.NOT_READY):
        headers["Retry-After"] = str((details or {}).get("retry_after_s", 1))
    if code == ErrorCode.UNAUTHORIZED:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(code, message, details), status_code=code.status, headers=headers or None)


QUIET = {ErrorCode.OVERLOADED: logging.INFO, ErrorCode.NOT_READY: logging.INFO, ErrorCode.CANCELLED: logging.INFO,
         ErrorCode.DEADLINE_EXCEEDED: logging.INFO, ErrorCode.UPSTREAM_ERROR: logging.WARNING}


def log_refusal(rid: str, exc: EdenError) -> None:
    """A server-side failure (5xx) at ERROR; backpressure, deadlines and another server's fault below that."""
    if exc.code.status >= 500 or exc.code in QUIET:  # a fault keeps its traceback (in the log, never the answer)
        fault = exc.code not in QUIET
        log.log(QUIET.get(exc.code, logging.ERROR), "%s %s: %s", rid, exc.code, exc.message,
                exc_info=exc if fault else None, extra={"request_id": rid, "code": str(exc.code)})

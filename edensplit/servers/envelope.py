"""The JSON envelope every answer comes in: `{"status", "data", "error"}`, on HTTP and WebSocket alike."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from edensplit.errors import ErrorCode


def success_body(data: dict[str, Any]) -> dict[str, Any]:
    return {"status": "success", "data": data, "error": None}


def error_body(code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"status": "error", "data": None, "error": {"code": str(code), "message": message,
                                                       "details": details or {}}}


def error_response(code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> JSONResponse:
    headers = {"Retry-After": "1"} if code in (ErrorCode.OVERLOADED, ErrorCode.NOT_READY) else None
    return JSONResponse(error_body(code, message, details), status_code=code.status, headers=headers)



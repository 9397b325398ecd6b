"""Access control: with EDENSPLIT_API_KEY set, every route but /health* (so /metrics too: Prometheus sends
the key with its `authorization` scrape setting) requires `Authorization: Bearer <key>`, over HTTP (checked
before the body is read) and on the WebSocket handshake alike (the pipeline asks, `servers.pipeline`);
anything else is 401 UNAUTHORIZED in the error envelope. The comparison takes the same time whatever the
key sent."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import Security
from fastapi.security import HTTPBearer

from edensplit.errors import EdenError, ErrorCode

OPEN_PREFIX = "/health"


def bearer_matches(authorization: str | None, key: str) -> bool:
    scheme, _, token = (authorization or "").partition(" ")
    return hmac.compare_digest(token.strip().encode() if scheme.lower() == "bearer" else b"", key.encode())


def check_access(path: str, authorization: str | None, key: str | None) -> None:
    """UNAUTHORIZED unless the server has no key, the route is open, or the request carries the key."""
    if not guarded(path, key):
        return
    if not bearer_matches(authorization, key):
        raise EdenError("this server requires Authorization: Bearer <key> (the client sends EDENSPLIT_API_KEY or "
                        "--api_key)", code=ErrorCode.UNAUTHORIZED)


def guarded(path: str, key: str | None) -> bool:
    """Whether `key` guards `path` (`check_access` asks for it there)."""
    return key is not None and not path.startswith(OPEN_PREFIX)


def access_errors(path: str, key: str | None) -> tuple[ErrorCode, ...]:
    """What `check_access` can refuse a request to `path` with, for the documentation."""
    return (ErrorCode.UNAUTHORIZED,) if guarded(path, key) else ()


def bearer_scheme(path: str, key: str | None) -> list[Any]:
    """Route dependencies that document the bearer scheme on a guarded route (OpenAPI `security`); they check
    nothing: the pipeline has refused a request without the key before the route runs."""
    return [Security(HTTPBearer(auto_error=False, description="EDENSPLIT_API_KEY"))] if guarded(path, key) else []

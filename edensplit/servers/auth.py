"""Access control: with EDENSPLIT_API_KEY set, every route but /health* (so /metrics too: Prometheus sends
the key with its `authorization` scrape setting) requires `Authorization: Bearer <key>`, over HTTP (checked
before the body is read) and on the WebSocket handshake alike; anything else is 401 UNAUTHORIZED in the
error envelope. The comparison takes the same time whatever the key sent."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Scope
from starlette.websockets import WebSocket

from edensplit.errors import EdenError, ErrorCode

OPEN_PREFIX = "/health"


def bearer_matches(authorization: str | None, key: str) -> bool:
    scheme, _, token = (authorization or "").partition(" ")
    return hmac.compare_digest(token.strip().encode() if scheme.lower() == "bearer" else b"", key.encode())


def check_access(scope: Scope, key: str | None) -> None:
    """UNAUTHORIZED unless the server has no key, the route is open, or the request carries the key."""
    if key is None or scope["path"].startswith(OPEN_PREFIX):
        return
    if not bearer_matches(Headers(scope=scope).get("authorization"), key):
        raise EdenError("this server requires Authorization: Bearer <key> (the client sends EDENSPLIT_API_KEY or "
                        "--api_key)", code=ErrorCode.UNAUTHORIZED)


async def deny(websocket: WebSocket, response: Response) -> None:
    """Refuse a WebSocket handshake with an HTTP answer where the server can send one, else close it (1008)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.close(1008, reason=bytes(response.body).decode(errors="replace")[:120])

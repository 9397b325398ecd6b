"""Access control: with EDENSPLIT_API_KEY set, every route but /health* (so /metrics too: Prometheus sends
the key with its `authorization` scrape setting) requires `Authorization: Bearer <key>`, over HTTP (checked
before the body is read) and on the WebSocket handshake alike (the pipeline asks, `servers.pipeline`);
anything else is 401 UNAUTHORIZED in the error envelope. The comparison takes the same time whatever the
key sent."""

from __future__ import annotations

import hmac

from edensplit.errors import EdenError, ErrorCode

OPEN_PREFIX = "/health"


def bearer_matches(authorization: str | None, key: str) -> bool:
    scheme, _, token = (authorization or "").partition(" ")
    return hmac.compare_digest(token.strip().encode() if scheme.lower() == "bearer" else b"", key.encode())


def check_access(path: str, authorization: str | None, key: str | None) -> None:
    """UNAUTHORIZED unless the server has no key, the route is open, or the request carries the key."""
    if key is None or path.startswith(OPEN_PREFIX):
        return
    if not bearer_matches(authorization, key):
        raise EdenError("this server requires Authorization: Bearer <key> (the client sends EDENSPLIT_API_KEY or "
                        "--api_key)", code=ErrorCode.UNAUTHORIZED)

"""A middleware for Ray Serve's HTTP proxy: a request whose replica was lost before it answered (the replica's
process died, its node went away) gets `503 NOT_READY` with `Retry-After: 1` in the edensplit error envelope,
which the client retries, instead of the proxy's bare `500 Internal Server Error`, which it would not. Every
edensplit route answers, errors included, so a request that got no answer at all is one the replica never
finished: sending it again (same request id) is safe, and a video session whose replica is gone continues on
another one after one SESSION_NOT_FOUND (the client resends the frame the new replica lacks).

Ray reads the proxy's middlewares from `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`, in the proxy's own
environment: `edensplit serve-ray` sets it for the local cluster it starts; for a cluster made with
`ray start`, export it on the proxy's nodes first (docs/scaling.md). Imports no torch.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "edensplit.serve_ray.proxy.middlewares"
BODY = json.dumps({"status": "error", "data": None, "error": {
    "code": "NOT_READY", "message": "the replica serving this request was lost before it answered; send it again",
    "details": {"retry_after_s": 1}}}).encode()


class ReplicaLost:
    """An HTTP request the app never started to answer gets 503 NOT_READY (the proxy would send a bare 500)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watching(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watching)
        except Exception:
            if started:
                raise
        if not started:
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(BODY)).encode()), (b"retry-after", b"1")]})
            await send({"type": "http.response.body", "body": BODY})


def middlewares() -> list[Any]:
    """What Ray's proxy calls (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH)."""
    return [Middleware(ReplicaLost)]

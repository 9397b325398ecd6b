"""The bare app of `edensplit bench --mode overhead`'s floor: a POST route that reads the whole body and answers 16
bytes, and a WebSocket echo that reads N bytes (a text message saying N, then binary messages) and answers 16 bytes.
Nothing of edensplit's: the floor server loads this file alone (`uvicorn floor_app:create_app --factory --app-dir`
this folder), so it starts without importing edensplit (or torch) and measures the bytes' way through uvicorn and
FastAPI only."""

from __future__ import annotations

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response

ANSWER = b"0123456789abcdef"  # the 16 bytes every hop is answered with


def create_app() -> FastAPI:
    """The bare app (`uvicorn floor_app:create_app --factory`: built when served, never at import)."""
    app = FastAPI(title="edensplit bench floor", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/sink")
    async def sink(request: Request) -> Response:
        await request.body()
        return Response(ANSWER, media_type="application/octet-stream")

    @app.websocket("/echo")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                expected, received = int(await websocket.receive_text()), 0
                while received < expected:
                    received += len(await websocket.receive_bytes())
                await websocket.send_bytes(ANSWER)
        except WebSocketDisconnect:
            pass

    return app

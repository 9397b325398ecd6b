"""The cloud's routes: POST /api/v1/encode (a pair), POST /api/v1/encode_frame (one video frame), and
the WebSocket /ws/encode carrying the same two operations."""

from __future__ import annotations

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import Response

from edensplit.servers import http
from edensplit.servers.cloud.stages import EncodeStage
from edensplit.servers.inputs import PAIR, SINGLE
from edensplit.servers.openapi import frames_body, wire_dtype_query, wire_dtypes_text
from edensplit.servers.schemas import EncodeData, EncodeFrameRequest, EncodeRequest, Envelope
from edensplit.servers.ws import serve_websocket
from edensplit.settings import ServerSettings
from edensplit.wire.blob import BLOB_MEDIA_TYPE


def cloud_router(settings: ServerSettings) -> APIRouter:
    """The cloud's HTTP and WebSocket routes over one pair of stages."""
    budget = settings.max_pixels
    stages = {"encode": EncodeStage(PAIR, budget), "encode_frame": EncodeStage(SINGLE, budget)}
    router = APIRouter()

    @router.post("/api/v1/encode", tags=["cloud"], response_model=Envelope[EncodeData],
                 openapi_extra={**frames_body(EncodeRequest, PAIR), **wire_dtype_query()},
                 summary="Encode a frame pair into the enc_out blob",
                 description=f"Query `wire_dtype`: {wire_dtypes_text()}. "
                             f"`Accept: {BLOB_MEDIA_TYPE}` (or a binary request) answers with the raw blob.")
    async def encode(request: Request) -> Response:
        return await http.serve(stages["encode"], request)

    @router.post("/api/v1/encode_frame", tags=["cloud"], response_model=Envelope[EncodeData],
                 openapi_extra={**frames_body(EncodeFrameRequest, SINGLE), **wire_dtype_query()},
                 summary="Encode one video frame (frame-once sessions)",
                 description="Each frame of a video is encoded once; the blob holds one frame and no difference "
                             "(the client, which holds both frames, computes it). Same options as /encode.")
    async def encode_frame(request: Request) -> Response:
        return await http.serve(stages["encode_frame"], request)

    @router.websocket("/ws/encode")
    async def ws_encode(websocket: WebSocket) -> None:
        """encode (a pair) and encode_frame (one frame) messages; see docs/protocol.md."""
        await serve_websocket(websocket, stages)

    return router

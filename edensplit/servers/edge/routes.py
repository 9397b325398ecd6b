"""The edge's routes: POST /api/v1/interpolate (a pair's blob), the frame-once session routes, POST
/api/v1/interpolate_frames (flow B), and the WebSocket /ws/interpolate carrying the same operations."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import Response

from edensplit.servers import http
from edensplit.servers.contract import PNG
from edensplit.servers.edge.stages import CloudEncoder, FramesStage, InterpolateStage, SessionFrameStage
from edensplit.servers.envelope import success_body
from edensplit.servers.inputs import PAIR
from edensplit.servers.openapi import OPTIONS_DOC, binary, frames_body, request_body
from edensplit.servers.schemas import (
    Envelope,
    InterpolateData,
    InterpolateFramesRequest,
    InterpolateRequest,
    SessionFrameRequest,
)
from edensplit.servers.sessions import SessionStore
from edensplit.servers.ws import serve_websocket
from edensplit.settings import ServerSettings
from edensplit.wire.blob import BLOB_MEDIA_TYPE
from edensplit.wire.frames import FRAMES_MEDIA_TYPE

ANSWERS = (f"`Accept: {PNG}` or `{FRAMES_MEDIA_TYPE}` (the default for a binary request) answers with the frame "
           "itself instead of the JSON envelope.")
INTERPOLATE_BODY = request_body(InterpolateRequest, **{
    BLOB_MEDIA_TYPE: binary(f"the enc_out blob of a pair; {OPTIONS_DOC}")})
SESSION_BODY = request_body(SessionFrameRequest, **{
    BLOB_MEDIA_TYPE: binary(f"flow A: one frame's enc_out blob (/encode_frame); {OPTIONS_DOC}, interpolate"),
    FRAMES_MEDIA_TYPE: binary("flow B: a frames container with the frame itself ('frame'); the edge has the cloud "
                              f"encode it and computes the difference; {OPTIONS_DOC}, interpolate")})


def edge_router(settings: ServerSettings, sessions: SessionStore, cloud: CloudEncoder) -> APIRouter:
    """The edge's HTTP and WebSocket routes over its three stages."""
    budget = settings.max_pixels
    stages = {"interpolate": InterpolateStage(budget), "session_frame": SessionFrameStage(sessions, cloud, budget),
              "interpolate_frames": FramesStage(cloud, budget)}
    router = APIRouter()

    @router.post("/api/v1/interpolate", tags=["edge"], response_model=Envelope[InterpolateData],
                 openapi_extra=INTERPOLATE_BODY, description=ANSWERS,
                 summary="Sample and decode the middle frame from a pair's enc_out blob")
    async def interpolate(request: Request) -> Response:
        return await http.serve(stages["interpolate"], request)

    @router.post("/api/v1/sessions/{session_id}/frames/{index}", tags=["edge"],
                 response_model=Envelope[InterpolateData], openapi_extra=SESSION_BODY,
                 summary="Frame-once video session: send frame k's encoding once",
                 description="Stores frame k's encoding; for k > 0 interpolates (k-1, k) with the given raw "
                             "`difference` and `seed` and answers with the frame (409 SESSION_NOT_FOUND if the edge "
                             "no longer holds frame k-1: send it again with interpolate=false). " + ANSWERS)
    async def session_frame(session_id: str, index: int, request: Request) -> Response:
        return await http.serve(stages["session_frame"], request)

    @router.delete("/api/v1/sessions/{session_id}", tags=["edge"], summary="Forget a video session")
    async def drop_session(session_id: str) -> dict[str, Any]:
        return success_body({"dropped": sessions.drop(session_id)})

    @router.post("/api/v1/interpolate_frames", tags=["edge"], response_model=Envelope[InterpolateData],
                 openapi_extra=frames_body(InterpolateFramesRequest, PAIR),
                 summary="Flow B: raw frames in, the edge calls the cloud itself",
                 description=f"The same inputs as the cloud's /encode; {OPTIONS_DOC}. {ANSWERS}")
    async def interpolate_frames(request: Request) -> Response:
        return await http.serve(stages["interpolate_frames"], request)

    @router.websocket("/ws/interpolate")
    async def ws_interpolate(websocket: WebSocket) -> None:
        """interpolate, session_frame (frame-once) and interpolate_frames (flow B) messages; see docs/protocol.md."""
        await serve_websocket(websocket, stages)

    return router

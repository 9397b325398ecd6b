"""The edge, declared: POST /api/v1/interpolate (a pair's blob), the frame-once session routes, POST
/api/v1/interpolate_frames (flow B), and the WebSocket /ws/interpolate carrying the same operations; its
session cache and its client of the cloud (flow B), closed at shutdown."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from pydantic import WithJsonSchema
from starlette.concurrency import run_in_threadpool

from edensplit.client.http import AsyncHttpTransport
from edensplit.client.services import AsyncCloud
from edensplit.errors import ErrorCode
from edensplit.model.eden import INTERPOLATE, Eden
from edensplit.net import on_this_host
from edensplit.servers.app import create_app
from edensplit.servers.auth import bearer_scheme
from edensplit.servers.contract import PNG
from edensplit.servers.edge.operations import (
    CloudEncoder,
    FramesOperation,
    InterpolateOperation,
    SessionFrameOperation,
    warm_up,
)
from edensplit.servers.envelope import success_body
from edensplit.servers.http import exchange_of
from edensplit.servers.inputs import PAIR
from edensplit.servers.openapi import (
    OPTIONS,
    OPTIONS_DOC,
    binary,
    frames_body,
    options_query,
    request_body,
    route_responses,
)
from edensplit.servers.schemas import (
    Envelope,
    InterpolateData,
    InterpolateFramesRequest,
    InterpolateRequest,
    SessionFrameRequest,
    StoredData,
)
from edensplit.servers.service import Endpoint, Service
from edensplit.servers.sessions import (
    FRAME_INDEX_SCHEMA,
    SESSION_ID_SCHEMA,
    SessionStore,
    check_session_id,
    client_session,
)
from edensplit.settings import ServerSettings
from edensplit.wire.blob import BLOB_MEDIA_TYPE
from edensplit.wire.frames import FRAMES_MEDIA_TYPE

CLOUD_RETRY_FOR_S = 20.0
log = logging.getLogger("edensplit.server")
ANSWERS = (f"`Accept: {PNG}` or `{FRAMES_MEDIA_TYPE}` (the default for a binary request) answers with the frame "
           "itself instead of the JSON envelope.")
BINARY_ONLY = "read from a binary body (a JSON body carries its options itself)"
# Path parameters: their documented rules are checked by `session_key` (INVALID_PARAMETER), not by FastAPI.
SessionId = Annotated[str, WithJsonSchema(SESSION_ID_SCHEMA)]
FrameIndex = Annotated[int, WithJsonSchema(FRAME_INDEX_SCHEMA)]


def cloud_client(settings: ServerSettings) -> tuple[AsyncCloud, CloudEncoder]:
    """Flow B's client of the cloud at CLOUD_SERVER_URL (binary, float32), and the encoder call over it. It rides
    out a short cloud outage (CLOUD_RETRY_FOR_S) within the request's own deadline, not the client's minute: the
    client, whose request this is, keeps its own retry budget. With EDENSPLIT_SHM=1 and the cloud on this
    machine, it asks for shared-memory handles and takes the segments itself."""
    shm = settings.edensplit_shm and on_this_host(settings.cloud_server_url)
    if settings.edensplit_shm and not shm:
        log.warning("EDENSPLIT_SHM=1, but the cloud (%s) is not on this machine: its encodings come as bytes",
                    settings.cloud_server_url)
    cloud = AsyncCloud(AsyncHttpTransport(settings.cloud_server_url, name="cloud server", retry_for=CLOUD_RETRY_FOR_S,
                                          api_key=settings.cloud_api_key, ca_cert=settings.edensplit_ca_cert,
                                          allow_insecure_key=settings.edensplit_allow_insecure_key), shm=shm)

    async def encode_at_cloud(frames: list[np.ndarray], request_id: str) -> bytes:
        """Flow B: the cloud's float32 blob of a pair or one frame (binary, no base64; a segment read off the
        event loop)."""
        if len(frames) == 2:
            encoded = await cloud.encode(*frames, request_id=request_id)
        else:
            encoded = await cloud.encode_frame(frames[0], request_id=request_id)
        return encoded.raw if encoded.handle is None else await run_in_threadpool(lambda: encoded.raw)

    return cloud, encode_at_cloud


def sessions_router(sessions: SessionStore, keyed: bool = False) -> APIRouter:
    router = APIRouter()
    path = "/api/v1/sessions/{session_id}"

    @router.delete(path, tags=["edge"], summary="Forget a video session", dependencies=bearer_scheme(path, keyed),
                   responses=route_responses(path, keyed, (ErrorCode.INVALID_PARAMETER,)))
    async def drop_session(session_id: SessionId, request: Request) -> dict[str, Any]:
        """The caller's own session only: another client's is answered as one that does not exist."""
        key = client_session(exchange_of(request).client_name, check_session_id(session_id))
        return success_body({"dropped": sessions.drop(key)})

    return router


def edge_service(settings: ServerSettings, cloud_encoder: CloudEncoder | None = None) -> Service:
    """The edge's three operations (they share the sampler's batches) over one session cache; flow B encodes
    through `cloud_encoder` (frames, request id -> the cloud's float32 blob; e.g. a call inside a Ray cluster),
    else over HTTP to CLOUD_SERVER_URL."""
    sessions = SessionStore(settings.session_ttl_s, settings.max_sessions, settings.context_cache_mb)
    cloud = None
    if cloud_encoder is None:
        cloud, cloud_encoder = cloud_client(settings)
    budget = settings.max_pixels
    endpoints = (
        Endpoint("interpolate", "/api/v1/interpolate", InterpolateOperation(budget),
                 summary="Sample and decode the middle frame from a pair's enc_out blob", description=ANSWERS,
                 request_body=request_body(InterpolateRequest, **{
                     BLOB_MEDIA_TYPE: binary(f"the enc_out blob of a pair; {OPTIONS_DOC}")}),
                 parameters=options_query(OPTIONS, BINARY_ONLY), response_model=Envelope[InterpolateData],
                 batcher="sampler"),
        Endpoint("session_frame", "/api/v1/sessions/{session_id}/frames/{index}",
                 SessionFrameOperation(sessions, cloud_encoder, budget),
                 summary="Frame-once video session: send frame k's encoding once",
                 description="Stores frame k's encoding; for k > 0 interpolates (k-1, k) with the given raw "
                             "`difference` and `seed` and answers with the frame (409 SESSION_NOT_FOUND if the edge "
                             "no longer holds frame k-1: send it again with interpolate=false). " + ANSWERS,
                 request_body=request_body(SessionFrameRequest, **{
                     BLOB_MEDIA_TYPE: binary(f"flow A: one frame's enc_out blob (/encode_frame); {OPTIONS_DOC}, "
                                             "interpolate"),
                     FRAMES_MEDIA_TYPE: binary("flow B: a frames container with the frame itself ('frame'); the "
                                               "edge has the cloud encode it and computes the difference; "
                                               f"{OPTIONS_DOC}, interpolate")}),
                 path_params={"session_id": SessionId, "index": FrameIndex},
                 parameters=options_query((*OPTIONS, "interpolate"), BINARY_ONLY),
                 response_model=Envelope[InterpolateData | StoredData], batcher="sampler"),
        Endpoint("interpolate_frames", "/api/v1/interpolate_frames", FramesOperation(cloud_encoder, budget),
                 summary="Flow B: raw frames in, the edge calls the cloud itself",
                 description=f"The same inputs as the cloud's /encode; {OPTIONS_DOC}. {ANSWERS}",
                 request_body=frames_body(InterpolateFramesRequest, PAIR),
                 parameters=options_query(OPTIONS, "read with a multipart body or a frames container (a JSON body "
                                                   "carries its options itself)"),
                 response_model=Envelope[InterpolateData], batcher="sampler"),
    )
    return Service("edge", INTERPOLATE, "edensplit edge (EDEN sampler + decoder)", "/ws/interpolate", endpoints,
                   warm_up=warm_up, routers=(sessions_router(sessions, settings.keyed),),
                   state={"sessions": sessions, "cloud_client": cloud}, every_second=(sessions.expire,),
                   on_shutdown=(cloud.aclose,) if cloud is not None else ())


def create_edge_app(settings: ServerSettings | None = None, model: Eden | None = None,
                    cloud_encoder: CloudEncoder | None = None) -> FastAPI:
    """The edge app; settings from the environment unless given; with `model`, that model is used instead of
    loading one at start-up; `cloud_encoder` as for `edge_service`."""
    settings = settings or ServerSettings()
    app = create_app(edge_service(settings, cloud_encoder), settings, model)
    metrics, sessions = app.state.metrics, app.state.sessions
    sessions.on_count = metrics.sessions.set  # set as it changes: workers' gauges add up (livesum)
    sessions.on_lookup = lambda result: metrics.session_lookups.labels(result).inc()
    sessions.contexts.on_lookup = lambda result: metrics.context_lookups.labels(result).inc()
    return app

"""The edge app factory: its session cache and its client of the cloud (flow B), closed at shutdown."""

from __future__ import annotations

import numpy as np
from fastapi import FastAPI

from edensplit.client import AsyncCloud, AsyncHttpTransport
from edensplit.model.eden import INTERPOLATE, Eden
from edensplit.servers.app import create_app
from edensplit.servers.edge.routes import edge_router
from edensplit.servers.edge.stages import CloudEncoder, warm_up
from edensplit.servers.sessions import SessionStore
from edensplit.settings import ServerSettings

CLOUD_RETRY_FOR_S = 20.0


def create_edge_app(settings: ServerSettings | None = None, model: Eden | None = None,
                    cloud_encoder: CloudEncoder | None = None) -> FastAPI:
    """The edge app; settings from the environment unless given; with `model`, that model is used instead
    of loading one at start-up. Flow B has the cloud at CLOUD_SERVER_URL encode frames, over HTTP, unless
    `cloud_encoder` (frames, request id -> the cloud's float32 blob; e.g. a call to an encoder inside the
    same cluster) is given."""
    settings = settings or ServerSettings()
    sessions = SessionStore(settings.session_ttl_s, settings.max_sessions, settings.context_cache_mb)
    cloud: AsyncCloud | None = None
    if cloud_encoder is None:
        # Flow B rides out a short cloud outage (CLOUD_RETRY_FOR_S) within the request's own deadline, not the
        # client's minute: the client, whose request this is, keeps its own retry budget.
        cloud = client = AsyncCloud(AsyncHttpTransport(settings.cloud_server_url, name="cloud server",
                                                       retry_for=CLOUD_RETRY_FOR_S, api_key=settings.edensplit_api_key,
                                                       ca_cert=settings.edensplit_ca_cert))

        async def encode_at_cloud(frames: list[np.ndarray], request_id: str) -> bytes:
            """Flow B: the cloud's float32 blob of a pair or one frame (binary, no base64)."""
            if len(frames) == 2:
                return (await client.encode(*frames, request_id=request_id)).raw
            return (await client.encode_frame(frames[0], request_id=request_id)).raw

        cloud_encoder = encode_at_cloud

    app = create_app(INTERPOLATE, "edensplit edge (EDEN sampler + decoder)", settings, model,
                     routers=[edge_router(settings, sessions, cloud_encoder)],
                     on_shutdown=[cloud.aclose] if cloud is not None else [], warm_up=warm_up)
    app.state.sessions = sessions
    metrics = app.state.metrics
    sessions.on_count = metrics.sessions.set  # set as it changes: workers' gauges add up (livesum)
    sessions.on_lookup = lambda result: metrics.session_lookups.labels(result).inc()
    sessions.contexts.on_lookup = lambda result: metrics.context_lookups.labels(result).inc()
    app.state.cloud_client = cloud
    return app

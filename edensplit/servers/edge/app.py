"""The edge app factory: its session cache and its client of the cloud (flow B), closed at shutdown."""

from __future__ import annotations

import numpy as np
from fastapi import FastAPI

from edensplit.model import INTERPOLATE, Eden
from edensplit.servers.app import create_app
from edensplit.servers.edge.routes import edge_router
from edensplit.servers.edge.upstream import AsyncCloudClient
from edensplit.servers.sessions import SessionStore
from edensplit.settings import ServerSettings


def create_edge_app(settings: ServerSettings | None = None, model: Eden | None = None) -> FastAPI:
    """The edge app; settings from the environment unless given; with `model`, that model is used instead
    of loading one at start-up."""
    settings = settings or ServerSettings()
    sessions = SessionStore(settings.session_ttl_s, settings.max_sessions)
    cloud = AsyncCloudClient(settings.cloud_server_url)

    async def encode_at_cloud(frames: list[np.ndarray], request_id: str) -> bytes:
        return await cloud.encode_blob(frames, request_id=request_id)

    app = create_app(INTERPOLATE, "edensplit edge (EDEN sampler + decoder)", settings, model,
                     routers=[edge_router(settings, sessions, encode_at_cloud)], on_shutdown=[cloud.aclose])
    app.state.sessions = sessions
    app.state.cloud_client = cloud
    return app

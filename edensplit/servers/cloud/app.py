"""The cloud app factory."""

from __future__ import annotations

from fastapi import FastAPI

from edensplit.model.eden import ENCODE, Eden
from edensplit.servers.app import create_app
from edensplit.servers.cloud.routes import cloud_router
from edensplit.servers.cloud.stages import warm_up
from edensplit.settings import ServerSettings


def create_cloud_app(settings: ServerSettings | None = None, model: Eden | None = None) -> FastAPI:
    """The cloud app; settings from the environment unless given; with `model`, that model is used instead
    of loading one at start-up."""
    settings = settings or ServerSettings()
    return create_app(ENCODE, "edensplit cloud (EDEN encoder)", settings, model, routers=[cloud_router(settings)],
                      warm_up=warm_up)

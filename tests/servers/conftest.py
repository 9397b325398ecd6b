"""In-process apps around the tiny random model: fast tests of the HTTP contract (TestClient)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from edensplit.model import load_model
from edensplit.servers.cloud import create_cloud_app
from edensplit.servers.edge import create_edge_app
from edensplit.settings import ServerSettings
from tests.conftest import TINY_CONFIG


@pytest.fixture(scope="module")
def settings() -> ServerSettings:
    return ServerSettings(max_request_mb=4, max_inflight=4, eden_random_weights=True)


@pytest.fixture(scope="module")
def cloud(settings):
    model = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
    with TestClient(create_cloud_app(settings, model)) as client:
        yield client


@pytest.fixture(scope="module")
def edge(settings):
    model = load_model(None, TINY_CONFIG, stages={"interpolate"}, allow_random=True, seed=3)
    with TestClient(create_edge_app(settings, model)) as client:
        yield client

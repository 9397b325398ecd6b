"""A server declared once: its operations (each with its HTTP route, WebSocket message type, batcher and
documentation), the model stage it loads, its warm-up, and what it holds and closes.

The app factory (`servers.app`) builds the HTTP routes and the WebSocket dispatcher from this declaration,
and the Ray Serve deployments (`serve_ray.deployments`) take their operations from it: nothing is built
twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter

from edensplit.errors import ErrorCode
from edensplit.model.eden import Eden
from edensplit.servers.contract import Operation


@dataclass(frozen=True)
class Endpoint:
    """One operation of a server."""

    name: str  # the operation's name and its WebSocket message type
    path: str  # its HTTP route (POST)
    operation: Operation[Any, Any]
    summary: str
    description: str = ""
    request_body: Mapping[str, Any] = field(default_factory=dict)  # OpenAPI: the body's media types and schemas
    path_params: Mapping[str, Any] = field(default_factory=dict)  # the route's path parameters and their types
    parameters: tuple[Mapping[str, Any], ...] = ()  # OpenAPI: query parameters read from the request
    response_model: Any = None  # the JSON answer's model
    batcher: str | None = None  # operations naming the same batcher may share a model call (MAX_BATCH > 1)

    @property
    def errors(self) -> tuple[ErrorCode, ...]:
        """The codes it can refuse a request with: its operation's, and INVALID_REQUEST for a path parameter of the
        wrong type (the transports and the pipeline add theirs: `servers.openapi.endpoint_codes`)."""
        return (*self.operation.errors, *((ErrorCode.INVALID_REQUEST,) if self.path_params else ()))


@dataclass
class Service:
    """What makes a server: its component name (cloud, edge), the model stage it loads, its operations."""

    component: str
    stage: str
    title: str
    ws_path: str
    endpoints: tuple[Endpoint, ...]
    warm_up: Callable[[Eden], Any]
    routers: tuple[APIRouter, ...] = ()  # routes beyond the operations (the edge's DELETE of a session)
    state: dict[str, Any] = field(default_factory=dict)  # what it holds, set on app.state (sessions, clients)
    on_shutdown: tuple[Callable[[], Awaitable[Any]], ...] = ()
    every_second: tuple[Callable[[], Any], ...] = ()  # housekeeping on the event loop (the edge: idle sessions go)

    def endpoint(self, name: str) -> Endpoint:
        return next(e for e in self.endpoints if e.name == name)

    @property
    def by_name(self) -> dict[str, Endpoint]:
        return {e.name: e for e in self.endpoints}

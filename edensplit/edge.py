"""`uvicorn edensplit.edge:app`: the edge server (see edensplit.servers.edge).

`app` is built on first access, from the environment: importing this module builds nothing.
"""

from __future__ import annotations

import functools
from typing import Any

from edensplit.servers.app import build_or_exit
from edensplit.servers.edge.service import create_edge_app

__all__ = ["create_edge_app"]  # and `app`, through __getattr__


@functools.cache
def _app() -> Any:
    return build_or_exit(create_edge_app, "edge")


def __getattr__(name: str) -> Any:
    if name == "app":
        return _app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

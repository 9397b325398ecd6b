"""The user's original entry point, kept: `uvicorn edge_server.main:app --port 8001` (and gunicorn's
`edge_server.main:app`). The app is built on first access, not at import."""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from edensplit.edge import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

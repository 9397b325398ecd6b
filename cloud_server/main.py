"""The user's original entry point, kept: `uvicorn cloud_server.main:app --port 8000` (and gunicorn's
`cloud_server.main:app`). The app is built on first access, not at import."""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from edensplit.cloud import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The user's original entry point, kept: `uvicorn cloud_server.main:app --port 8000`."""

from edensplit.cloud import app

__all__ = ["app"]

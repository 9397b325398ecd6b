"""The user's original entry point, kept: `uvicorn edge_server.main:app --port 8001`."""

from edensplit.edge import app

__all__ = ["app"]

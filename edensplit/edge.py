"""`uvicorn edensplit.edge:app`: the edge server (see edensplit.servers.edge)."""

from edensplit.servers.edge import app, create_edge_app

__all__ = ["app", "create_edge_app"]

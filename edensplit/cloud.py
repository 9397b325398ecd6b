"""`uvicorn edensplit.cloud:app`: the cloud server (see edensplit.servers.cloud)."""

from edensplit.servers.cloud import app, create_cloud_app

__all__ = ["app", "create_cloud_app"]

"""The cloud server: frames in, the conditioning encoder's `enc_out` blob out."""

from edensplit.servers.cloud.app import create_cloud_app

__all__ = ["create_cloud_app"]

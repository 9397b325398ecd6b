"""The edge server: encodings in, the generated middle frame out (DiT sampling + decoder)."""

from edensplit.servers.edge.app import create_edge_app

__all__ = ["create_edge_app"]

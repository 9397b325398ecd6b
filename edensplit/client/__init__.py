"""The client: typed HTTP clients for the two servers, and interpolation jobs over any backend."""

from edensplit.client.http import CloudClient, EdgeClient, EncodedPair, RetryPolicy, ServerError, SplitClient
from edensplit.client.jobs import LocalBackend, interpolate_pair_files, interpolate_stream, interpolate_video

__all__ = [
    "CloudClient", "EdgeClient", "EncodedPair", "LocalBackend", "RetryPolicy", "ServerError", "SplitClient",
    "interpolate_pair_files", "interpolate_stream", "interpolate_video",
]

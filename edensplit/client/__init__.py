"""The client: typed HTTP and WebSocket clients for the two servers, the flows over them, and jobs."""

from edensplit.client.flows import EdgeProxyClient, FrameOnceClient, SplitClient
from edensplit.client.http import CloudClient, EdgeClient, RetryPolicy, ServerError
from edensplit.client.jobs import LocalBackend, interpolate_pair_files, interpolate_stream, interpolate_video
from edensplit.client.payloads import EncodedBlob, Sampling

__all__ = [
    "CloudClient", "EdgeClient", "EdgeProxyClient", "EncodedBlob", "FrameOnceClient", "LocalBackend", "RetryPolicy",
    "Sampling", "ServerError", "SplitClient", "interpolate_pair_files", "interpolate_stream", "interpolate_video",
]

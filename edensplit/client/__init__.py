"""The client: request building, transports (HTTP, async HTTP, WebSocket), typed clients for the two
servers, the flows over them, and jobs."""

from edensplit.client.flows import EdgeProxyClient, FrameOnceClient, FrameOnceProxyClient, SplitClient, open_backend
from edensplit.client.http import AsyncHttpTransport, HttpTransport
from edensplit.client.jobs import LocalBackend, interpolate_pair_files, interpolate_stream, interpolate_video
from edensplit.client.requests import Answer, Call, EncodedBlob
from edensplit.client.services import AsyncCloud, Cloud, Edge
from edensplit.client.transport import RetryPolicy, ServerError
from edensplit.client.ws import WsTransport
from edensplit.wire.options import Options

__all__ = [
    "Answer", "AsyncCloud", "AsyncHttpTransport", "Call", "Cloud", "Edge", "EdgeProxyClient", "EncodedBlob",
    "FrameOnceClient", "FrameOnceProxyClient", "HttpTransport", "LocalBackend", "Options", "RetryPolicy",
    "ServerError", "SplitClient", "WsTransport", "interpolate_pair_files", "interpolate_stream", "interpolate_video",
    "open_backend",
]

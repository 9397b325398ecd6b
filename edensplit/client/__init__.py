"""The client: request building (requests.py), transports (http.py, ws.py) under one retry policy
(transport.py), typed clients of the two servers (services.py), the flows over them (flows.py), and jobs.

The names below are the documented API (`from edensplit.client import Cloud, Edge, ...`), loaded when first
used: importing one module of the client (the edge's flow B imports only services.py) loads no other."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_HOMES = {
    "Answer": "requests", "Call": "requests", "EncodedBlob": "requests",
    "AsyncHttpTransport": "http", "HttpTransport": "http", "WsTransport": "ws",
    "RetryPolicy": "retry", "ServerError": "transport", "ClientConfig": "transport", "Client": "policy",
    "AsyncClient": "policy", "Backend": "backends", "LocalBackend": "backends", "JobSpec": "spec", "JobResult": "spec",
    "AsyncCloud": "services", "Cloud": "services", "Edge": "services",
    "EdgeProxyClient": "flows", "FrameOnceClient": "flows", "FrameOnceProxyClient": "flows", "SplitClient": "flows",
    "open_backend": "flows",
    "interpolate_folder": "jobs", "interpolate_pair_files": "jobs", "interpolate_stream": "jobs",
    "interpolate_video": "jobs",
}
_ELSEWHERE = {"Options": "edensplit.wire.options"}
__all__ = sorted([*_HOMES, *_ELSEWHERE])


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f"edensplit.client.{_HOMES[name]}"), name)
    if name in _ELSEWHERE:
        return getattr(import_module(_ELSEWHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

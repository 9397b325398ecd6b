"""The ways a pair reaches the servers, over any transport (HTTP or WebSocket clients alike).

- `SplitClient`, flow A, pair at a time: client -> cloud (both frames) -> client -> edge -> client.
- `FrameOnceClient`, flow A with a video session: each frame is encoded once and its encoding sent
  to the edge once; the edge interpolates (k-1, k) from its cache. Half the bytes of pairs.
- `EdgeProxyClient`, flow B: raw frames to the edge, which calls the cloud itself; only the small
  results travel back to the client. `FrameOnceProxyClient`: the same with a video session, so each
  frame goes to the edge once and is encoded once.

Each is a `PairBackend` for `edensplit.client.jobs`; all give the same frames (exact mode).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any, Protocol

import numpy as np

from edensplit.client.payloads import EncodedBlob
from edensplit.errors import EdenError, ErrorCode
from edensplit.model import frame_difference

KEEP_BLOBS = 4


class Cloud(Protocol):
    def encode(self, frame0: np.ndarray, frame1: np.ndarray) -> EncodedBlob: ...
    def encode_frame(self, frame: np.ndarray) -> EncodedBlob: ...
    def close(self) -> None: ...


class Edge(Protocol):
    def interpolate(self, pair: EncodedBlob, *, seed: int = 0) -> np.ndarray: ...
    def session_frame(self, session_id: str, index: int, frame: EncodedBlob, *, difference: float | None = None,
                      seed: int = 0, interpolate: bool | None = None) -> np.ndarray | None: ...
    def interpolate_frames(self, frame0: np.ndarray, frame1: np.ndarray, *, seed: int = 0) -> np.ndarray: ...
    def close(self) -> None: ...


class SplitClient:
    """Flow A, pair at a time: the user's recommended design."""

    def __init__(self, cloud: Cloud, edge: Edge):
        self.cloud, self.edge = cloud, edge

    def interpolate_pair(self, frame0: np.ndarray, frame1: np.ndarray, seed: int = 0, index: int = 0) -> np.ndarray:
        return self.edge.interpolate(self.cloud.encode(frame0, frame1), seed=seed)

    def close(self) -> None:
        self.cloud.close()
        self.edge.close()


class FrameOnceClient(SplitClient):
    """Flow A with a session: frame k is encoded once and shipped once. Pairs come in index order (several
    may be in flight). The edge's cache is rebuilt from what this client holds if it is lost."""

    def __init__(self, cloud: Cloud, edge: Edge):
        super().__init__(cloud, edge)
        self.session_id = uuid.uuid4().hex
        self._blobs: dict[int, EncodedBlob] = {}
        self._lock = threading.Lock()
        self.resent = 0  # frames sent again because the edge had lost them

    def begin_video(self) -> None:
        """A new video: a new session, so no frame of the last one is ever taken for this one's."""
        with self._lock:
            self.session_id, self._blobs = uuid.uuid4().hex, {}

    def payload(self, index: int, frame: np.ndarray) -> EncodedBlob | np.ndarray:
        """What the edge gets for frame `index`: its encoding (kept for resends; re-encoded if evicted)."""
        with self._lock:
            blob = self._blobs.get(index)
        if blob is None:
            blob = self.cloud.encode_frame(frame)
            with self._lock:
                self._blobs[index] = blob
                for old in [k for k in self._blobs if k < index - KEEP_BLOBS]:
                    del self._blobs[old]
        return blob

    def difference(self, frame0: np.ndarray, frame1: np.ndarray) -> float | None:
        return float(frame_difference(frame0, frame1)[0])  # the client holds both frames' pixels

    def interpolate_pair(self, frame0: np.ndarray, frame1: np.ndarray, seed: int = 0, index: int = 0) -> np.ndarray:
        session = self.session_id
        if index == 0:
            self.edge.session_frame(session, 0, self.payload(0, frame0), interpolate=False)
        sent, difference = self.payload(index + 1, frame1), self.difference(frame0, frame1)
        for attempt in range(3):
            try:
                frame = self.edge.session_frame(session, index + 1, sent, difference=difference, seed=seed)
            except EdenError as exc:
                if exc.code != ErrorCode.SESSION_NOT_FOUND or attempt == 2:
                    raise
                with self._lock:
                    self.resent += 1
                self.edge.session_frame(session, index, self.payload(index, frame0), interpolate=False)
                continue
            if frame is None:
                raise EdenError("the edge stored the frame but answered without interpolating",
                                code=ErrorCode.UPSTREAM_ERROR)
            return frame
        raise AssertionError("unreachable")


class FrameOnceProxyClient(FrameOnceClient):
    """Flow B with a session: each raw frame goes to the edge once; the edge has the cloud encode it once and
    computes the difference itself (it holds both frames' pixels)."""

    def __init__(self, edge: Edge):
        super().__init__(cloud=None, edge=edge)  # type: ignore[arg-type]

    def payload(self, index: int, frame: np.ndarray) -> np.ndarray:
        return frame

    def difference(self, frame0: np.ndarray, frame1: np.ndarray) -> None:
        return None

    def close(self) -> None:
        self.edge.close()


class EdgeProxyClient:
    """Flow B: the edge as proxy. The client talks to the edge only."""

    def __init__(self, edge: Edge):
        self.edge = edge

    def interpolate_pair(self, frame0: np.ndarray, frame1: np.ndarray, seed: int = 0, index: int = 0) -> np.ndarray:
        return self.edge.interpolate_frames(frame0, frame1, seed=seed)

    def close(self) -> None:
        self.edge.close()


def open_backend(*, cloud_url: str, edge_url: str, transport: str = "http", flow: str = "a", frame_once: bool = True,
                 payload: str = "binary", wire_dtype: str = "float32", sampling: Any = None, timeout: float = 30.0,
                 retries: int = 3, compress: str | None = None) -> SplitClient | EdgeProxyClient:
    """The backend for a transport (http, ws) and flow (a, b); each frame travels once unless not frame_once."""
    if transport == "http":
        from edensplit.client.http import CloudClient as CloudCls
        from edensplit.client.http import EdgeClient as EdgeCls
    elif transport == "ws":
        from edensplit.client.ws import WsCloudClient as CloudCls
        from edensplit.client.ws import WsEdgeClient as EdgeCls
    else:
        raise EdenError(f"unknown transport {transport!r}: use http or ws", code=ErrorCode.INVALID_PARAMETER)
    common: dict[str, Any] = {"payload": payload, "timeout": timeout, "retries": retries}
    if compress:
        if transport != "http":
            raise EdenError("compression is offered for HTTP only (WebSocket permessage-deflate does not pay "
                            "on tensors; see docs/protocol.md)", code=ErrorCode.INVALID_PARAMETER)
        common["compress"] = compress
    edge = EdgeCls(edge_url, sampling=sampling, **common)
    if flow == "b":
        return FrameOnceProxyClient(edge) if frame_once else EdgeProxyClient(edge)
    if flow != "a":
        edge.close()
        raise EdenError(f"unknown flow {flow!r}: use a or b", code=ErrorCode.INVALID_PARAMETER)
    try:
        cloud = CloudCls(cloud_url, wire_dtype=wire_dtype, **common)
    except EdenError:
        edge.close()
        raise
    return FrameOnceClient(cloud, edge) if frame_once else SplitClient(cloud, edge)

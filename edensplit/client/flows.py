"""The ways a pair reaches the servers, over any transport (HTTP or WebSocket clients alike).

- `SplitClient`, flow A, pair at a time: client -> cloud (both frames) -> client -> edge -> client.
- `FrameOnceClient`, flow A with a video session: each frame is encoded once and its encoding sent
  to the edge once; the edge interpolates (k-1, k) from its cache. Half the bytes of pairs.
- `EdgeProxyClient`, flow B: raw frames to the edge, which calls the cloud itself; only the small
  results travel back to the client. `FrameOnceProxyClient`: the same with a video session, so each
  frame goes to the edge once and is encoded once.

Each is a `Backend` (`edensplit.client.backends`) for the jobs; all give the same frames (exact mode).

A session's edge requests go one at a time, in frame order (the cloud's work for the next frames still
overlaps them): a request for frame k+1 waits at the edge for frame k, holding one of the edge's
MAX_INFLIGHT places, so if frame k's request were refused (503) meanwhile, k+1 would hold the place
until its wait ran out (409 SESSION_NOT_FOUND) while k could not get in. In order, an overloaded edge
only ever answers 200 or 503.

Over HTTP those requests also share one kept-alive connection (a WebSocket is one already), so an edge run
as several processes on one port (gunicorn workers, each with its own session cache) serves a whole video
from the one that holds its frames. If the connection is lost, the next may land on another worker: that
one answers SESSION_NOT_FOUND and the client resends the one frame it needs (docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edensplit.client.backends import Backend, Tracker
from edensplit.client.encodings import SharedEncodings
from edensplit.client.http import HttpTransport
from edensplit.client.requests import EncodedBlob, check_payload
from edensplit.client.retry import DEFAULT_RETRIES, DEFAULT_RETRY_FOR
from edensplit.client.services import Cloud, Edge, check_shm
from edensplit.client.transport import ClientConfig
from edensplit.client.ws import WsTransport
from edensplit.errors import EdenError, ErrorCode
from edensplit.model.stages import frame_difference
from edensplit.net import on_this_host
from edensplit.tracing import traced_pair
from edensplit.wire import codecs
from edensplit.wire.options import Options

KEEP_BLOBS = 4
log = logging.getLogger("edensplit.client")


class SplitClient(Backend):
    """Flow A, pair at a time: the user's recommended design."""

    def __init__(self, cloud: Cloud, edge: Edge):
        self.cloud, self.edge = cloud, edge

    @property
    def services(self) -> dict[str, Any]:
        return {"cloud": self.cloud, "edge": self.edge}

    @traced_pair
    def interpolate_pair(self, frame0: np.ndarray, frame1: np.ndarray, seed: int = 0, index: int = 0) -> np.ndarray:
        """Both frames to the cloud, their blob to the edge, the middle frame back."""
        return self.edge.interpolate(self.cloud.encode(frame0, frame1), seed=seed)

    def close(self) -> None:
        """Close both servers' transports."""
        self.cloud.close()
        self.edge.close()


class FrameOnceClient(SplitClient):
    """Flow A with a session: frame k is encoded once and shipped once. Pairs come in index order (several
    may be in flight: their cloud requests overlap, their edge requests go in order). The edge's cache is
    rebuilt from what this client holds if it is lost."""

    TURN_TIMEOUT_S = 3600.0  # a pair waits this long at most for the previous pair's edge request

    def __init__(self, cloud: Cloud, edge: Edge):
        super().__init__(cloud, edge)
        self.session_id = uuid.uuid4().hex
        self._blobs: dict[int, EncodedBlob] = {}
        self._lock = threading.Lock()
        self._turn_changed = threading.Condition(self._lock)
        self._first: int | None = None  # the first pair of this video's stream (its left frame is stored first)
        self._next: int | None = None  # the pair whose edge request may go now
        self._failed: BaseException | None = None
        self.resent = 0  # frames sent again because the edge had lost them
        self._used: list[str] = []  # sessions the edge was sent frames for and not yet told to drop
        self._forks: list[FrameOnceClient] = []

    def begin_video(self, start: int = 0) -> None:
        """A new video, whose first pair is `start` (a resumed job's first pair to do): a new session, so no
        frame of the last one is ever taken for this one's."""
        with self._lock:
            self.session_id, self._blobs = uuid.uuid4().hex, {}
            self._first = self._next = start
            self._failed = None
        self.drop_sessions(own_only=True)  # the last video's: done with

    def fork(self) -> FrameOnceClient:
        """A session of its own over the same servers, sharing this one's encodings: each frame, whichever level
        asks first, is encoded by the cloud once."""
        if not isinstance(self.cloud, SharedEncodings):
            self.cloud = SharedEncodings(self.cloud)  # type: ignore[assignment]
        fork = FrameOnceClient(self.cloud, self.edge)  # type: ignore[arg-type]
        self._forks.append(fork)
        return fork

    @property
    def shared_encodings(self) -> Tracker | None:
        return self.cloud if isinstance(self.cloud, SharedEncodings) else None

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
        """The pair's raw mean cosine similarity, sent with frame k (flow A)."""
        return float(frame_difference(frame0, frame1)[0])  # the client holds both frames' pixels

    @contextlib.contextmanager
    def _turn(self, index: int) -> Iterator[bool]:
        """Hold pair `index`'s turn at the edge: wait until the previous pair's edge request is answered. Yields
        whether this is the stream's first pair. A failed pair fails the ones waiting after it."""
        with self._lock:
            if self._next is None:  # pairs sent without begin_video: the first one seen starts the session
                self._first = self._next = index
            if not self._turn_changed.wait_for(lambda: self._failed is not None or self._next == index,
                                               timeout=self.TURN_TIMEOUT_S):
                raise EdenError(f"pair {index} waited {self.TURN_TIMEOUT_S:.0f} s for pair {self._next} (pairs must "
                                "be sent in order)", code=ErrorCode.INVALID_PARAMETER)
            if self._failed is not None:
                raise EdenError(f"pair {index} not sent: an earlier pair of the session failed "
                                f"({self._failed})", code=ErrorCode.UPSTREAM_ERROR)
            first = index == self._first
        try:
            yield first
        except BaseException as exc:
            with self._lock:
                self._failed = exc
                self._turn_changed.notify_all()
            raise
        with self._lock:
            self._next = index + 1
            self._turn_changed.notify_all()

    @traced_pair
    def interpolate_pair(self, frame0: np.ndarray, frame1: np.ndarray, seed: int = 0, index: int = 0) -> np.ndarray:
        """Send frame index+1 once (the stream's first pair stores frame index first); resend frame index if the
        edge lost it."""
        sent, difference = self.payload(index + 1, frame1), self.difference(frame0, frame1)
        with self._turn(index) as first:
            session = self.session_id
            with self._lock:
                if session not in self._used:
                    self._used.append(session)
            if first:
                self.edge.session_frame(session, index, self.payload(index, frame0), interpolate=False)
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


    def drop_sessions(self, own_only: bool = False) -> None:
        """Have the edge forget this client's sessions it has frames of, but the one in use, and (unless
        `own_only`) its forks' and the one in use too: at a new video, and when the job is done (`close`)."""
        with self._lock:
            done = [s for s in self._used if not own_only or s != self.session_id]
            self._used = [s for s in self._used if s not in done]
        for session in done:
            self.edge.drop_session(session)
        if not own_only:
            for fork in self._forks:
                fork.drop_sessions()

    def close(self) -> None:
        """Drop the sessions at the edge, then close both servers' transports."""
        self.drop_sessions()
        super().close()


class FrameOnceProxyClient(FrameOnceClient):
    """Flow B with a session: each raw frame goes to the edge once; the edge has the cloud encode it once and
    computes the difference itself (it holds both frames' pixels)."""

    def __init__(self, edge: Edge):
        super().__init__(cloud=None, edge=edge)  # type: ignore[arg-type]

    @property
    def services(self) -> dict[str, Any]:
        return {"edge": self.edge}

    def fork(self) -> FrameOnceProxyClient:
        """A session of its own over the same edge (which has the cloud encode its frames)."""
        fork = FrameOnceProxyClient(self.edge)
        self._forks.append(fork)
        return fork

    @property
    def shared_encodings(self) -> Tracker | None:
        return None

    def payload(self, index: int, frame: np.ndarray) -> np.ndarray:
        """The frame itself: the edge has the cloud encode it."""
        return frame

    def difference(self, frame0: np.ndarray, frame1: np.ndarray) -> None:
        """None: the edge holds both frames' pixels and computes it."""
        return None

    def close(self) -> None:
        """Drop the sessions at the edge, then close its transport."""
        self.drop_sessions()
        self.edge.close()


class EdgeProxyClient(Backend):
    """Flow B: the edge as proxy. The client talks to the edge only."""

    def __init__(self, edge: Edge):
        self.edge = edge

    @property
    def services(self) -> dict[str, Any]:
        return {"edge": self.edge}

    @traced_pair
    def interpolate_pair(self, frame0: np.ndarray, frame1: np.ndarray, seed: int = 0, index: int = 0) -> np.ndarray:
        """Both raw frames to the edge; the middle frame back."""
        return self.edge.interpolate_frames(frame0, frame1, seed=seed)

    def close(self) -> None:
        """Close the edge's transport."""
        self.edge.close()


def open_backend(*, cloud_url: str, edge_url: str, transport: str = "http", flow: str = "a", frame_once: bool = True,
                 payload: str = "binary", wire_dtype: str = codecs.DEFAULT, options: Options | None = None,
                 timeout: float = 30.0, retries: int = DEFAULT_RETRIES, retry_for: float = DEFAULT_RETRY_FOR,
                 compress: str | None = None, api_key: str | None = None, ca_cert: str | Path | None = None,
                 allow_insecure_key: bool = False, shm: bool = False) -> Backend:
    """The backend for a transport (http, ws) and flow (a, b); each frame travels once unless not frame_once.
    `options` (num_steps, method, ...) go with every edge request; `retries` / `retry_for` bound each request's
    retries; `api_key` is sent as a bearer key (over https/wss, or to this machine, unless `allow_insecure_key`)
    and `ca_cert` verifies https/wss servers. `shm` (binary): frames and encodings go through shared memory,
    and only handles over the sockets, when the servers run on this machine with ALLOW_SHM=1 (else as bytes,
    said once); flow B's edge asks the cloud for handles when it runs with EDENSPLIT_SHM=1."""
    if transport not in ("http", "ws"):
        raise EdenError(f"unknown transport {transport!r}: use http or ws", code=ErrorCode.INVALID_PARAMETER)
    if flow not in ("a", "b"):
        raise EdenError(f"unknown flow {flow!r}: use a or b", code=ErrorCode.INVALID_PARAMETER)
    if compress and transport != "http":
        raise EdenError("compression is offered for HTTP only (WebSocket permessage-deflate does not pay "
                        "on tensors; see docs/protocol.md)", code=ErrorCode.INVALID_PARAMETER)
    body = check_payload(payload)
    Options.from_flat({"wire_dtype": wire_dtype})  # refuse a bad value before connecting anywhere

    def connect(url: str, name: str, ws_path: str, one_connection: bool = False) -> HttpTransport | WsTransport:
        config = ClientConfig.of(timeout=timeout, retries=retries, retry_for=retry_for, api_key=api_key,
                                 ca_cert=ca_cert, name=name, allow_insecure_key=allow_insecure_key)
        if transport == "http":
            return HttpTransport(url, config, compress=compress, max_connections=1 if one_connection else None)
        return WsTransport(url, config, path=ws_path)

    servers = {"edge": edge_url} if flow == "b" else {"cloud": cloud_url, "edge": edge_url}
    if check_shm(shm, body) and not all(on_this_host(url) for url in servers.values()):
        log.warning("--shm: %s not on this machine: bodies go as bytes",
                    " and ".join(f"the {name} ({url})" for name, url in servers.items()))
        shm = False
    # A session's edge requests, one at a time, on one connection: one edge worker holds the session.
    edge = Edge(connect(edge_url, "edge server", Edge.WS_PATH, one_connection=frame_once), payload=body,
                options=options, shm=shm)
    if flow == "b":
        return FrameOnceProxyClient(edge) if frame_once else EdgeProxyClient(edge)
    cloud = Cloud(connect(cloud_url, "cloud server", Cloud.WS_PATH), payload=body, wire_dtype=wire_dtype, shm=shm)
    return FrameOnceClient(cloud, edge) if frame_once else SplitClient(cloud, edge)

"""Session affinity for the interpolator's replicas: Ray Serve routes every HTTP request on its own, so the
requests of one frame-once video session (`POST /api/v1/sessions/{id}/frames/{k}`) would land on replicas that
do not hold the session's previous frame. This router sends a session's requests to one replica, chosen by a
consistent hash of its session id (Ray's `ConsistentHashRouter` ring), and only to it: when that replica is
busy the request waits in Ray's queue (`max_queued_requests`, then 503) instead of going to a replica that would
answer SESSION_NOT_FOUND. When the replica is lost, its sessions go to the next replica on the ring at once;
when the replica set changes (the lost one replaced, autoscaling), only the sessions whose replica changed move.
A session that moves costs one SESSION_NOT_FOUND, and the client resends the one frame the new replica lacks.
Other requests (pairs, flow B pairs, WebSocket connections, health) go to the least busy replica, ties taken in
turn. A request with Ray's `x-session-id` header is routed by that instead.

It runs inside Ray Serve's proxy (and any process holding a handle to the interpolator); it imports no torch.
"""

from __future__ import annotations

import pickle
import re
from typing import Any

from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter

SESSION_PATH = re.compile(r"/api/v1/sessions/([^/]{1,128})/")
MAX_SCOPE_BYTES = 1 << 20
MAX_REPLICAS = 1024


def session_of(pending_request: Any) -> str | None:
    """The edensplit session a pending request belongs to: Ray's session header, else the id in an HTTP
    request's path (the proxy hands the replica the pickled ASGI scope), else None."""
    if pending_request is None:
        return None
    metadata = pending_request.metadata
    if getattr(metadata, "session_id", ""):
        return metadata.session_id
    args = pending_request.args
    if not args or not isinstance(args[0], bytes) or len(args[0]) > MAX_SCOPE_BYTES:
        return None
    try:  # bytes the proxy itself pickled (ray.serve's StreamingHTTPRequest), not a client's
        scope = getattr(pickle.loads(args[0]), "asgi_scope", None)
    except Exception:
        return None
    if not isinstance(scope, dict) or scope.get("type") != "http":
        return None
    match = SESSION_PATH.search(str(scope.get("path", "")))
    return match.group(1) if match else None


class SessionAffinityRouter(ConsistentHashRouter):
    """A session's requests to its replica on the hash ring (no fallback); everything else least busy first."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._turn = 0

    def initialize_state(self, **kwargs: Any) -> None:
        # The ring's whole order is looked at; only the first replica still alive is ever offered.
        super().initialize_state(**{"num_fallback_replicas": MAX_REPLICAS, **kwargs})

    async def choose_replicas(self, candidate_replicas: list[Any], pending_request: Any = None) -> list[list[Any]]:
        if not candidate_replicas:
            return []
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True
        session = session_of(pending_request)
        if session is None:
            # One rank of every replica: Ray takes the shortest queue; equal queues are taken in turn.
            self._turn = (self._turn + 1) % len(candidate_replicas)
            return [candidate_replicas[self._turn:] + candidate_replicas[:self._turn]]
        # The session's replica: the first on the ring that this router does not know to be dead (Ray drops a
        # replica from `_replicas` as soon as a request to it fails with its death, before the ring is rebuilt);
        # a busy one is waited for, never passed over.
        for replica_id in self._lookup_ranked_replicas(session):
            replica = self._replicas.get(replica_id)
            if replica is not None:
                return [[replica]]
        return []

"""Session affinity for the interpolator's replicas: Ray Serve routes every HTTP request on its own, so the
requests of one frame-once video session (`POST /api/v1/sessions/{id}/frames/{k}`) would land on replicas that
do not hold the session's previous frame. This router sends a session's requests to one replica, and only to
it: when that replica is busy the request waits in Ray's queue (`max_queued_requests`, then 503) instead of going
to a replica that would answer SESSION_NOT_FOUND. The replica is chosen by rendezvous hashing (the live replica
whose id hashes highest with the session's): when a replica is lost, only its sessions move (each to the next
highest, at once); when the set changes (the lost one replaced, autoscaling), only the sessions whose highest
replica changed move. A session that moves costs one SESSION_NOT_FOUND, and the client resends the one frame the
new replica lacks. Other requests (pairs, flow B pairs, WebSocket connections, health) go to the least busy
replica, ties taken in turn.

The session is Ray's request metadata `session_id`, which Ray's proxy takes from the `X-Session-ID` header: the
proxy's middleware (`proxy.Gate`) sets it to the id in a session route's path (and removes it from any other
request); the edensplit client sends it on session requests too. No request's body or arguments are read.
Only Ray's public request-router interface is used (`ray.serve.request_router`). It runs inside Ray Serve's
proxy (and any process holding a handle to the interpolator); it imports no torch.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica


def session_of(pending_request: PendingRequest | None) -> str | None:
    """The edensplit session a pending request belongs to (its `session_id` metadata), else None."""
    if pending_request is None:
        return None
    return getattr(pending_request.metadata, "session_id", "") or None


def weight(session: str, replica: RunningReplica) -> bytes:
    """The rendezvous weight of `replica` for `session`: a hash of both that every router computes alike."""
    return hashlib.blake2b(f"{session}\0{replica.replica_id.unique_id}".encode(), digest_size=8).digest()


def session_replica(session: str, replicas: list[RunningReplica]) -> RunningReplica:
    """The replica of `session` among the live `replicas`: the one of highest weight."""
    return max(replicas, key=lambda replica: weight(session, replica))


class SessionAffinityRouter(RequestRouter):
    """A session's requests to its replica (no fallback); everything else least busy first."""

    def initialize_state(self, **kwargs: Any) -> None:
        self._turn = 0

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True  # a busy replica is retried with backoff
        session = session_of(pending_request)
        if session is not None:
            # The candidates are the replicas Ray knows alive (it drops one as soon as a request to it fails with
            # its death): a busy one is waited for, never passed over.
            return [[session_replica(session, candidate_replicas)]]
        # One rank of every replica: Ray takes the shortest queue; equal queues are taken in turn.
        self._turn = (getattr(self, "_turn", 0) + 1) % len(candidate_replicas)
        return [candidate_replicas[self._turn:] + candidate_replicas[:self._turn]]

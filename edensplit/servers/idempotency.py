"""Idempotency: a request's id (X-Request-ID, a WebSocket message's request_id) is its idempotency key.

Recent successful answers are kept, keyed by client and id with a digest of the request, within a byte bound
(IDEMPOTENCY_CACHE_MB, least recently used dropped first) that counts each entry whole: its answer, its key and
digest, and a fixed overhead for the entry itself (`ENTRY_BYTES`): a retried request gets the same answer
without being computed again. The same id with another request is refused (409 IDEMPOTENCY_CONFLICT);
a duplicate of a request still running waits for it. Errors are never kept, so a retry of a failed
request runs again.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from edensplit.errors import EdenError, ErrorCode

ENTRY_BYTES = 512  # what an entry costs beyond its answer, key and digest: the objects holding them


def digest(*parts: bytes | str) -> str:
    """What identifies a request's content: SHA-256 (run it off the event loop on large bodies; with the SHA
    extensions of x86-64 and ARMv8 CPUs, about 1.5-2 GB/s, 3x blake2b's speed)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


Digest = str | asyncio.Future  # a request's digest, or the digest still being computed (off the event loop)
DIGEST_CHARS = 64  # a SHA-256 digest in hex: what an entry's digest costs, counted before it is known


async def value(request_digest: Digest) -> str:
    """The digest, once computed (a future is awaited, never cancelled by its waiter)."""
    return request_digest if isinstance(request_digest, str) else await asyncio.shield(request_digest)


@dataclass
class Stored:
    digest: Digest
    answer: Any  # what the transport replays: an HTTP response's parts, or WebSocket messages
    size: int


def conflict(key: str) -> EdenError:
    rid = key.rsplit("/", 1)[-1]  # the caller's id, without the client and transport the cache keys it by
    return EdenError(f"request id {rid!r} was used for another request; use a new id per request (reuse it only "
                     "to retry the same request)", code=ErrorCode.IDEMPOTENCY_CONFLICT)


class IdempotencyCache:
    """Answers by key, bounded by `max_bytes`; `begin` says whether to replay, to refuse or to run."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.size = max_bytes, 0
        self._done: OrderedDict[str, Stored] = OrderedDict()
        self._running: dict[str, tuple[Digest, asyncio.Event]] = {}
        self.replays = 0

    async def begin(self, key: str, request_digest: Digest) -> Stored | None:
        """The stored answer to replay, or None: the caller runs the request and then calls `finish`.
        IDEMPOTENCY_CONFLICT if the key belongs to another request. `request_digest` may still be being
        computed: a key seen for the first time (nearly every request) runs without waiting for it; the digests
        are compared (awaited) only when the key was seen before."""
        while True:
            stored = self._done.get(key)
            if stored is not None:
                if await value(stored.digest) != await value(request_digest):
                    raise conflict(key)
                if key in self._done:
                    self._done.move_to_end(key)
                self.replays += 1
                return stored
            running = self._running.get(key)
            if running is None:
                self._running[key] = (request_digest, asyncio.Event())
                return None
            if await value(running[0]) != await value(request_digest):
                raise conflict(key)
            await running[1].wait()  # the original's answer, or (if it failed) our turn to run

    def finish(self, key: str, answer: Any = None, size: int = 0) -> None:
        """The request `begin` let run is done: keep its answer (`size` bytes) if it succeeded (not None)."""
        request_digest, done = self._running.pop(key, ("", None))
        size += len(key) + DIGEST_CHARS + ENTRY_BYTES
        if answer is not None and self.max_bytes > 0 and size <= self.max_bytes:
            self._done[key] = Stored(request_digest, answer, size)
            self.size += size
            while self.size > self.max_bytes:
                _, old = self._done.popitem(last=False)
                self.size -= old.size
        if done is not None:
            done.set()

    def __len__(self) -> int:
        return len(self._done)

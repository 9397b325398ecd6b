"""The edge's video sessions: a cache of the last few frame encodings of each video being processed.

With frame-once sessions the client sends each frame's encoding once; the edge keeps it, and the
next frame's request interpolates (k-1, k) from the cache. The cache is only a cache: entries expire
(TTL, LRU bound), a restart empties it, and then the edge answers SESSION_NOT_FOUND and the client
resends the frame it still holds. A request may arrive before its predecessor's frame (concurrent
requests): each request announces its frame when it starts; a lookup waits for a frame that is
announced but not yet stored, and gives a frame nobody has announced a short grace to show up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
import torch

from edensplit.errors import EdenError, ErrorCode
from edensplit.model import FrameEncoding

KEEP_FRAMES = 4  # the last frames of a session kept: enough for resends of in-flight pairs
GRACE_S = 2.0  # how long a lookup waits for the request bringing a frame to show up


@dataclass(frozen=True)
class SessionFrame:
    encoding: FrameEncoding
    pixels: np.ndarray | None = None  # flow B: the edge holds the frame's pixels too, for the difference


@dataclass
class Session:
    frames: OrderedDict[int, SessionFrame] = field(default_factory=OrderedDict)
    incoming: dict[int, int] = field(default_factory=dict)  # frame index -> requests bringing it
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    touched: float = field(default_factory=time.monotonic)


def same_encoding(a: FrameEncoding, b: FrameEncoding) -> bool:
    """Equal tensors (in the same wire precision) and geometry: the same frame."""
    return a.geometry == b.geometry and all(
        x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
        for x, y in ((a.cond_dit, b.cond_dit), (a.cond_dec, b.cond_dec), (a.mean, b.mean), (a.std, b.std)))


class SessionStore:
    """Sessions by id, least recently used dropped past `max_sessions`, idle ones after `ttl_s`."""

    def __init__(self, ttl_s: float, max_sessions: int):
        self.ttl_s, self.max_sessions = ttl_s, max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [s for s, sess in self._sessions.items() if now - sess.touched > self.ttl_s]:
            del self._sessions[sid]
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)

    def _session(self, session_id: str) -> Session:
        now = time.monotonic()
        session = self._sessions.pop(session_id, None)
        if session is None or now - session.touched > self.ttl_s:
            session = Session()
        session.touched = now
        self._sessions[session_id] = session
        self._expire()  # never this one: it was just touched and is the most recent
        return session

    @contextlib.asynccontextmanager
    async def incoming(self, session_id: str, index: int) -> AsyncIterator[None]:
        """Announce that a request is bringing frame `index` (for as long as the block runs)."""
        session = self._session(session_id)
        session.incoming[index] = session.incoming.get(index, 0) + 1
        try:
            yield
        finally:
            async with session.arrived:
                session.incoming[index] -= 1
                if not session.incoming[index]:
                    del session.incoming[index]
                session.arrived.notify_all()  # a waiter for a frame that will not come stops waiting

    async def put(self, session_id: str, index: int, encoding: FrameEncoding, pixels: np.ndarray | None = None) -> None:
        """Store frame `index`; the same frame sent again is fine, another content under its index is
        IDEMPOTENCY_CONFLICT (a frame is never silently replaced)."""
        session = self._session(session_id)
        held = session.frames.get(index)
        if held is not None and not same_encoding(held.encoding, encoding):
            raise EdenError(f"session {session_id!r} already holds another frame {index}; a frame's content never "
                            "changes within a session (a new video needs a new session id)",
                            code=ErrorCode.IDEMPOTENCY_CONFLICT, details={"session_id": session_id, "index": index})
        async with session.arrived:
            session.frames[index] = SessionFrame(encoding, pixels)
            session.frames.move_to_end(index)
            while len(session.frames) > KEEP_FRAMES:
                session.frames.popitem(last=False)
            session.arrived.notify_all()

    async def get(self, session_id: str, index: int, wait_s: float, grace_s: float = GRACE_S) -> SessionFrame:
        """Frame `index` of the session. Waits up to `wait_s` while a request is bringing it, and `grace_s`
        for such a request to show up (concurrent requests can arrive in any order); else SESSION_NOT_FOUND."""
        session = self._session(session_id)
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with session.arrived:
            while index not in session.frames:
                now = loop.time()
                until = start + (wait_s if index in session.incoming else min(grace_s, wait_s))
                if now >= until:
                    raise EdenError(f"session {session_id!r} does not hold frame {index} (expired, evicted or the "
                                    "edge restarted): send that frame's encoding again",
                                    code=ErrorCode.SESSION_NOT_FOUND,
                                    details={"session_id": session_id, "missing_index": index})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(session.arrived.wait(), until - now)
            return session.frames[index]

    def drop(self, session_id: str) -> bool:
        return self._sessions.pop(session_id, None) is not None

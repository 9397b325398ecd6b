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
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from edensplit.errors import EdenError, ErrorCode
from edensplit.model.eden import FrameContext
from edensplit.model.encoding import FrameEncoding
from edensplit.servers.ids import ID_RULE, ID_SCHEMA, check_id

KEEP_FRAMES = 4  # the last frames of a session kept: enough for resends of in-flight pairs
GRACE_S = 2.0  # how long a lookup waits for the request bringing a frame to show up
# What a session refuses: the frame before is missing, or a frame it holds is sent with other content.
SESSION_ERRORS = (ErrorCode.SESSION_NOT_FOUND, ErrorCode.IDEMPOTENCY_CONFLICT)
SESSION_ID_SCHEMA = {**ID_SCHEMA, "description": f"{ID_RULE}; sessions are per client"}
FRAME_INDEX_SCHEMA = {"type": "integer", "minimum": 0, "description": "the frame's index k in its video"}


def check_session_id(session_id: str) -> str:
    """A session id (servers.ids: 1-128 characters of A-Z a-z 0-9 . _ : -), else INVALID_PARAMETER."""
    return check_id(session_id, "session_id")


def client_session(client: str, session_id: str) -> str:
    """What the store knows a client's session by: one client never reaches another's, whatever ids they pick
    (another's session is, to it, a session that does not exist)."""
    return f"{client}/{session_id}"


def shown(key: str) -> str:
    """The session id a store key stands for, as its client named it (messages never name the client)."""
    return key.split("/", 1)[-1]


@dataclass(eq=False)
class SessionFrame:
    encoding: FrameEncoding
    pixels: np.ndarray | None = None  # flow B: the edge holds the frame's pixels too, for the difference
    context: FrameContext | None = None  # its temporal keys/values, once computed (see ContextCache)
    gone: bool = False  # no longer in its session (evicted, or the session left): a context computed late is not kept


class ContextCache:
    """Session frames' temporal keys/values (`frame_context`): computed once per frame on the model thread
    and reused by the next pair, within a byte bound (CONTEXT_CACHE_MB, least recently stored dropped
    first; a dropped context is computed again, to the same values)."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.size = max_bytes, 0
        self.on_lookup: Callable[[str], None] = lambda result: None  # told "hit" or "miss" per lookup
        self._held: OrderedDict[int, tuple[SessionFrame, int]] = OrderedDict()
        self._lock = threading.Lock()  # the model thread stores, the event loop forgets

    def keep(self, frame: SessionFrame, context: FrameContext) -> None:
        size = sum(t.numel() * t.element_size() for part in context for t in part)
        if size > self.max_bytes:
            return
        with self._lock:
            if frame.gone:  # left its session (`let_go`) while its context was computed
                return
            self._forget(frame)
            frame.context = context
            self._held[id(frame)] = (frame, size)
            self.size += size
            while self.size > self.max_bytes:
                self._forget(next(iter(self._held.values()))[0])

    def lookup(self, frame: SessionFrame) -> FrameContext | None:
        """The frame's kept context, or None (to compute); counted as a hit or a miss."""
        context = frame.context
        self.on_lookup("hit" if context is not None else "miss")
        return context

    def forget(self, frame: SessionFrame) -> None:
        with self._lock:
            self._forget(frame)

    def let_go(self, frame: SessionFrame) -> None:
        """A frame leaving its session: its context forgotten, and one computed for it later never kept."""
        with self._lock:
            frame.gone = True
            self._forget(frame)

    def _forget(self, frame: SessionFrame) -> None:
        held = self._held.pop(id(frame), None)
        if held is not None:
            self.size -= held[1]
        frame.context = None


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

    def __init__(self, ttl_s: float, max_sessions: int, context_mb: float = 4096):
        self.ttl_s, self.max_sessions = ttl_s, max_sessions
        self.contexts = ContextCache(int(context_mb * 2**20))
        self.on_lookup: Callable[[str], None] = lambda result: None  # told "hit" or "miss" per predecessor lookup
        self.on_count: Callable[[int], None] = lambda sessions: None  # told the number held when it changes
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def expire(self) -> None:
        """Drop the sessions idle past the TTL now (the edge's housekeeping calls it every second: without it an
        idle session, and what it holds, would stay until the next request came)."""
        before = len(self._sessions)
        self._expire()
        if len(self._sessions) != before:
            self.on_count(len(self._sessions))

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [s for s, sess in self._sessions.items() if now - sess.touched > self.ttl_s]:
            self._let_go(self._sessions.pop(sid))
        while len(self._sessions) > self.max_sessions:
            self._let_go(self._sessions.popitem(last=False)[1])

    def _let_go(self, session: Session) -> None:
        """A session leaving the store: its frames' contexts leave the cache with it (else they, and the encodings
        they hold, a shared-memory segment's pages among them, would stay until the cache's bound pushed them out)."""
        for frame in session.frames.values():
            self.contexts.let_go(frame)

    def _session(self, session_id: str) -> Session:
        now = time.monotonic()
        session = self._sessions.pop(session_id, None)
        if session is not None and now - session.touched > self.ttl_s:
            self._let_go(session)
            session = None
        if session is None:
            session = Session()
        session.touched = now
        self._sessions[session_id] = session
        self._expire()  # never this one: it was just touched and is the most recent
        self.on_count(len(self._sessions))
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

    async def put(self, session_id: str, index: int, encoding: FrameEncoding, pixels: np.ndarray | None = None
                  ) -> SessionFrame:
        """Store frame `index` and return what the session holds for it; the same frame sent again is fine,
        another content under its index is IDEMPOTENCY_CONFLICT (a frame is never silently replaced)."""
        session = self._session(session_id)
        held = session.frames.get(index)
        if held is not None and not same_encoding(held.encoding, encoding):
            raise EdenError(f"session {shown(session_id)!r} already holds another frame {index}; a frame's content "
                            "never changes within a session (a new video needs a new session id)",
                            code=ErrorCode.IDEMPOTENCY_CONFLICT,
                            details={"session_id": shown(session_id), "index": index})
        async with session.arrived:
            if held is None:
                session.frames[index] = SessionFrame(encoding, pixels)
            session.frames.move_to_end(index)
            while len(session.frames) > KEEP_FRAMES:
                self.contexts.let_go(session.frames.popitem(last=False)[1])
            newest = max(session.frames)
            for k, frame in session.frames.items():
                if k < newest - 1:  # only the newest two frames have a pair still to come
                    self.contexts.forget(frame)
            session.arrived.notify_all()
            return session.frames[index]

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
                    self.on_lookup("miss")
                    raise EdenError(f"session {shown(session_id)!r} does not hold frame {index} (expired, evicted or "
                                    "the edge restarted): send that frame's encoding again",
                                    code=ErrorCode.SESSION_NOT_FOUND,
                                    details={"session_id": shown(session_id), "missing_index": index})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(session.arrived.wait(), until - now)
            self.on_lookup("hit")
            return session.frames[index]

    def drop(self, session_id: str) -> bool:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            self._let_go(session)
        self.on_count(len(self._sessions))
        return session is not None

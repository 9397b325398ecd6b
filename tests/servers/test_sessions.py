"""The edge's session cache: bounded, expiring, and waiting only for frames that are on their way."""

from __future__ import annotations

import asyncio
import time

import pytest

from edensplit.errors import EdenError
from edensplit.model.stages import encode_frames
from edensplit.servers.sessions import KEEP_FRAMES, SessionStore
from tests.conftest import make_frames


@pytest.fixture(scope="module")
def encoding(tiny_model):
    return encode_frames(tiny_model, make_frames(1, 40, 70))


def test_keeps_the_last_frames_and_the_most_recent_sessions(encoding):
    async def scenario():
        store = SessionStore(ttl_s=60, max_sessions=2)
        for k in range(KEEP_FRAMES + 2):
            await store.put("a", k, encoding)
        assert (await store.get("a", KEEP_FRAMES + 1, 0.1)).encoding is encoding
        with pytest.raises(EdenError, match="does not hold frame 0"):
            await store.get("a", 0, 0.1, grace_s=0)
        await store.put("b", 0, encoding)
        await store.put("c", 0, encoding)  # "a" is now the least recently used: dropped
        assert len(store) == 2
        with pytest.raises(EdenError):
            await store.get("a", KEEP_FRAMES + 1, 0.1, grace_s=0)

    asyncio.run(scenario())


def test_idle_sessions_expire(encoding):
    async def scenario():
        store = SessionStore(ttl_s=0.05, max_sessions=8)
        await store.put("a", 0, encoding)
        await asyncio.sleep(0.1)  # let the TTL pass: the thing under test is time itself
        with pytest.raises(EdenError, match="SESSION|does not hold"):
            await store.get("a", 0, 0.1, grace_s=0)

    asyncio.run(scenario())


def test_waits_for_a_frame_that_is_on_its_way_and_not_for_one_that_is_not(encoding):
    async def scenario():
        store = SessionStore(ttl_s=60, max_sessions=8)
        started = time.perf_counter()
        with pytest.raises(EdenError):
            await store.get("s", 3, 30, grace_s=0.2)  # nobody brings frame 3: fails after the grace, not 30 s
        assert 0.2 <= time.perf_counter() - started < 1

        async def late():
            await asyncio.sleep(0.05)  # a request that shows up during the grace, then stores its frame
            async with store.incoming("s", 5):
                await asyncio.sleep(0.05)
                await store.put("s", 5, encoding)

        task = asyncio.create_task(late())
        assert (await store.get("s", 5, 5, grace_s=0.5)).encoding is encoding
        await task

        async def bring():
            async with store.incoming("s", 4):
                await asyncio.sleep(0.05)
                await store.put("s", 4, encoding)

        task = asyncio.create_task(bring())
        await asyncio.sleep(0)  # let the bringer announce itself
        assert (await store.get("s", 4, 5)).encoding is encoding
        await task

        async def fail():
            async with store.incoming("s", 7):
                await asyncio.sleep(0.05)
                raise RuntimeError("the request bringing frame 7 failed")

        failing = asyncio.create_task(fail())
        await asyncio.sleep(0)
        started = time.perf_counter()
        with pytest.raises(EdenError):
            await store.get("s", 7, 30, grace_s=0.2)
        assert time.perf_counter() - started < 1
        with pytest.raises(RuntimeError):
            await failing

    asyncio.run(scenario())


def test_a_session_leaving_the_store_takes_its_frames_contexts_from_the_cache(encoding):
    """Dropped, evicted or expired: its contexts (and the encodings they hold, shared-memory pages among them) go
    at once, not when the cache's byte bound would push them out."""
    context = ([encoding.cond_dit], [encoding.cond_dec])

    async def held(store: SessionStore, session_id: str) -> None:
        for k in range(2):
            store.contexts.keep(await store.put(session_id, k, encoding), context)

    async def scenario():
        store = SessionStore(ttl_s=60, max_sessions=1)
        await held(store, "a")
        assert store.contexts.size > 0
        assert store.drop("a")
        assert store.contexts.size == 0  # dropped
        await held(store, "b")
        await held(store, "c")  # "b" evicted: max_sessions=1
        per_session = store.contexts.size
        assert per_session > 0 and len(store) == 1
        store.ttl_s = 0.05
        await asyncio.sleep(0.1)  # the TTL passes
        await store.put("d", 0, encoding)  # "c" expired
        assert store.contexts.size == 0

    asyncio.run(scenario())


def test_a_context_computed_after_its_frame_left_the_session_is_not_kept(encoding):
    """A pair in flight when its session was dropped still computes its frames' contexts: they are not kept."""
    context = ([encoding.cond_dit], [encoding.cond_dec])

    async def scenario():
        store = SessionStore(ttl_s=60, max_sessions=4)
        frame = await store.put("a", 0, encoding)
        evicted = await store.put("b", 0, encoding)
        for k in range(1, KEEP_FRAMES + 1):
            await store.put("b", k, encoding)  # frame 0 of "b" evicted
        store.drop("a")
        store.contexts.keep(frame, context)
        store.contexts.keep(evicted, context)
        assert store.contexts.size == 0 and frame.context is None and evicted.context is None

    asyncio.run(scenario())

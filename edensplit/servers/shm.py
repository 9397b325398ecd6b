"""Shared memory on a server (ALLOW_SHM=1): one adapter on the operation contract's seams, so that no operation
knows about it. A request whose body is a handle (`application/vnd.edensplit.shm-handle+json`) has the segment
taken (read, checked, removed) and decoded as the media type the handle names; a request that asks for a handle
(`Accept`, or a WebSocket message's `accept`) gets its binary answer written to a new segment, and the handle.

The segments a server makes are its to bound and clean: their bytes are held against the byte budget bodies
use (and their count against SHM_MAX_SEGMENTS) until they are taken or SHM_TTL_S passes, when they are
removed; every server that allows shared memory also removes this user's segments whose maker no longer runs
(a process killed mid-job), at start and then every second. Answers go into spare segments allocated and mapped
ahead (`shm.Spares`): a few per answer length, while answers of that length keep coming, and each taken one
given back by its reader for the next answer. An answer laid out by
`wire.buffers.answer_buffer` (the cloud's encoding) is written straight into one (its tokens cast into the
segment's pages), others are copied in.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from edensplit.errors import EdenError, ErrorCode
from edensplit.model.eden import Eden
from edensplit.processes import maker_of, runs
from edensplit.servers.budget import ByteBudget
from edensplit.servers.contract import Operation, OperationInput, Reply
from edensplit.servers.metrics import Metrics
from edensplit.wire import shm
from edensplit.wire.buffers import answers_into
from edensplit.wire.shm import SHM_MEDIA_TYPE, Handle

log = logging.getLogger("edensplit.server")
SHM_ERRORS = (ErrorCode.SHM_DISABLED, ErrorCode.SHM_NOT_FOUND, ErrorCode.SHM_FORBIDDEN, ErrorCode.SHM_INVALID,
              ErrorCode.PAYLOAD_TOO_LARGE)
SWEEP_S = 1.0
HEADER_BYTES = 256  # a segment's header line, counted with its data
WAITING = "shared-memory segments not yet taken"  # what their bytes are, in the budget's refusal


class SharedMemory:
    """A server's shared memory: whether it is on, the segments this process made, the sweep."""

    def __init__(self, enabled: bool, budget: ByteBudget, metrics: Metrics | None = None, ttl_s: float = 30.0,
                 max_segments: int = 64, max_bytes: int = 512 * 2**20):
        self.enabled = enabled and shm.available()
        if enabled and not self.enabled:
            log.warning("ALLOW_SHM=1 but this machine has no writable %s: shared memory is off", shm.SHM_DIR)
        self.budget, self.metrics, self.ttl_s, self.max_segments = budget, metrics, ttl_s, max_segments
        self.max_bytes = max_bytes  # the most a segment it takes may hold (MAX_REQUEST_MB, as a body)
        self.maker = maker_of(os.getpid())
        self.made: dict[str, tuple[int, float]] = {}  # name -> (bytes held, when made)
        self.spares = shm.Spares(self.maker, ttl_s)  # answers written into pages allocated ahead
        self._lock = threading.Lock()

    @property
    def answers(self) -> tuple[str, ...]:
        """The answer types it adds to every operation's."""
        return (SHM_MEDIA_TYPE,) if self.enabled else ()

    def check_enabled(self) -> None:
        if not self.enabled:
            raise EdenError("this server does not take shared-memory handles (start it with ALLOW_SHM=1 on the "
                            "same host as its callers), or send the bytes", code=ErrorCode.SHM_DISABLED)

    def adapt(self, operation: Operation[Any, Any], handle_in: bool, handle_out: bool) -> Operation[Any, Any]:
        """`operation`, or (a request that brings or asks for a handle) it wrapped to take or make segments."""
        if not (handle_in or handle_out):
            return operation
        self.check_enabled()
        return SharedOperation(operation, self, handle_out)

    # -- segments --------------------------------------------------------------------------------------

    def make(self, data: bytes | memoryview, client: str, media_type: str) -> Handle:
        """A new segment holding `data` for `client`, held against the budget until taken or expired."""
        held = self._reserve(len(data))
        try:
            handle = self.spares.write(data, client, media_type)
        except OSError as exc:
            self.budget.release(held)
            raise _cannot_write(exc) from None
        return self._made(handle, held)

    def draft(self, nbytes: int, client: str, media_type: str) -> shm.Draft:
        """A segment for `client` to fill in place (an answer cast straight into it), held against the budget
        from now: `adopt` it once filled, or `drop` it."""
        held = self._reserve(nbytes)
        try:
            return self.spares.draft(nbytes, client, media_type)
        except BaseException:
            self.budget.release(held)
            raise

    def adopt(self, draft: shm.Draft) -> Handle:
        """A filled draft as a segment (held until taken or expired), and its handle."""
        held = draft.nbytes + HEADER_BYTES
        try:
            handle = draft.commit()
        except OSError as exc:
            draft.discard()
            self.budget.release(held)
            raise _cannot_write(exc) from None
        return self._made(handle, held)

    def drop(self, draft: shm.Draft) -> None:
        draft.discard()
        self.budget.release(draft.nbytes + HEADER_BYTES)

    def check_room(self) -> None:
        """OVERLOADED (503, retried by clients) while SHM_MAX_SEGMENTS segments wait to be taken."""
        if len(self.made) >= self.max_segments:
            self.let_go_of_taken()
        with self._lock:
            if len(self.made) >= self.max_segments:
                raise EdenError(f"this server holds {len(self.made)} shared-memory segments not yet taken (limit "
                                f"{self.max_segments}); retry shortly", code=ErrorCode.OVERLOADED,
                                details={"retry_after_s": 1})

    def _reserve(self, nbytes: int) -> int:
        """The bytes of a new segment held against the budget. Taken segments are let go of once a second (the
        sweep); at a limit they are looked for at once, so that answers coming faster than that (100 MB float32
        pairs at 1080p, several a second) are not refused for segments their readers took long ago."""
        held = nbytes + HEADER_BYTES
        self.check_room()
        try:
            self.budget.reserve(held, WAITING)
        except EdenError:
            if not self.let_go_of_taken():
                raise
            self.budget.reserve(held, WAITING)
        return held

    def _made(self, handle: Handle, held: int) -> Handle:
        with self._lock:
            self.made[handle.segment] = (held, time.monotonic())
        self._count("made", handle.size)
        return handle

    def take(self, handle: Handle, client: str | None, media_type: str) -> memoryview:
        data = shm.take_segment(handle, client, media_type)
        self._count("taken", len(data))
        return data

    def sweep(self) -> int:
        """Let go of this process's segments that were taken, remove those past the TTL and every segment of
        this user whose maker no longer runs; the number removed."""
        removed, now = 0, time.monotonic()
        self.spares.expire()
        shm.forget_idle_views()
        self.let_go_of_taken()
        with self._lock:
            entries = list(self.made.items())
        for name, (held, made) in entries:
            if now - made > self.ttl_s and shm.remove(name):
                removed += 1
                self._count("expired", held - HEADER_BYTES)
                self._let_go(name)
        for name, maker, _ in shm.segments():
            if maker != self.maker and not runs(maker) and shm.remove(name):
                removed += 1
                log.info("removed shared-memory segment %s of process %s, which no longer runs", name, maker)
        self._gauges()
        return removed

    def let_go_of_taken(self) -> int:
        """Give the budget back for the segments this process made that were taken (their names are gone); how
        many."""
        with self._lock:
            names = list(self.made)
        return sum(self._let_go(name) for name in names if not (shm.SHM_DIR / name).exists())

    def _let_go(self, name: str) -> bool:
        """Forget segment `name` and give back the bytes it held (once, whoever calls first)."""
        with self._lock:
            entry = self.made.pop(name, None)
        if entry is None:
            return False
        self.budget.release(entry[0])
        return True

    def close(self) -> None:
        """At shutdown: this process's segments not yet taken go (nobody will sweep them for it)."""
        self.spares.close()
        with self._lock:
            entries, self.made = list(self.made.items()), {}
        for name, (held, _) in entries:
            shm.remove(name)
            self.budget.release(held)
        self._gauges()

    async def run(self) -> None:
        """The sweep, every second, until cancelled."""
        while True:
            try:
                await asyncio.to_thread(self.sweep)
            except Exception:  # the sweep must outlive one bad entry
                log.exception("shared-memory sweep failed")
            await asyncio.sleep(SWEEP_S)

    @contextlib.asynccontextmanager
    async def running(self) -> Any:
        """The sweep for the app's lifetime (nothing when shared memory is off); this process's segments removed
        at the end."""
        if not self.enabled:
            yield
            return
        task = asyncio.create_task(self.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.close()

    def _count(self, what: str, nbytes: int) -> None:
        if self.metrics is not None:
            self.metrics.shm_bytes_moved.labels(what).inc(nbytes)
        self._gauges()

    def _gauges(self) -> None:
        if self.metrics is not None:
            with self._lock:
                held = sum(h for h, _ in self.made.values())
                count = len(self.made)
            self.metrics.shm_bytes.set(held)
            self.metrics.shm_segments.set(count)
            self.metrics.shm_spare_bytes.set(self.spares.nbytes)


class SharedOperation:
    """An operation whose input may come, and whose answer goes, through shared memory."""

    def __init__(self, operation: Operation[Any, Any], memory: SharedMemory, handle_out: bool):
        self.operation, self.memory, self.handle_out = operation, memory, handle_out
        self.inputs, self.binary_inputs = operation.inputs, operation.binary_inputs
        self.answers, self.errors = operation.answers, operation.errors
        self.client = "anonymous"  # whose request this is (a wrapper is made for each request)

    def decode(self, inp: OperationInput, model: Eden) -> Any:
        self.client = inp.client
        if self.handle_out:  # refused before a segment of the caller's is taken: its retry still finds it there
            self.memory.check_room()
        if inp.content_type == SHM_MEDIA_TYPE:
            handle = Handle.loads(inp.body)
            if handle.size > self.memory.max_bytes:
                raise EdenError(f"the segment holds {handle.size} bytes, more than this server takes in a request "
                                f"({self.memory.max_bytes}, MAX_REQUEST_MB)", code=ErrorCode.PAYLOAD_TOO_LARGE)
            if handle.media_type not in self.operation.binary_inputs:
                raise shm.invalid(f"this operation takes {', '.join(self.operation.binary_inputs)} through shared "
                                  f"memory, not {handle.media_type}")
            data = self.memory.take(handle, inp.client, handle.media_type)
            inp = dataclasses.replace(inp, content_type=handle.media_type, content_type_header=handle.media_type,
                                      body=data)
        return self.operation.decode(inp, model)

    async def prepare(self, job: Any, model: Eden) -> Any:
        return await self.operation.prepare(job, model)

    def predict(self, model: Eden, jobs: Sequence[Any]) -> list[Any]:
        return self.operation.predict(model, jobs)

    def batch_key(self, job: Any) -> Hashable | None:
        return self.operation.batch_key(job)

    def encode(self, result: Any, job: Any) -> Reply:
        if not self.handle_out:
            return self.operation.encode(result, job)
        drafts: list[shm.Draft] = []

        def allocate(nbytes: int, media_type: str) -> np.ndarray:
            drafts.append(self.memory.draft(nbytes, self.client, media_type))
            return drafts[-1].data

        try:
            with answers_into(allocate):  # an answer laid out by `answer_buffer` is written straight into a segment
                reply = self.operation.encode(result, job)
            if reply.body is None:
                return reply
            filled = next((d for d in drafts if _fills(reply, d)), None)
            if filled is not None:
                drafts.remove(filled)
                handle = self.memory.adopt(filled)
            else:
                handle = self.memory.make(reply.body, self.client, reply.media_type)
        finally:
            for draft in drafts:
                self.memory.drop(draft)
        handle = dataclasses.replace(handle, metadata=reply.metadata)  # what a JSON answer says beside the data
        return Reply(reply.data, reply.metadata, handle.dumps(), SHM_MEDIA_TYPE)


def _fills(reply: Reply, draft: shm.Draft) -> bool:
    """Whether the reply's body is the draft's data, whole and of its media type."""
    body = reply.body
    return (isinstance(body, memoryview) and body.obj is draft.data and body.nbytes == draft.nbytes
            and reply.media_type == draft.media_type)


def _cannot_write(exc: OSError) -> EdenError:
    return EdenError(f"cannot write a shared-memory segment ({exc.strerror}); retry, or send the bytes",
                     code=ErrorCode.OVERLOADED, details={"retry_after_s": 1})

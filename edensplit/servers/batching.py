"""Dynamic batching on the edge: requests that arrive together run as one model call.

Off by default (`MAX_BATCH=1`): one pair per model call is the determinism contract's exact mode.
With `MAX_BATCH=B`, the first waiting request is joined by up to B-1 more with the same batch key
(frame size, sampler, VAE constants) that arrive within `BATCH_WAIT_MS`; they run as one batch on the
model thread and each gets its own frame. Batched frames may differ from single calls by float
rounding (tests hold them to 1e-5 before rounding to uint8), which is why this is opt-in.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from edensplit.errors import EdenError, ErrorCode

J = TypeVar("J")
R = TypeVar("R")
HISTORY = 256  # batch sizes remembered, for tests and health: a window, not a log


@dataclass
class _Waiting(Generic[J]):
    job: J
    key: Hashable
    done: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Batcher(Generic[J, R]):
    """Collects jobs into batches of equal key and runs them as `await execute(run_batch, jobs) -> results`."""

    def __init__(self, run_batch: Callable[..., Sequence[R]], key: Callable[[J], Hashable],
                 execute: Callable[..., Any], max_batch: int, wait_s: float,
                 on_batch: Callable[[int], None] | None = None):
        self.run_batch, self.key, self.execute = run_batch, key, execute
        self.on_batch = on_batch or (lambda size: None)
        self.max_batch, self.wait_s = max_batch, wait_s
        self._queue: list[_Waiting[J]] = []
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.batches: deque[int] = deque(maxlen=HISTORY)  # sizes of the latest batches run

    async def submit(self, job: J) -> R:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        waiting = _Waiting(job, self.key(job))
        self._queue.append(waiting)
        self._wakeup.set()
        return await waiting.done

    def _take(self) -> list[_Waiting[J]]:
        first = self._queue[0]
        batch = [w for w in self._queue if w.key == first.key][: self.max_batch]
        for w in batch:
            self._queue.remove(w)
        return batch

    async def _fill(self) -> None:
        """Wait up to `wait_s` for the first job's batch to fill."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while sum(w.key == self._queue[0].key for w in self._queue) < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    async def _work(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._fill()
            batch = [w for w in self._take() if not w.done.cancelled()]
            if batch:
                self.batches.append(len(batch))
                self.on_batch(len(batch))
                await self._run(batch)

    async def _run(self, batch: list[_Waiting[J]]) -> None:
        """Run one batch; any failure, a wrong number of results included, fails every job of it."""
        try:
            results = list(await self.execute(self.run_batch, [w.job for w in batch]))
            if len(results) != len(batch):
                raise EdenError(f"the model returned {len(results)} results for a batch of {len(batch)}",
                                code=ErrorCode.MODEL_ERROR)
        except asyncio.CancelledError:
            self._fail(batch, EdenError("the server is shutting down", code=ErrorCode.NOT_READY))
            raise
        except Exception as exc:  # every request of the batch gets the error (an EdenError keeps its code)
            self._fail(batch, exc)
            return
        for w, result in zip(batch, results, strict=True):
            if not w.done.done():
                w.done.set_result(result)

    @staticmethod
    def _fail(batch: list[_Waiting[J]], exc: BaseException) -> None:
        for w in batch:
            if not w.done.done():
                w.done.set_exception(exc)

    async def close(self) -> None:
        """Stop the worker; jobs still waiting get NOT_READY instead of waiting forever."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._fail(self._queue, EdenError("the server is shutting down", code=ErrorCode.NOT_READY))
        self._queue.clear()

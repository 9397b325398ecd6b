"""Dynamic batching on the edge: requests that arrive together run as one model call.

Off by default (`MAX_BATCH=1`): one pair per model call is the determinism contract's exact mode.
With `MAX_BATCH=B`, the first waiting request is joined by up to B-1 more with the same batch key
(frame size, sampler, VAE constants) that arrive within `BATCH_WAIT_MS`; they run as one batch on the
model thread and each gets its own frame. Batched frames may differ from single calls by float
rounding (tests hold them to 1e-5 before rounding to uint8), which is why this is opt-in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")


@dataclass
class _Waiting(Generic[J]):
    job: J
    key: Hashable
    done: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Batcher(Generic[J, R]):
    """Collects jobs into batches of equal key and runs them as `await execute(run_batch, jobs) -> results`."""

    def __init__(self, run_batch: Callable[..., Sequence[R]], key: Callable[[J], Hashable],
                 execute: Callable[..., Any], max_batch: int, wait_s: float):
        self.run_batch, self.key, self.execute = run_batch, key, execute
        self.max_batch, self.wait_s = max_batch, wait_s
        self._queue: list[_Waiting[J]] = []
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.batches: list[int] = []  # sizes of the batches run, for tests and metrics

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

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = loop.time() + self.wait_s
            while sum(w.key == self._queue[0].key for w in self._queue) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = [w for w in self._take() if not w.done.cancelled()]
            if not batch:
                continue
            self.batches.append(len(batch))
            try:
                results = await self.execute(self.run_batch, [w.job for w in batch])
            except Exception as exc:  # every request of the batch gets the error (an EdenError keeps its code)
                for w in batch:
                    if not w.done.done():
                        w.done.set_exception(exc)
                continue
            for w, result in zip(batch, results, strict=True):
                if not w.done.done():
                    w.done.set_result(result)

"""A server's resident model: loaded once at start-up, run on one worker thread, with admission control.

Model calls run on a single dedicated thread so the event loop stays free for I/O and the model
sees one request at a time (the exact mode's "same thread count"). Admission is bounded: past
`max_inflight` requests a new one is refused at once with 503 OVERLOADED instead of queueing
without limit (backpressure the client's retry can absorb).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from edensplit.errors import EdenError, ErrorCode
from edensplit.model.eden import Eden
from edensplit.servers.batching import Batcher
from edensplit.version import __version__

log = logging.getLogger("edensplit.server")
LOAD_FAILED = "the model could not be loaded: the server's log says why"  # /health never shows paths or errors
R = TypeVar("R")


class ModelRuntime:
    """The model, its worker thread, and the count of requests admitted."""

    def __init__(self, stage: str, max_inflight: int, model: Eden | None = None, max_batch: int = 1,
                 batch_wait_s: float = 0.005):
        self.stage = stage
        self.max_inflight = max_inflight
        self.max_batch, self.batch_wait_s = max_batch, batch_wait_s
        self.batchers: dict[str, Any] = {}  # by name: a Batcher, or Ray Serve's (serve_ray.deployments)
        self.model = model
        self.load_error: str | None = None
        self.inflight = 0
        self.ready = False  # loaded and warmed up
        self.draining = False  # shutting down: admit nothing new
        self.model_s = 0.0  # a moving average of one model call's seconds, for Retry-After
        self.queued = 0  # model calls submitted, not started
        self.on_batch: Callable[[int], None] = lambda size: None  # told each model call's batch size
        self.on_load: Callable[[int, int], None] = lambda inflight, queued: None  # told both when either changes
        self.started = time.monotonic()
        self.gpus = torch.cuda.device_count()  # what this process sees (CUDA_VISIBLE_DEVICES), for /health
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"eden-{stage}")

    def require_model(self) -> Eden:
        if self.model is None:
            why = "it failed to load (the server's log says why)" if self.load_error else "starting up"
            raise EdenError(f"the {self.stage} model is not loaded: {why}", code=ErrorCode.NOT_READY)
        return self.model

    @contextlib.asynccontextmanager
    async def admission(self) -> AsyncIterator[None]:
        """Hold one of `max_inflight` places for a request's whole life, or refuse it now."""
        if self.draining:
            raise EdenError(f"the {self.stage} server is shutting down; retry on another or once it is back",
                            code=ErrorCode.NOT_READY, details={"retry_after_s": 5})
        if self.inflight >= self.max_inflight:
            raise EdenError(f"the {self.stage} server has {self.inflight} requests in flight "
                            f"(limit {self.max_inflight}); retry shortly", code=ErrorCode.OVERLOADED,
                            details={"retry_after_s": self.retry_after_s()})
        self._count(inflight=1)
        try:
            yield
        finally:
            self._count(inflight=-1)

    def _count(self, inflight: int = 0, queued: int = 0) -> None:
        self.inflight += inflight
        self.queued += queued
        self.on_load(self.inflight, self.queued)

    async def run(self, fn: Callable[..., R], *args: Any, cancellation: Any = None) -> R:
        """Run fn(model, *args) on the model thread. If the caller is cancelled meanwhile, the cancellation is
        told (the model thread stops at its next check) and the call still waits for the thread to let go,
        so what counts as in flight is what the model thread really holds."""
        model = self.require_model()
        self._count(queued=1)
        future = self._executor.submit(self._timed, fn, model, *args)
        done = asyncio.wrap_future(future)
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            if cancellation is not None:
                cancellation.caller_gone()
            if future.cancel():  # a call still queued never runs; a running one stops at its next check
                self._count(queued=-1)
            await asyncio.wait([done])
            if not done.cancelled():
                done.exception()  # retrieved: the caller is gone, the outcome goes nowhere
            raise

    def _timed(self, fn: Callable[..., R], *args: Any) -> R:
        self._count(queued=-1)
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.model_s = 0.8 * self.model_s + 0.2 * (time.perf_counter() - started)

    def retry_after_s(self) -> int:
        """When a refused request may find room: the work ahead of it on the model thread, at least 1 s."""
        return max(1, math.ceil(self.model_s * self.inflight))

    def warm_up(self, warm: Callable[[Eden], Any] | None, model: Eden | None = None) -> None:
        """One small pass through the model (first-call costs paid before the server says it is ready); a `model`
        loaded meanwhile is warmed up first and only then becomes the one requests get."""
        model = model if model is not None else self.model
        if warm is not None and model is not None:
            started = time.perf_counter()
            warm(model)
            log.info("%s stage warmed up in %.2f s", self.stage, time.perf_counter() - started)
        self.model = model
        self.ready = model is not None

    async def predict(self, operation: Any, job: Any, cancellation: Any = None, batcher: str | None = None) -> Any:
        """operation.predict for one job on the model thread; with batching on and a `batcher` named, batched with
        the other jobs of that batcher whose operation.batch_key is equal (operations naming the same batcher
        share one: the cloud's pair and frame encodings, the edge's three ways to a frame)."""
        if self.max_batch <= 1 or batcher is None or operation.batch_key(job) is None:
            self.on_batch(1)
            return (await self.run(operation.predict, [job], cancellation=cancellation))[0]
        shared = self.batchers.get(batcher)
        if shared is None:
            shared = self.batchers[batcher] = Batcher(operation.predict, operation.batch_key, self.run,
                                                      self.max_batch, self.batch_wait_s, on_batch=self.on_batch)
        return await shared.submit(job)

    def health(self) -> dict[str, Any]:
        model = self.model
        info: dict[str, Any] = {
            "status": "draining" if self.draining else "ok" if self.ready else "error" if self.load_error
            else "loading",
            "stage": self.stage, "model_loaded": model is not None, "ready": self.ready and not self.draining,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 3), "inflight": self.inflight,
            "error": LOAD_FAILED if self.load_error else None, "max_batch": self.max_batch, "gpus": self.gpus,
        }
        if model is not None:
            info.update(device=str(model.device), dtype=str(model.dtype).removeprefix("torch."),
                        weights=model.weights_name, weights_repository=model.weights_repository,
                        weights_revision=model.weights_revision,
                        weights_digest=model.weights_digest, stand_in=getattr(model, "stand_in", False),
                        random_weights=model.weights_source.startswith("random"),
                        model_args=model.args.as_dict())
        return info

    async def close(self) -> None:
        """Stop the batchers' tasks (their waiting jobs fail with NOT_READY), then the model thread."""
        for batcher in self.batchers.values():
            await batcher.close()
        self.batchers.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

"""The operation contract (after LitServe's LitAPI), the same for every transport.

An operation of a server is written once: `decode` a transport-neutral `OperationInput` into a job,
`prepare` it (async work such as a session lookup or a call to another server), `predict` a batch of jobs
on the model thread, `encode` a result into a `Reply`. `run_operation` drives the steps inside one
admission place and the request's deadline, with decoding and encoding (JSON, base64, PNG, containers: tens
of MB) on the thread pool, so the event loop only moves bytes. What wraps every request (ids, keys, budget,
replays, logs, metrics, spans) is `edensplit.servers.pipeline`; the transports only frame.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from starlette.concurrency import run_in_threadpool

from edensplit.errors import EdenError, ErrorCode
from edensplit.model.eden import Eden
from edensplit.servers.runtime import ModelRuntime
from edensplit.tracing import tracer

JSON = "application/json"
MULTIPART = "multipart/form-data"
PNG = "image/png"
J = TypeVar("J")
R = TypeVar("R")
T = TypeVar("T")
STEPS = ("admission_wait", "decode", "prepare", "model", "encode")  # a request's steps, in order


class Cancellation:
    """A request's deadline and whether its caller went away: checked before the model takes a job and by
    the model thread between sampler steps, so abandoned or late work stops early."""

    def __init__(self, timeout_s: float | None = None):
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._gone = threading.Event()

    def caller_gone(self) -> None:
        self._gone.set()

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def stopped(self) -> bool:
        return self._gone.is_set() or (self.deadline is not None and time.monotonic() >= self.deadline)

    def check(self) -> None:
        """Raise CANCELLED or DEADLINE_EXCEEDED when the work should stop."""
        if self._gone.is_set():
            raise EdenError("the caller went away; the work was dropped", code=ErrorCode.CANCELLED)
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise EdenError("the request's deadline passed before its answer was ready",
                            code=ErrorCode.DEADLINE_EXCEEDED)


@dataclass(frozen=True)
class OperationInput:
    """One request as every transport delivers it."""

    content_type: str  # the body's media type, lower case, no parameters
    body: bytes | bytearray | memoryview = b""  # the raw body (a binary kind, or JSON / multipart not parsed yet)
    document: Mapping[str, Any] | None = None  # a JSON request already parsed (WebSocket text messages)
    options: Mapping[str, Any] = field(default_factory=dict)  # flat options: query parameters or message fields
    params: Mapping[str, Any] = field(default_factory=dict)  # what names the resource: path or message fields
    answer: str = JSON  # the media type to answer in, negotiated by the transport
    request_id: str = ""
    content_type_header: str = ""  # the whole Content-Type (a multipart body's boundary)
    cancellation: Cancellation = field(default_factory=Cancellation)
    received: float = field(default_factory=time.perf_counter)  # when it was handed to the operation (its clock)
    client: str = "anonymous"  # the client it came from (servers.auth): sessions are per client


@dataclass
class Reply:
    """An answer: JSON `data` fields and `metadata`, or a binary `body` of `media_type`."""

    data: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    body: bytes | memoryview | None = None
    media_type: str = JSON


class Operation(Protocol[J, R]):
    inputs: tuple[str, ...]  # media types it reads
    binary_inputs: tuple[str, ...]  # of those, the binary ones (the first: a binary message's default)
    answers: tuple[str, ...]  # binary media types it answers in (the first: a binary request's default)
    errors: tuple[ErrorCode, ...]  # the codes its steps may refuse a request with (the transports add their own)

    def decode(self, inp: OperationInput, model: Eden) -> J:
        """Parse and validate everything of the request (thread pool); no model compute here."""

    async def prepare(self, job: J, model: Eden) -> Any:
        """Async work between decoding and the model (sessions, other servers): the job for `predict`, or a
        Reply that ends the request without the model."""

    def predict(self, model: Eden, jobs: Sequence[J]) -> list[R]:
        """The model work for a batch of jobs, on the model thread (a batch of one unless batching is on)."""

    def batch_key(self, job: J) -> Hashable | None:
        """Jobs with equal keys may share a model call; None: this job is never batched."""

    def encode(self, result: R, job: J) -> Reply:
        """The answer for one job (thread pool)."""


def check_content_type(operation: Operation[Any, Any], content_type: str) -> None:
    """UNSUPPORTED_MEDIA_TYPE unless the operation reads `content_type`."""
    if content_type not in operation.inputs:
        raise EdenError(f"unsupported content type {content_type or '(none)'!r}; send one of "
                        f"{', '.join(operation.inputs)}", code=ErrorCode.UNSUPPORTED_MEDIA_TYPE)


async def run_operation(operation: Operation[Any, Any], inp: OperationInput, runtime: ModelRuntime,
                        render: Callable[[Reply], T], steps: dict[str, float], batcher: str | None = None) -> T:
    """decode -> prepare -> predict -> encode inside one admission place and the request's deadline; `render`
    turns the reply into what the transport sends, on the thread pool with the encoding. `steps` receives the
    seconds of each step (admission_wait, decode, prepare, model, encode) it got to; model calls of operations
    naming the same `batcher` may share a batch."""
    cancel = inp.cancellation
    clock, step = inp.received, "admission_wait"
    span = tracer().start_span(step, start_time=time.time_ns() - int((time.perf_counter() - clock) * 1e9))

    def lap(next_step: str) -> None:  # the step running ends, the next begins (each a span of the request's)
        nonlocal clock, step, span
        now = time.perf_counter()
        steps[step], clock, step = now - clock, now, next_step
        span.end()
        if next_step:
            span = tracer().start_span(next_step)

    try:
        async with asyncio.timeout(cancel.remaining()), runtime.admission():
            lap("decode")
            cancel.check()
            model = runtime.require_model()
            job = await run_in_threadpool(operation.decode, inp, model)
            lap("prepare")
            prepared = await operation.prepare(job, model)
            if isinstance(prepared, Reply):
                lap("encode")
                return await run_in_threadpool(render, prepared)
            lap("model")
            cancel.check()
            result = await runtime.predict(operation, prepared, cancel, batcher)
            lap("encode")
            return await run_in_threadpool(lambda: render(operation.encode(result, prepared)))
    except TimeoutError:
        raise EdenError("the request's deadline passed before its answer was ready",
                        code=ErrorCode.DEADLINE_EXCEEDED) from None
    finally:
        lap("")  # the step it ended in, done or failed

"""The policy layer over any transport (after httpx's Client over its transports): one request id per request,
kept by its retries; which failures are retried and for how long (`RetryPolicy`: full jitter, Retry-After, the
outage budget); and request hooks (tracing, metering). `Client` serves blocking callers, `AsyncClient` asyncio
ones; they share every decision (`Attempts`) and differ only in how they wait.

Retried: a `TransportError` that can be (a refused or dropped connection, a timeout), 503 (OVERLOADED, NOT_READY)
and 504 (DEADLINE_EXCEEDED) answers, and a 502 that reports a transient failure further on (a proxy's 502, or
the edge's UPSTREAM_ERROR when the cloud was unreachable or busy). Every other error, 4xx above all (401
UNAUTHORIZED, 409 IDEMPOTENCY_CONFLICT, 409 SESSION_NOT_FOUND, which the flows handle), is final.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from edensplit.client.requests import Answer, Call
from edensplit.client.retry import RetryBudget
from edensplit.client.transport import AsyncTransport, ClientConfig, ServerError, Transport, TransportError
from edensplit.errors import EdenError, ErrorCode
from edensplit.tracing import client_span

log = logging.getLogger("edensplit.client")
RETRY_CODES = frozenset({ErrorCode.OVERLOADED, ErrorCode.NOT_READY, ErrorCode.DEADLINE_EXCEEDED})
# An UPSTREAM_ERROR (502) is worth retrying when what failed further on was itself transient.
TRANSIENT_UPSTREAM = RETRY_CODES | {ErrorCode.UPSTREAM_ERROR}


def should_retry(error: ServerError) -> bool:
    """Whether a server's error answer is transient: any 503 or 504 (a WebSocket error's status is its code's),
    or a 502 whose cause further on was (a proxy's bare 502, or the edge's cloud unreachable or busy)."""
    if error.status in (503, 504):
        return True
    if error.status != 502:
        return False
    if error.code in RETRY_CODES:
        return True
    cause = error.details.get("cloud_code")
    return error.code == ErrorCode.UPSTREAM_ERROR and (cause is None or cause in TRANSIENT_UPSTREAM)


@dataclass
class Sent:
    """One request as the hooks see it: the call, its id, when it started, and its answer once there is one."""

    call: Call
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    answer: Answer | None = None


class Hook(Protocol):
    """Wraps each request (all its attempts): `around(sent)` is entered before the first attempt and left after
    the last, with `sent.answer` set if it succeeded."""

    def around(self, sent: Sent) -> contextlib.AbstractContextManager[Any]: ...


class Tracing:
    """A client span per request, current while it is built and sent (its traceparent goes along)."""

    def around(self, sent: Sent) -> contextlib.AbstractContextManager[Any]:
        return client_span(sent.call, sent.request_id)


class Attempts:
    """One request's attempts: after each failure, how long to wait before the next, or the final error."""

    def __init__(self, config: ClientConfig, path: str):
        self.config, self.path = config, path
        self.budget: RetryBudget = config.retry.budget()

    def after(self, exc: Exception) -> float:
        """The seconds to wait after `exc`, or raise the final error (not transient, or the budget spent)."""
        if isinstance(exc, TransportError):
            delay = self.budget.next_delay() if exc.retryable else None
            if delay is None:
                if not exc.retryable:
                    raise exc
                raise EdenError(f"{exc.what}: gave up after {self.budget.summary()}: {exc.cause}",
                                code=ErrorCode.UPSTREAM_ERROR) from None
            what = exc.cause
        elif isinstance(exc, ServerError):
            delay = self.budget.next_delay(exc.retry_after) if should_retry(exc) else None
            if delay is None:
                raise exc
            what = f"HTTP {exc.status} {exc.code}"
        else:
            raise exc
        log.log(logging.WARNING if self.budget.retries == 1 else logging.INFO,
                "%s %s: %s; retry %d in %.2f s (gives up %.0f s after the first failure)", self.config.name,
                self.path, what, self.budget.retries, delay, self.config.retry.retry_for)
        return delay


class _Policy:
    """What Client and AsyncClient share: the config, the hooks, and a request's id and hooks entered."""

    def __init__(self, transport: Any, hooks: Sequence[Hook] | None = None):
        self.transport = transport
        self.hooks: list[Hook] = list(hooks) if hooks is not None else [Tracing()]

    @property
    def config(self) -> ClientConfig:
        return self.transport.config

    @contextlib.contextmanager
    def request(self, call: Call) -> Iterator[Sent]:
        """A request's id (its idempotency key: made once, kept by every retry) and its hooks, around it."""
        sent = Sent(call, call.request_id or uuid.uuid4().hex)
        with contextlib.ExitStack() as hooks:
            for hook in self.hooks:
                hooks.enter_context(hook.around(sent))
            try:
                yield sent
            finally:
                self.transport.done(sent.request_id)


class Client(_Policy):
    """A transport with the retry policy and hooks, for blocking callers; `send` is thread-safe."""

    transport: Transport

    def __init__(self, transport: Transport, hooks: Sequence[Hook] | None = None):
        super().__init__(transport, hooks)
        self.closed = False

    def send(self, call: Call) -> Answer:
        with self.request(call) as sent:
            attempts = Attempts(self.config, call.path)
            while True:
                try:
                    sent.answer = self.transport.send(call, sent.request_id)
                    return sent.answer
                except (TransportError, ServerError) as exc:
                    delay = attempts.after(exc)
                if self.closed:
                    raise TransportError(f"the connection to the {self.config.name}", "closed", retryable=False)
                time.sleep(delay)

    def health(self) -> dict[str, Any]:
        """The server's health (GET /health; over WebSocket, an application-level ping), retried alike."""
        attempts = Attempts(self.config, "/health")
        while True:
            try:
                return self.transport.health()
            except (TransportError, ServerError) as exc:
                time.sleep(attempts.after(exc))

    def close(self) -> None:
        """Close the transport; requests in flight fail, without retries."""
        self.closed = True
        self.transport.close()


class AsyncClient(_Policy):
    """The same for asyncio code (the edge's flow B): back-off waits with asyncio.sleep."""

    transport: AsyncTransport

    async def send(self, call: Call) -> Answer:
        with self.request(call) as sent:
            attempts = Attempts(self.config, call.path)
            while True:
                try:
                    sent.answer = await self.transport.send(call, sent.request_id)
                    return sent.answer
                except (TransportError, ServerError) as exc:
                    delay = attempts.after(exc)
                await asyncio.sleep(delay)

    async def health(self) -> dict[str, Any]:
        attempts = Attempts(self.config, "/health")
        while True:
            try:
                return await self.transport.health()
            except (TransportError, ServerError) as exc:
                await asyncio.sleep(attempts.after(exc))

    async def aclose(self) -> None:
        await self.transport.aclose()

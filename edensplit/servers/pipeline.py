"""The one request pipeline of both servers: what every request goes through, whatever carried it.

HTTP requests and WebSocket messages alike get, here and only here: a request id, the bearer-key check, the
byte budget for what is held before admission, idempotent replays, a deadline, admission to the model and
the operation's steps (`contract.run_operation`), one access-log line, the request metrics and a server
span. The transports (`servers.http`, `servers.ws`) only frame: they turn their bytes into an
`OperationInput`, render a `Reply`, and tell the pipeline what they read and sent. A third transport would be
one more framer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from opentelemetry.trace import SpanKind
from starlette.concurrency import run_in_threadpool

from edensplit.errors import EdenError, ErrorCode
from edensplit.servers.auth import ANONYMOUS, Access
from edensplit.servers.budget import BODIES, ByteBudget
from edensplit.servers.contract import (
    JSON,
    Cancellation,
    Operation,
    OperationInput,
    Reply,
    check_content_type,
    run_operation,
)
from edensplit.servers.envelope import log_refusal
from edensplit.servers.idempotency import IdempotencyCache
from edensplit.servers.ids import check_id, is_id
from edensplit.servers.metrics import Metrics
from edensplit.servers.runtime import ModelRuntime
from edensplit.servers.shm import SHM_ERRORS, SharedMemory
from edensplit.settings import ServerSettings
from edensplit.tracing import continued, tracer
from edensplit.wire.shm import SHM_MEDIA_TYPE

log = logging.getLogger("edensplit.server")
access_log = logging.getLogger("edensplit.access")
MAX_TIMEOUT_S = 24 * 3600.0
UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")
# What the pipeline answers around an operation's own steps: a bad timeout, an id reused for another request, no
# model place or no model (yet), the deadline passed, a fault (CANCELLED is never sent: the caller is gone), and
# shared memory's refusals (a handle where it is off, or one that names no segment of ours to take).
PIPELINE_ERRORS = (ErrorCode.INVALID_PARAMETER, ErrorCode.IDEMPOTENCY_CONFLICT, ErrorCode.OVERLOADED,
                   ErrorCode.NOT_READY, ErrorCode.DEADLINE_EXCEEDED, ErrorCode.INTERNAL_ERROR, *SHM_ERRORS)
# The pipeline's own steps of a request it answers, before the operation's (contract.STEPS): the body or message
# read whole (the transport's time, the byte budget held meanwhile) and the replay cache's digest and lookup.
PIPELINE_STEPS = ("read", "idempotency")


class Answer(Protocol):
    """What a transport renders a reply into: kept whole for replays, so it tells its size."""

    @property
    def nbytes(self) -> int: ...


A = TypeVar("A", bound=Answer)


@dataclass
class Exchange:
    """One request on its way through the pipeline: an HTTP request or a WebSocket message."""

    transport: str  # "http" or "ws"
    method: str  # the HTTP verb, or "WS"
    path: str  # the path it came on
    target: str  # what names it in the log line: the path (HTTP), the path and the message type (WS)
    request_id: str
    keyed: bool  # the caller named the id: it is the request's idempotency key
    given_id: Any = None  # the id the caller sent, valid or not
    client: str | None = None  # the client's version (X-Client-Version)
    client_name: str = ANONYMOUS  # who sent it: the client its key names (servers.auth)
    route: str = "unmatched"  # the route it matched: the metrics' label
    operation: str | None = None  # the operation's name (a WebSocket message's type)
    started: float = field(default_factory=time.perf_counter)
    bytes_in: int = 0
    bytes_out: int = 0
    status: int = 500
    code: str | None = None
    steps: dict[str, float] = field(default_factory=dict)
    read: float | None = None  # seconds the transport took to read the body or message whole (a step, once answered)
    replayed: bool = False  # answered from the idempotency cache
    single_use: bool = False  # its answer is a shared-memory handle, good once: never replayed, made anew
    abandoned: bool = False  # the caller went away before its body arrived

    @property
    def label(self) -> str:
        """The status as metrics and the text log name it: the HTTP status, or (WebSocket) success or the code."""
        if self.transport == "http":
            return str(self.status)
        return "success" if self.code is None else self.code


def request_timeout(value: Any, default: float | None, name: str) -> float | None:
    """A request's time budget in seconds: its own (a positive decimal number) up to the server's, else the
    server's (REQUEST_TIMEOUT_S: a cap, not only a default)."""
    if value is None or value == "":
        return default
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not (0 < seconds <= MAX_TIMEOUT_S) or isinstance(value, bool):
        raise EdenError(f"{name} must be a positive number of seconds (at most {MAX_TIMEOUT_S:.0f}), got {value!r}",
                        code=ErrorCode.INVALID_PARAMETER)
    return seconds if default is None else min(seconds, default)


def printable(text: str) -> str:
    """`text` with control characters escaped, for a text log line nobody can forge a line into."""
    return UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def host_name(host: str) -> str:
    """The name or address of a Host header, without its port (an IPv6 literal without its brackets)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def check_host(host_header: str, allowed_hosts: set[str]) -> None:
    """What a server without a key answers: requests to an IP address, localhost or an ALLOWED_HOSTS name (400
    INVALID_HOST otherwise: DNS rebinding needs a name)."""
    host = host_name(host_header)
    if not (is_address(host) or host == "localhost" or host in allowed_hosts):
        raise EdenError(f"this server answers requests to its IP address or localhost (or ALLOWED_HOSTS), "
                        f"not to {printable(host)[:80]!r}", code=ErrorCode.INVALID_HOST)


def listed(setting: str) -> set[str]:
    """A comma-separated setting (ALLOWED_HOSTS, ALLOWED_ORIGINS) as a set, without trailing slashes."""
    return {item.strip().rstrip("/") for item in setting.split(",") if item.strip()}


def answer_type(accept: str, binary_types: tuple[str, ...], binary_request: bool) -> str:
    """JSON, or one of `binary_types`, from the Accept header; a binary request defaults to binary. An Accept
    that names only types this endpoint cannot answer in is NOT_ACCEPTABLE."""
    accepted = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    accepted = [a for a in accepted if a]
    for candidate in accepted:
        if candidate in binary_types:
            return candidate
        if candidate == JSON:
            return JSON
    if SHM_MEDIA_TYPE in accepted:
        raise EdenError("this server does not answer with shared-memory handles (start it with ALLOW_SHM=1 on the "
                        "same host as its callers), or accept the bytes", code=ErrorCode.SHM_DISABLED)
    if accepted and not any(a in ("*/*", "application/*") for a in accepted):
        raise EdenError(f"cannot answer in {', '.join(accepted)}; use {JSON} or {', '.join(binary_types)}",
                        code=ErrorCode.NOT_ACCEPTABLE)
    return binary_types[0] if binary_request else JSON


class Pipeline:
    """A server's request pipeline: its key, budget, replay cache, runtime, metrics and component name."""

    def __init__(self, component: str, settings: ServerSettings, runtime: ModelRuntime, metrics: Metrics):
        self.component, self.settings, self.runtime, self.metrics = component, settings, runtime, metrics
        self.budget = ByteBudget(int(settings.body_memory_mb * 2**20))
        self.idempotency = IdempotencyCache(int(settings.idempotency_cache_mb * 2**20))
        self.access = Access(settings.edensplit_api_key, settings.edensplit_api_keys_file)
        self.allowed_hosts = {host.lower() for host in listed(settings.allowed_hosts)}
        self.allowed_origins = listed(settings.allowed_origins)
        self.shm = SharedMemory(settings.allow_shm, self.budget, metrics, settings.shm_ttl_s, settings.shm_max_segments,
                                int(settings.max_request_mb * 2**20))

    # -- a request begins ----------------------------------------------------------------------------

    def begin(self, transport: str, method: str, path: str, *, request_id: Any = None, target: str | None = None,
              client: str | None = None) -> Exchange:
        """A request arrives: the caller's id (its idempotency key, once `admit` has checked it) or a new one."""
        keyed = is_id(request_id)
        exchange = Exchange(transport, method, path, target or path, request_id if keyed else uuid.uuid4().hex,
                            keyed, request_id, client, route=path if transport == "ws" else "unmatched")
        if transport == "ws":  # until an answer or an error is sent: the caller went away
            exchange.status, exchange.code = ErrorCode.CANCELLED.status, str(ErrorCode.CANCELLED)
        return exchange

    def admit(self, exchange: Exchange, headers: Mapping[str, str], id_field: str | None = None) -> None:
        """Who may ask, before anything is read: a server without a key answers only requests addressed to it by
        an IP address, localhost or an ALLOWED_HOSTS name (400 INVALID_HOST: DNS rebinding needs a name); a
        WebSocket handshake from a browser only from an ALLOWED_ORIGINS origin (403 FORBIDDEN_ORIGIN); the key
        names the client (401 UNAUTHORIZED without a known one); an id the caller gave is checked (`id_field`
        names it)."""
        if not self.access.enabled:
            check_host(headers.get("host", ""), self.allowed_hosts)
        origin = headers.get("origin")
        if exchange.transport == "ws" and origin is not None and origin.rstrip("/") not in self.allowed_origins:
            raise EdenError(f"WebSocket connections from the web page at {printable(origin)[:80]!r} are refused "
                            "(ALLOWED_ORIGINS lists the origins allowed)", code=ErrorCode.FORBIDDEN_ORIGIN)
        exchange.client_name = self.access.client(exchange.path, headers.get("authorization"))
        if id_field is not None and exchange.given_id is not None:
            check_id(exchange.given_id, id_field)

    def check_content_type(self, operation: Operation[Any, Any], content_type: str) -> None:
        """UNSUPPORTED_MEDIA_TYPE unless the operation reads `content_type`; a shared-memory handle only where
        shared memory is on (SHM_DISABLED)."""
        if content_type == SHM_MEDIA_TYPE:
            self.shm.check_enabled()
        else:
            check_content_type(operation, content_type)

    def negotiate(self, exchange: Exchange, operation: Operation[Any, Any], content_type: str,
                  accept: str) -> tuple[Operation[Any, Any], str]:
        """The answer type from `accept` (HTTP's Accept, a WebSocket binary message's `accept`), and the operation
        as this request needs it: through shared memory where its body is a handle or it asks for one (then the
        operation's own first binary answer goes into a segment; such an answer is never replayed)."""
        binary_request = content_type in operation.binary_inputs or content_type == SHM_MEDIA_TYPE
        answer = answer_type(accept, operation.answers + self.shm.answers, binary_request)
        handle_out = answer == SHM_MEDIA_TYPE
        exchange.single_use = handle_out
        adapted = self.shm.adapt(operation, content_type == SHM_MEDIA_TYPE, handle_out)
        return adapted, operation.answers[0] if handle_out else answer

    def hold(self, nbytes: int, what: str = BODIES) -> None:
        """Count bytes held for a request not yet admitted (a body, a message being reassembled); OVERLOADED
        past the server's budget. Give them back with `release`."""
        self.budget.reserve(nbytes, what)

    def release(self, nbytes: int) -> None:
        self.budget.release(nbytes)

    def deadline(self, value: Any, name: str) -> Cancellation:
        """The request's deadline: its own timeout (`name` says where it came from) or the server's default."""
        return Cancellation(request_timeout(value, self.settings.request_timeout_s, name))

    @contextlib.contextmanager
    def span(self, exchange: Exchange, carrier: Mapping[str, Any]) -> Iterator[None]:
        """The request's server span, continuing the caller's trace (its traceparent) if it sent one."""
        what = exchange.path if exchange.transport == "http" else exchange.operation or "message"
        with continued(carrier), tracer().start_as_current_span(
                f"{self.component} {exchange.method} {what}", kind=SpanKind.SERVER) as span:
            try:
                yield
            finally:
                span.set_attributes({
                    "edensplit.component": self.component, "edensplit.transport": exchange.transport,
                    "edensplit.request_id": exchange.request_id, "edensplit.operation": exchange.operation or "",
                    "edensplit.client_name": exchange.client_name,
                    "http.request.method": exchange.method, "http.route": exchange.route,
                    "http.response.status_code": exchange.status})
                if exchange.code:
                    span.set_attribute("edensplit.error_code", exchange.code)

    # -- the operation ------------------------------------------------------------------------------

    async def answer(self, exchange: Exchange, operation: Operation[Any, Any], inp: OperationInput,
                     render: Callable[[Reply], A], digest: Callable[[], str], batcher: str | None = None) -> A:
        """The request's answer: run through `operation` (its deadline, an admission place, the steps), or, for
        a request the server answered already (same id, same content: `digest`), the answer it got then.
        IDEMPOTENCY_CONFLICT when the id belongs to another request; errors are never kept. An answer that is a
        shared-memory handle is never kept (its segment is good for one use; a retry gets a new one). The steps
        recorded (PIPELINE_STEPS, then the operation's) are the transport's read, then the replay cache's digest
        and lookup (none for a request without an id, or one answered by a handle: no time), then the
        operation's from its admission on."""
        started = time.perf_counter()
        if exchange.read is not None:
            exchange.steps["read"] = exchange.read
        keyed = exchange.keyed and not exchange.single_use
        key = f"{exchange.client_name}/{exchange.transport}/{exchange.request_id}"  # two clients' ids never meet
        try:
            # the digest (SHA-256 of the whole body: 18 ms for 30 MB here) is computed on a worker thread while
            # the request goes on; only a key seen before waits for it, to compare
            stored = await self.idempotency.begin(key, asyncio.ensure_future(run_in_threadpool(digest))) \
                if keyed else None
        finally:
            exchange.steps["idempotency"] = time.perf_counter() - started
        if stored is not None:
            exchange.replayed = True
            return stored.answer
        inp = dataclasses.replace(inp, received=time.perf_counter())  # admission_wait: from here
        if not keyed:
            return await run_operation(operation, inp, self.runtime, render, exchange.steps, batcher)
        answer = None
        try:
            answer = await run_operation(operation, inp, self.runtime, render, exchange.steps, batcher)
            return answer
        finally:
            self.idempotency.finish(key, answer, answer.nbytes if answer is not None else 0)

    # -- a request ends -----------------------------------------------------------------------------

    def succeeded(self, exchange: Exchange, status: int = 200) -> None:
        exchange.status, exchange.code = status, None

    def failed(self, exchange: Exchange, exc: EdenError) -> None:
        """An error answer: its code and status noted; logged when it is a fault (with its traceback) or
        backpressure (below WARNING)."""
        exchange.status, exchange.code = exc.code.status, str(exc.code)
        log_refusal(exchange.request_id, exc)

    def fault(self, exchange: Exchange, exc: Exception) -> EdenError:
        """An unexpected exception: logged with its traceback; the INTERNAL_ERROR to answer (no traceback)."""
        log.exception("%s unhandled error on %s", exchange.request_id, exchange.target, exc_info=exc)
        exchange.status, exchange.code = ErrorCode.INTERNAL_ERROR.status, str(ErrorCode.INTERNAL_ERROR)
        return EdenError(f"internal error ({type(exc).__name__}); see the server log for request "
                         f"{exchange.request_id}", code=ErrorCode.INTERNAL_ERROR)

    def wire_bytes(self, route: str, received: int = 0, sent: int = 0) -> None:
        """Bytes on the wire of `route`, as the transport read and wrote them."""
        if received:
            self.metrics.bytes_in.labels(route).inc(received)
        if sent:
            self.metrics.bytes_out.labels(route).inc(sent)

    def finish(self, exchange: Exchange) -> None:
        """One access-log line and the request's metrics."""
        elapsed = time.perf_counter() - exchange.started
        what = "abandoned upload" if exchange.abandoned else exchange.request_id
        access_log.info("%s %s %s %s in=%d out=%d %.1fms client=%s client_name=%s", what, exchange.method,
                        printable(exchange.target), exchange.label, exchange.bytes_in, exchange.bytes_out,
                        elapsed * 1000, printable(exchange.client or "-"), exchange.client_name,
                        extra={"request_id": exchange.request_id, "transport": exchange.transport,
                               "method": exchange.method, "route": exchange.route, "path": exchange.path,
                               "type": exchange.operation, "status": exchange.status, "code": exchange.code,
                               "bytes_in": exchange.bytes_in, "bytes_out": exchange.bytes_out,
                               "ms": round(elapsed * 1000, 1), "client": exchange.client,
                               "client_name": exchange.client_name})
        metrics, route = self.metrics, exchange.route
        metrics.requests.labels(route, exchange.method, exchange.label, exchange.client_name).inc()
        if exchange.code is not None or exchange.status >= 400:
            metrics.errors.labels(route, exchange.code or f"HTTP_{exchange.status}").inc()
        metrics.latency.labels(route).observe(elapsed)
        metrics.observe_steps(route, exchange.steps)

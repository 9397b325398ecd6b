"""What every transport shares: the interface the service clients send `Call`s through, the retry policy
(which failures are retried, back-off with full jitter, `Retry-After`, the outage budget), the access
settings (bearer key, CA bundle), and the decoding of the servers' error envelope into a `ServerError`.

Retries. A request is retried on a connection failure or a timeout, on 503 (OVERLOADED, NOT_READY) and
504 (DEADLINE_EXCEEDED), and on a 502 that reports a transient failure further on (a proxy's 502, or the
edge's UPSTREAM_ERROR when the cloud was unreachable or busy); every other error, 4xx above all
(401 UNAUTHORIZED, 409 IDEMPOTENCY_CONFLICT, 409 SESSION_NOT_FOUND, which the flows handle), is final.
The wait before retry n (0-based) is uniform in [0, min(backoff_s * 2**n, max_backoff_s)] ("full
jitter": clients that failed together do not come back together), and never shorter than the server's
`Retry-After`. A request gives up once `retry_for` seconds have passed since its first failure (the
outage it rides out), or after `retries` retries, whichever comes first; the default `retries` is high
enough that the time budget ends first. Each request keeps its request id (its idempotency key) for all
its retries.
"""

from __future__ import annotations

import email.utils
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edensplit.client.requests import Answer, Call
from edensplit.errors import EdenError, ErrorCode
from edensplit.version import __version__

CLIENT_VERSION = f"edensplit/{__version__}"
DEFAULT_RETRY_FOR = 60.0  # seconds of outage a request rides out (EDENSPLIT_RETRY_FOR, --retry_for)
# A cap on retries that does not cut the 60 s short: 100 waits average ~240 s even when every attempt fails at
# once (full jitter under a 5 s cap averages 2.5 s a wait), so the time budget is what ends a long outage.
DEFAULT_RETRIES = 100
RETRY_STATUSES = frozenset({502, 503, 504})
RETRY_CODES = frozenset({ErrorCode.OVERLOADED, ErrorCode.NOT_READY, ErrorCode.DEADLINE_EXCEEDED})
# An UPSTREAM_ERROR (502) is worth retrying when what failed further on was itself transient.
TRANSIENT_UPSTREAM = RETRY_CODES | {ErrorCode.UPSTREAM_ERROR}


class Transport(Protocol):
    """Moves a `Call` to a server and its `Answer` back (blocking); raises ServerError / EdenError."""

    def send(self, call: Call) -> Answer: ...
    def health(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class AsyncTransport(Protocol):
    """The same for asyncio code (the edge calling the cloud in flow B)."""

    async def send(self, call: Call) -> Answer: ...
    async def health(self) -> dict[str, Any]: ...
    async def aclose(self) -> None: ...


class ServerError(EdenError):
    """A server answered with an error envelope (or an unreadable error)."""

    def __init__(self, message: str, *, code: ErrorCode, status: int, server: str,
                 details: dict[str, Any] | None = None, retry_after: float | None = None):
        super().__init__(f"{server}: {message}", code=code, details=details)
        self.status, self.server, self.retry_after = status, server, retry_after


def server_error(error: Any, *, server: str, status: int | None = None, fallback: str = "error",
                 retry_after: float | None = None) -> ServerError:
    """The `error` object of an envelope (`{"code", "message", "details"}`) -> ServerError; an unreadable one
    is UPSTREAM_ERROR with `fallback` as its message. `retry_after`: the HTTP header's seconds, else the
    envelope's `details.retry_after_s` (how WebSocket answers say it)."""
    try:
        code, message = ErrorCode(error["code"]), str(error["message"])
        details = error.get("details") if isinstance(error.get("details"), dict) else None
    except (KeyError, TypeError, ValueError):
        code, message, details = ErrorCode.UPSTREAM_ERROR, fallback, None
    if retry_after is None and details is not None:
        retry_after = parse_retry_after(details.get("retry_after_s"))
    return ServerError(message, code=code, status=status or code.status, server=server, details=details,
                       retry_after=retry_after)


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


def parse_retry_after(value: Any, now: Callable[[], float] = time.time) -> float | None:
    """`Retry-After` as seconds to wait: a number of seconds, or an HTTP date; None if absent or unreadable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return max(float(value), 0.0)
    text = str(value).strip()
    try:
        return max(float(text), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now(), 0.0)


@dataclass(frozen=True)
class RetryPolicy:
    """How a request is retried: at most `retries` retries within `retry_for` seconds of its first failure,
    waiting a full-jitter exponential back-off (never less than a server's Retry-After) in between."""

    retries: int = DEFAULT_RETRIES
    retry_for: float = DEFAULT_RETRY_FOR
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def cap(self, attempt: int) -> float:
        """The longest wait before retry number `attempt` + 1 (0-based): exponential, capped."""
        return min(self.backoff_s * 2 ** min(attempt, 64), self.max_backoff_s)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry `attempt` + 1: uniform in [0, cap] (full jitter), added to a server's
        Retry-After so that clients told the same time do not all come back at once."""
        jitter = self.rng.uniform(0.0, self.cap(attempt))
        return jitter if retry_after is None else retry_after + jitter

    def budget(self, clock: Callable[[], float] = time.monotonic) -> RetryBudget:
        """A fresh budget for one logical request."""
        return RetryBudget(self, clock)


class RetryBudget:
    """One request's retries: how many were made, and the outage budget counted from its first failure."""

    def __init__(self, policy: RetryPolicy, clock: Callable[[], float] = time.monotonic):
        self.policy, self.clock = policy, clock
        self.retries = 0
        self.first_failure: float | None = None

    @property
    def attempts(self) -> int:
        """Attempts made so far (the first one and every retry)."""
        return self.retries + 1

    @property
    def elapsed(self) -> float:
        """Seconds since the first failure (0 before any)."""
        return 0.0 if self.first_failure is None else self.clock() - self.first_failure

    def next_delay(self, retry_after: float | None = None) -> float | None:
        """After a failed attempt: seconds to wait before the next one, or None to give up (the retries are
        spent, the time budget is spent, or the server's Retry-After lies beyond it). A jittered wait is cut
        to what is left of the budget, so the last attempt comes at its end, not after it."""
        now = self.clock()
        if self.first_failure is None:
            self.first_failure = now
        remaining = self.first_failure + self.policy.retry_for - now
        if self.retries >= self.policy.retries or remaining <= 0:
            return None
        if retry_after is not None and retry_after > remaining:
            return None
        delay = min(self.policy.delay(self.retries, retry_after), remaining)
        self.retries += 1
        return delay

    def summary(self) -> str:
        """What was tried, for a final error message: attempts and seconds."""
        return f"{self.attempts} attempts over {self.elapsed:.1f} s"


def bearer_headers(api_key: str | None) -> dict[str, str]:
    """`Authorization: Bearer <key>` when a key is given (the servers' EDENSPLIT_API_KEY), else nothing."""
    if api_key is None or not str(api_key).strip():
        return {}
    return {"Authorization": f"Bearer {str(api_key).strip()}"}


def tls_context(ca_cert: str | Path | None) -> ssl.SSLContext | None:
    """An SSLContext that trusts the CA bundle `ca_cert` (PEM) for verifying the servers' certificates, or
    None for the system's defaults. INVALID_PARAMETER if the bundle cannot be read."""
    if ca_cert is None or str(ca_cert) == "":
        return None
    path = Path(ca_cert)
    if not path.is_file():
        raise EdenError(f"CA bundle not found: {path} (--ca_cert / EDENSPLIT_CA_CERT)",
                        code=ErrorCode.INVALID_PARAMETER)
    try:
        return ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise EdenError(f"cannot read the CA bundle {path}: {exc}", code=ErrorCode.INVALID_PARAMETER) from None


def tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a connection failure (a certificate that does not verify, a TLS/plain mismatch),
    if there is one: such a failure is final, retrying cannot fix it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None

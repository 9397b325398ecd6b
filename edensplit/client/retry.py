"""How a request is retried: a full-jitter exponential back-off, a server's `Retry-After` as its floor, and an
outage budget (`retry_for` seconds from the request's first failure) with a cap on the number of retries.

The wait before retry n (0-based) is uniform in [0, min(backoff_s * 2**n, max_backoff_s)] ("full jitter":
clients that failed together do not come back together), and never shorter than the server's `Retry-After`.
A request gives up once `retry_for` seconds have passed since its first failure, or after `retries` retries,
whichever comes first; the default `retries` is high enough that the time budget ends first. Which failures
are worth retrying is the policy layer's (`edensplit.client.policy`).
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_RETRY_FOR = 60.0  # seconds of outage a request rides out (EDENSPLIT_RETRY_FOR, --retry_for)
# A cap on retries that does not cut the 60 s short: 100 waits average ~240 s even when every attempt fails at
# once (full jitter under a 5 s cap averages 2.5 s a wait), so the time budget is what ends a long outage.
DEFAULT_RETRIES = 100


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

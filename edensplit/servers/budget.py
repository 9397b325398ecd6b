"""A byte budget shared by everything a server holds for requests not yet admitted: HTTP bodies being read
or decompressed and WebSocket messages being reassembled. Past it, new bytes are refused with 503
OVERLOADED instead of growing the process without bound."""

from __future__ import annotations

import threading

from edensplit.errors import EdenError, ErrorCode

BODIES = "request bodies being read"  # what the budget holds, unless a caller says otherwise


class ByteBudget:
    """Reserve bytes before holding them, release them when done; `reserve` never blocks. Thread-safe: bodies
    inflate on the thread pool."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    def reserve(self, n: int, what: str = BODIES) -> None:
        with self._lock:
            if self.used + n > self.limit:
                raise EdenError(f"the server holds {self.used} bytes of {what} (limit {self.limit}); "
                                "retry shortly", code=ErrorCode.OVERLOADED, details={"retry_after_s": 1})
            self.used += n

    def release(self, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - n)

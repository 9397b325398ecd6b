"""What every transport shares: the interface the service clients send `Call`s through, the retry
policy, and the decoding of the servers' error envelope into a `ServerError`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from edensplit import __version__
from edensplit.client.requests import Answer, Call
from edensplit.errors import EdenError, ErrorCode

CLIENT_VERSION = f"edensplit/{__version__}"


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
                 details: dict[str, Any] | None = None):
        super().__init__(f"{server}: {message}", code=code, details=details)
        self.status, self.server = status, server


def server_error(error: Any, *, server: str, status: int | None = None, fallback: str = "error") -> ServerError:
    """The `error` object of an envelope (`{"code", "message", "details"}`) -> ServerError; an unreadable one
    is UPSTREAM_ERROR with `fallback` as its message."""
    try:
        code, message = ErrorCode(error["code"]), str(error["message"])
        details = error.get("details") if isinstance(error.get("details"), dict) else None
    except (KeyError, TypeError, ValueError):
        code, message, details = ErrorCode.UPSTREAM_ERROR, fallback, None
    return ServerError(message, code=code, status=status or code.status, server=server, details=details)


@dataclass(frozen=True)
class RetryPolicy:
    """Retry connection errors, timeouts and 502/503/504 up to `retries` times, backing off exponentially."""

    retries: int = 3
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` + 1 (0-based)."""
        return min(self.backoff_s * 2**attempt, self.max_backoff_s)

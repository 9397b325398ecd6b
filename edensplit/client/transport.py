"""What the transports share: the one client config (timeout, retries, bearer key, CA bundle, the server's name),
the `Transport` protocols, and the two ways a request fails: a `TransportError` (no answer: the connection
failed, dropped or timed out) or a `ServerError` (the server answered with its error envelope).

A transport moves one attempt of a request and returns its `Answer` or raises one of those; whether and when
to try again is the policy layer's (`edensplit.client.policy`), the same for every transport and for sync and
async callers alike.
"""

from __future__ import annotations

import functools
import json
import ssl
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edensplit.client.requests import Answer, Call
from edensplit.client.retry import DEFAULT_RETRIES, DEFAULT_RETRY_FOR, RetryPolicy, parse_retry_after
from edensplit.errors import EdenError, ErrorCode
from edensplit.net import is_loopback
from edensplit.version import __version__

CLIENT_VERSION = f"edensplit/{__version__}"
CA_HINT = "a server certificate signed by another CA needs --ca_cert / EDENSPLIT_CA_CERT"


@dataclass
class ClientConfig:
    """How a client talks to one server: each attempt's `timeout`, the `retry` policy, the bearer `api_key`, the
    `ca_cert` bundle that verifies https/wss servers, and the server's `name` (for messages)."""

    timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    api_key: str | None = None
    ca_cert: str | Path | None = None
    name: str = "server"
    allow_insecure_key: bool = False  # send the key over http:// or ws:// to a host off this machine

    @classmethod
    def of(cls, *, timeout: float = 30.0, retries: int = DEFAULT_RETRIES, retry_for: float = DEFAULT_RETRY_FOR,
           retry_policy: RetryPolicy | None = None, api_key: str | None = None, ca_cert: str | Path | None = None,
           name: str = "server", allow_insecure_key: bool = False) -> ClientConfig:
        """From keywords: `retry_policy` replaces `retries`/`retry_for` (and sets the back-off)."""
        return cls(timeout, retry_policy or RetryPolicy(retries, retry_for), api_key, ca_cert, name,
                   allow_insecure_key)

    def check_url(self, url: str) -> None:
        """Refuse to send the key in clear text: a key for an http:// or ws:// URL off this machine is
        INVALID_PARAMETER unless `allow_insecure_key` (--allow_insecure_key, EDENSPLIT_ALLOW_INSECURE_KEY=1)."""
        if not bearer_headers(self.api_key) or self.allow_insecure_key:
            return
        parts = urllib.parse.urlsplit(url)
        if parts.scheme in ("http", "ws") and not is_loopback(parts.hostname or ""):
            raise EdenError(f"refusing to send the API key in clear text to the {self.name} at {url}: use https:// "
                            "(wss://), or --allow_insecure_key / EDENSPLIT_ALLOW_INSECURE_KEY=1 on a network you "
                            "trust", code=ErrorCode.INVALID_PARAMETER)

    def headers(self) -> dict[str, str]:
        """What every request carries: the client's version, and `Authorization: Bearer <key>` with a key."""
        return {"X-Client-Version": CLIENT_VERSION, **bearer_headers(self.api_key)}

    @functools.cached_property
    def tls(self) -> ssl.SSLContext | None:
        """An SSLContext trusting `ca_cert`, or None for the system's defaults (INVALID_PARAMETER if unreadable)."""
        return tls_context(self.ca_cert)


class TransportError(EdenError):
    """No answer came: the connection failed, dropped or timed out (`retryable`), or it cannot work (a TLS
    failure, a closed transport). `what` names the failure ("cannot reach the cloud server at URL"), `cause`
    says what happened; the policy's final message puts what was tried between them."""

    code = ErrorCode.UPSTREAM_ERROR

    def __init__(self, what: str, cause: str, *, retryable: bool = True):
        super().__init__(f"{what}: {cause}")
        self.what, self.cause, self.retryable = what, cause, retryable


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


def http_error(status: int, body: bytes, retry_after: str | None, server: str, fallback: str) -> ServerError:
    """An HTTP error answer (a response, or a refused WebSocket handshake) -> ServerError: the envelope's code, or
    UPSTREAM_ERROR with `fallback` and the body's start when it is not one; `Retry-After` honoured."""
    try:
        error = json.loads(body or b"")["error"]
    except (ValueError, KeyError, TypeError):
        error = None
    text = (body or b"").decode(errors="replace")[:200]
    return server_error(error, server=server, status=status, fallback=f"{fallback}HTTP {status}: {text}",
                        retry_after=parse_retry_after(retry_after))


class Transport(Protocol):
    """Moves one attempt of a `Call` under the request id it is given (blocking): its Answer, or TransportError /
    ServerError. `done(request_id)` says the request is over (answered, or given up): nothing of it is kept."""

    config: ClientConfig
    url: str

    def send(self, call: Call, request_id: str) -> Answer: ...
    def done(self, request_id: str) -> None: ...
    def health(self) -> dict[str, Any]: ...
    def delete(self, path: str) -> None: ...
    def close(self) -> None: ...


class AsyncTransport(Protocol):
    """The same for asyncio code (the edge calling the cloud in flow B)."""

    config: ClientConfig
    url: str

    async def send(self, call: Call, request_id: str) -> Answer: ...
    def done(self, request_id: str) -> None: ...
    async def health(self) -> dict[str, Any]: ...
    async def aclose(self) -> None: ...


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


def connection_failure(what: str, exc: BaseException) -> TransportError:
    """A failed connection attempt as a TransportError: retryable, unless TLS failed (a certificate that does not
    verify, a TLS/plain mismatch: retrying cannot fix it)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return TransportError(what, f"TLS failure: {current} ({CA_HINT})", retryable=False)
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return TransportError(what, f"{type(exc).__name__}: {exc}")

"""HTTP transports on httpx: they move a `Call`'s bytes and nothing else (no request building here).

`HttpTransport` (a sync httpx.Client) and `AsyncHttpTransport` (httpx.AsyncClient, for the edge calling
the cloud in flow B) share everything but the loop: connection reuse, timeouts, the retry policy of
`edensplit.client.transport` (connection errors, timeouts, 503/504 and transient 502s, full-jitter
back-off, Retry-After, the `retry_for` outage budget; one X-Request-ID per request, kept for its
retries), the bearer key and CA bundle, optional zstd bodies, and the decoding of the servers' JSON
envelope and error envelope into an `Answer` or a `ServerError`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from edensplit.client.requests import JSON, Answer, Call
from edensplit.client.transport import (
    CLIENT_VERSION,
    DEFAULT_RETRIES,
    DEFAULT_RETRY_FOR,
    RetryBudget,
    RetryPolicy,
    ServerError,
    bearer_headers,
    parse_retry_after,
    server_error,
    should_retry,
    tls_context,
    tls_failure,
)
from edensplit.errors import EdenError, ErrorCode
from edensplit.tracing import client_span, outgoing
from edensplit.wire.compression import compress as compress_body

log = logging.getLogger("edensplit.client")


class _HttpBase:
    """The configuration and the decoding both HTTP transports share."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, retries: int = DEFAULT_RETRIES,
                 retry_for: float = DEFAULT_RETRY_FOR, compress: str | None = None, name: str = "server",
                 api_key: str | None = None, ca_cert: str | Path | None = None,
                 retry_policy: RetryPolicy | None = None):
        if compress not in (None, "zstd"):
            raise EdenError(f"HTTP compression must be zstd or none, got {compress!r}",
                            code=ErrorCode.INVALID_PARAMETER)
        self.base_url, self.name, self.compress = base_url.rstrip("/"), name, compress
        self.retry = retry_policy or RetryPolicy(retries, retry_for)
        self.timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self.verify: Any = tls_context(ca_cert) or True  # an SSLContext trusting the CA bundle, or the defaults
        self.headers = {"X-Client-Version": CLIENT_VERSION, "Accept-Encoding": compress or "identity",
                        **bearer_headers(api_key)}
        self.closed = False  # once closed, a request failing because of it is not retried

    def url(self, path: str) -> str:
        """Absolute, so a client built elsewhere (a TestClient) needs no base URL of ours."""
        return self.base_url + path

    def prepare(self, call: Call) -> dict[str, Any]:
        """httpx.request keyword arguments for `call`, with its request id; a binary body is compressed here,
        once, when asked (off by default: on float tensors it saves under 10% and pays only on links below
        ~20 MB/s)."""
        # The request's idempotency key: made here, once per request, and sent unchanged with every retry.
        headers = {**self.headers, "Accept": call.accept, "X-Request-ID": call.request_id or uuid.uuid4().hex,
                   **outgoing()}
        kwargs: dict[str, Any] = {"params": call.options}
        if call.body is None:
            kwargs["json"] = call.document
        elif self.compress:
            kwargs["content"] = compress_body(call.body, self.compress)
            headers.update({"Content-Type": call.content_type, "Content-Encoding": self.compress})
        else:
            kwargs["content"] = call.body
            headers["Content-Type"] = call.content_type
        return {**kwargs, "headers": headers}

    def answer(self, response: httpx.Response) -> Answer:
        """A 2xx response -> Answer: the envelope's `data` (JSON) or the body with its media type (binary)."""
        kind = response.headers.get("content-type", "").split(";")[0].strip()
        if kind == JSON:
            try:
                data = response.json()["data"]
                metadata = data.get("metadata") or {}
            except (ValueError, KeyError, TypeError, AttributeError):
                raise EdenError(f"{self.name} at {self.base_url}: unreadable JSON answer: {response.text[:200]}",
                                code=ErrorCode.UPSTREAM_ERROR) from None
            return Answer(metadata, data)
        metadata = {k: response.headers[h] for k, h in (("request_id", "x-request-id"),
                                                        ("processing_time", "x-processing-time"))
                    if h in response.headers}
        return Answer(metadata, {}, response.content, kind)

    def error(self, response: httpx.Response) -> ServerError:
        """A non-2xx response -> ServerError with the envelope's code, or UPSTREAM_ERROR if unreadable."""
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            error = None
        return server_error(error, server=f"{self.name} {self.base_url}", status=response.status_code,
                            fallback=f"HTTP {response.status_code}: {response.text[:200]}",
                            retry_after=parse_retry_after(response.headers.get("retry-after")))

    def retry_delay(self, path: str, budget: RetryBudget, *, exc: Exception | None = None,
                    response: httpx.Response | None = None) -> float:
        """After a failed attempt: the seconds to wait before retrying it, or raise the final error (one that
        is not transient, or the retries or the outage budget spent)."""
        if self.closed:
            raise EdenError(f"the connection to the {self.name} at {self.base_url} was closed",
                            code=ErrorCode.UPSTREAM_ERROR) from None
        if exc is not None:
            tls = tls_failure(exc)
            if tls is not None:
                raise EdenError(f"TLS failure talking to the {self.name} at {self.base_url}: {tls} (a server "
                                "certificate signed by another CA needs --ca_cert / EDENSPLIT_CA_CERT)",
                                code=ErrorCode.UPSTREAM_ERROR) from None
            delay = budget.next_delay()
            if delay is None:
                raise EdenError(f"cannot reach the {self.name} at {self.base_url}{path} after {budget.summary()}: "
                                f"{type(exc).__name__}: {exc}", code=ErrorCode.UPSTREAM_ERROR) from None
            what = type(exc).__name__
        else:
            assert response is not None
            error = self.error(response)
            if not should_retry(error):
                raise error
            delay = budget.next_delay(error.retry_after)
            if delay is None:
                raise error
            what = f"HTTP {response.status_code} {error.code}"
        log.log(logging.WARNING if budget.retries == 1 else logging.INFO,
                "%s %s: %s; retry %d in %.2f s (gives up %.0f s after the first failure)", self.name, path, what,
                budget.retries, delay, self.retry.retry_for)
        return delay


class HttpTransport(_HttpBase):
    """One server over a reused sync httpx.Client; `send` is thread-safe."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, retries: int = DEFAULT_RETRIES,
                 retry_for: float = DEFAULT_RETRY_FOR, compress: str | None = None, name: str = "server",
                 api_key: str | None = None, ca_cert: str | Path | None = None,
                 retry_policy: RetryPolicy | None = None, transport: httpx.BaseTransport | None = None,
                 client: httpx.Client | None = None, max_connections: int | None = None):
        """`api_key`: sent as `Authorization: Bearer`; `ca_cert`: a PEM CA bundle that signed the server's
        certificate (https); `retry_policy` replaces `retries`/`retry_for` (and sets the back-off).
        `max_connections`: at most this many connections at once (httpx's default, 100, when None); 1 keeps
        every request on one kept-alive connection, so on one process of a server whose port several share
        (gunicorn workers): a frame-once session's edge requests, which go one at a time anyway.
        `transport` (e.g. httpx.MockTransport) or a ready `client` (e.g. FastAPI's TestClient) for tests."""
        super().__init__(base_url, timeout=timeout, retries=retries, retry_for=retry_for, compress=compress,
                         name=name, api_key=api_key, ca_cert=ca_cert, retry_policy=retry_policy)
        self._owned = client is None
        limits = {"limits": httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
                  } if max_connections else {}
        self.http = client or httpx.Client(timeout=self.timeout, transport=transport, verify=self.verify, **limits)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send with retries; return a 2xx response or raise ServerError / EdenError(UPSTREAM_ERROR)."""
        budget = self.retry.budget()
        while True:
            try:
                response = self.http.request(method, self.url(path), **kwargs)
            except httpx.TransportError as exc:
                delay = self.retry_delay(path, budget, exc=exc)
            else:
                if response.is_success:
                    return response
                delay = self.retry_delay(path, budget, response=response)
            time.sleep(delay)

    def send(self, call: Call) -> Answer:
        """POST the call; its answer, normalised (a client span, its trace context sent along)."""
        with client_span(call):
            return self.answer(self.request("POST", call.path, **self.prepare(call)))

    def health(self) -> dict[str, Any]:
        """GET /health."""
        return self.request("GET", "/health", headers=self.headers).json()

    def close(self) -> None:
        """Close the connection pool (not a client handed in); requests in flight fail, without retries."""
        self.closed = True
        if self._owned:
            self.http.close()


class AsyncHttpTransport(_HttpBase):
    """One server over a reused httpx.AsyncClient; back-off sleeps with asyncio.sleep."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, retries: int = DEFAULT_RETRIES,
                 retry_for: float = DEFAULT_RETRY_FOR, compress: str | None = None, name: str = "server",
                 api_key: str | None = None, ca_cert: str | Path | None = None,
                 retry_policy: RetryPolicy | None = None, transport: httpx.AsyncBaseTransport | None = None):
        """As HttpTransport (the edge's client of the cloud passes its own EDENSPLIT_API_KEY and
        EDENSPLIT_CA_CERT); `transport`: e.g. httpx.MockTransport or httpx.ASGITransport, for tests."""
        super().__init__(base_url, timeout=timeout, retries=retries, retry_for=retry_for, compress=compress,
                         name=name, api_key=api_key, ca_cert=ca_cert, retry_policy=retry_policy)
        self.http = httpx.AsyncClient(timeout=self.timeout, transport=transport, verify=self.verify)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send with retries; return a 2xx response or raise ServerError / EdenError(UPSTREAM_ERROR)."""
        budget = self.retry.budget()
        while True:
            try:
                response = await self.http.request(method, self.url(path), **kwargs)
            except httpx.TransportError as exc:
                delay = self.retry_delay(path, budget, exc=exc)
            else:
                if response.is_success:
                    return response
                delay = self.retry_delay(path, budget, response=response)
            await asyncio.sleep(delay)

    async def send(self, call: Call) -> Answer:
        """POST the call; its answer, normalised (a client span, its trace context sent along)."""
        with client_span(call):
            return self.answer(await self.request("POST", call.path, **self.prepare(call)))

    async def health(self) -> dict[str, Any]:
        """GET /health."""
        return (await self.request("GET", "/health", headers=self.headers)).json()

    async def aclose(self) -> None:
        """Close the connection pool; requests in flight fail, without retries."""
        self.closed = True
        await self.http.aclose()

"""HTTP transports on httpx: they move a `Call`'s bytes and nothing else (no request building here).

`HttpTransport` (a sync httpx.Client) and `AsyncHttpTransport` (httpx.AsyncClient, for the edge calling
the cloud in flow B) share everything but the loop: connection reuse, timeouts, the retry policy
(connection errors, timeouts and 502/503/504, backing off), optional zstd bodies, and the decoding of
the servers' JSON envelope and error envelope into an `Answer` or a `ServerError`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx

from edensplit.client.requests import JSON, Answer, Call
from edensplit.client.transport import CLIENT_VERSION, RetryPolicy, ServerError, server_error
from edensplit.errors import EdenError, ErrorCode
from edensplit.wire.compression import compress as compress_body

log = logging.getLogger("edensplit.client")
RETRY_STATUSES = frozenset({502, 503, 504})


class _HttpBase:
    """The configuration and the decoding both HTTP transports share."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, retries: int = 3, compress: str | None = None,
                 name: str = "server"):
        if compress not in (None, "zstd"):
            raise EdenError(f"HTTP compression must be zstd or none, got {compress!r}",
                            code=ErrorCode.INVALID_PARAMETER)
        self.base_url, self.name, self.compress = base_url.rstrip("/"), name, compress
        self.retry = RetryPolicy(retries)
        self.timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self.headers = {"X-Client-Version": CLIENT_VERSION, "Accept-Encoding": compress or "identity"}

    def url(self, path: str) -> str:
        """Absolute, so a client built elsewhere (a TestClient) needs no base URL of ours."""
        return self.base_url + path

    def prepare(self, call: Call) -> dict[str, Any]:
        """httpx.request keyword arguments for `call`; a binary body is compressed here, once, when asked
        (off by default: on float tensors it saves under 10% and pays only on links below ~20 MB/s)."""
        headers = {**self.headers, "Accept": call.accept}
        if call.request_id:
            headers["X-Request-ID"] = call.request_id
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
                            fallback=f"HTTP {response.status_code}: {response.text[:200]}")

    def give_up_or_retry(self, path: str, attempt: int, *, exc: Exception | None = None,
                         response: httpx.Response | None = None) -> None:
        """Raise the final error, or log that the attempt is retried."""
        if exc is not None:
            if attempt >= self.retry.retries:
                raise EdenError(f"cannot reach the {self.name} at {self.base_url}{path} after {attempt + 1} "
                                f"attempts: {type(exc).__name__}: {exc}", code=ErrorCode.UPSTREAM_ERROR) from None
            log.warning("%s %s: %s, retrying", self.name, path, type(exc).__name__)
        elif response is not None:
            if response.status_code not in RETRY_STATUSES or attempt >= self.retry.retries:
                raise self.error(response)
            log.warning("%s %s: HTTP %d, retrying", self.name, path, response.status_code)


class HttpTransport(_HttpBase):
    """One server over a reused sync httpx.Client; `send` is thread-safe."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, retries: int = 3, compress: str | None = None,
                 name: str = "server", transport: httpx.BaseTransport | None = None,
                 client: httpx.Client | None = None):
        """`transport` (e.g. httpx.MockTransport) or a ready `client` (e.g. FastAPI's TestClient) for tests."""
        super().__init__(base_url, timeout=timeout, retries=retries, compress=compress, name=name)
        self._owned = client is None
        self.http = client or httpx.Client(timeout=self.timeout, transport=transport)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send with retries; return a 2xx response or raise ServerError / EdenError(UPSTREAM_ERROR)."""
        attempt = 0
        while True:
            try:
                response = self.http.request(method, self.url(path), **kwargs)
            except httpx.TransportError as exc:
                self.give_up_or_retry(path, attempt, exc=exc)
            else:
                if response.is_success:
                    return response
                self.give_up_or_retry(path, attempt, response=response)
            time.sleep(self.retry.delay(attempt))
            attempt += 1

    def send(self, call: Call) -> Answer:
        """POST the call; its answer, normalised."""
        return self.answer(self.request("POST", call.path, **self.prepare(call)))

    def health(self) -> dict[str, Any]:
        """GET /health."""
        return self.request("GET", "/health", headers=self.headers).json()

    def close(self) -> None:
        """Close the connection pool (not a client handed in)."""
        if self._owned:
            self.http.close()


class AsyncHttpTransport(_HttpBase):
    """One server over a reused httpx.AsyncClient; back-off sleeps with asyncio.sleep."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, retries: int = 3, compress: str | None = None,
                 name: str = "server", transport: httpx.AsyncBaseTransport | None = None):
        """`transport`: e.g. httpx.MockTransport or httpx.ASGITransport, for tests."""
        super().__init__(base_url, timeout=timeout, retries=retries, compress=compress, name=name)
        self.http = httpx.AsyncClient(timeout=self.timeout, transport=transport)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send with retries; return a 2xx response or raise ServerError / EdenError(UPSTREAM_ERROR)."""
        attempt = 0
        while True:
            try:
                response = await self.http.request(method, self.url(path), **kwargs)
            except httpx.TransportError as exc:
                self.give_up_or_retry(path, attempt, exc=exc)
            else:
                if response.is_success:
                    return response
                self.give_up_or_retry(path, attempt, response=response)
            await asyncio.sleep(self.retry.delay(attempt))
            attempt += 1

    async def send(self, call: Call) -> Answer:
        """POST the call; its answer, normalised."""
        return self.answer(await self.request("POST", call.path, **self.prepare(call)))

    async def health(self) -> dict[str, Any]:
        """GET /health."""
        return (await self.request("GET", "/health", headers=self.headers)).json()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()


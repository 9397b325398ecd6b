"""HTTP transports on httpx: they move one attempt of a `Call` and nothing else (no request building, no retries:
`edensplit.client.policy` decides those).

`HttpTransport` (a sync httpx.Client) and `AsyncHttpTransport` (httpx.AsyncClient, for the edge calling the
cloud in flow B) share everything but the loop: connection reuse, the config's timeout, bearer key and CA
bundle, optional zstd bodies, and the decoding of the servers' JSON envelope and error envelope into an
`Answer` or a `ServerError`; a request that got no answer is a `TransportError`.
"""

from __future__ import annotations

from typing import Any

import httpcore
import httpx

from edensplit.client.requests import JSON, Answer, Call
from edensplit.client.transport import ClientConfig, ServerError, TransportError, connection_failure, http_error
from edensplit.errors import EdenError, ErrorCode
from edensplit.tracing import outgoing
from edensplit.wire.compression import compress as compress_body
from edensplit.wire.compression import within_ratio

# httpcore reads an answer READ_NUM_BYTES at a time, one round of h11's parser in Python per read: 64 KiB by default,
# ~400 rounds for a 25 MB encoding. A read returns what the socket holds, up to the size, so larger reads cost small
# answers nothing and halve the time to receive a 25 MB one on loopback (docs/performance.md, overhead). httpcore
# has no per-client setting: it is its connections' class attribute, raised here for the process.
READ_BYTES = 1 << 20
for _connection in (httpcore.HTTP11Connection, httpcore.AsyncHTTP11Connection):
    _connection.READ_NUM_BYTES = max(_connection.READ_NUM_BYTES, READ_BYTES)


class _HttpBase:
    """The configuration and the decoding both HTTP transports share."""

    def __init__(self, base_url: str, config: ClientConfig | None, compress: str | None, settings: dict[str, Any]):
        if compress not in (None, "zstd"):
            raise EdenError(f"HTTP compression must be zstd or none, got {compress!r}",
                            code=ErrorCode.INVALID_PARAMETER)
        self.config = config or ClientConfig.of(**settings)
        self.url, self.compress = base_url.rstrip("/"), compress
        self.config.check_url(self.url)
        self.timeout = httpx.Timeout(self.config.timeout, connect=min(self.config.timeout, 10.0))
        self.verify: Any = self.config.tls or True  # an SSLContext trusting the CA bundle, or the defaults
        self.headers = {**self.config.headers(), "Accept-Encoding": compress or "identity"}
        self.closed = False  # once closed, a request failing because of it is not retried

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def base_url(self) -> str:
        return self.url

    def prepare(self, call: Call, request_id: str) -> dict[str, Any]:
        """httpx.request keyword arguments for one attempt of `call`; a binary body is compressed here, once per
        attempt, when asked (off by default: on float tensors it saves under 10% and pays only on links below
        ~20 MB/s), and sent as it is where it would inflate past the servers' ratio limit (nearly constant
        frames)."""
        headers = {**self.headers, **call.headers, "Accept": call.accept, "X-Request-ID": request_id, **outgoing()}
        kwargs: dict[str, Any] = {"params": call.options}
        if call.body is None:
            kwargs["json"] = call.document
        elif self.compress and within_ratio(len(call.body), len(packed := compress_body(call.body, self.compress))):
            kwargs["content"] = packed
            headers.update({"Content-Type": call.content_type, "Content-Encoding": self.compress})
        else:
            kwargs["content"] = call.body
            headers["Content-Type"] = call.content_type
        return {**kwargs, "headers": headers}

    def failure(self, path: str, exc: httpx.TransportError) -> TransportError:
        """No answer: a connection that failed or dropped, or a timeout (final once the transport is closed)."""
        what = f"cannot reach the {self.name} at {self.url}{path}"
        if self.closed:
            return TransportError(f"the connection to the {self.name} at {self.url}", "closed", retryable=False)
        return connection_failure(what, exc)

    def answer(self, response: httpx.Response) -> Answer:
        """A response -> Answer: the envelope's `data` (JSON) or the body with its media type (binary);
        ServerError for a non-2xx one."""
        if not response.is_success:
            raise self.error(response)
        kind = response.headers.get("content-type", "").split(";")[0].strip()
        if kind == JSON:
            try:
                data = response.json()["data"]
                metadata = data.get("metadata") or {}
            except (ValueError, KeyError, TypeError, AttributeError):
                raise EdenError(f"{self.name} at {self.url}: unreadable JSON answer: {response.text[:200]}",
                                code=ErrorCode.UPSTREAM_ERROR) from None
            return Answer(metadata, data)
        metadata = {k: response.headers[h] for k, h in (("request_id", "x-request-id"),
                                                        ("processing_time", "x-processing-time"))
                    if h in response.headers}
        return Answer(metadata, {}, response.content, kind)

    def error(self, response: httpx.Response) -> ServerError:
        """A non-2xx response -> ServerError with the envelope's code, or UPSTREAM_ERROR if unreadable."""
        return http_error(response.status_code, response.content, response.headers.get("retry-after"),
                          f"{self.name} {self.url}", "")

    def health_of(self, response: httpx.Response) -> dict[str, Any]:
        if not response.is_success:
            raise self.error(response)
        return response.json()

    def done(self, request_id: str) -> None:
        """Nothing is kept between attempts over HTTP."""


class HttpTransport(_HttpBase):
    """One server over a reused sync httpx.Client; `send` is thread-safe."""

    def __init__(self, base_url: str, config: ClientConfig | None = None, *, compress: str | None = None,
                 transport: httpx.BaseTransport | None = None, client: httpx.Client | None = None,
                 max_connections: int | None = None, **settings: Any):
        """`config`, or its fields as keywords (`ClientConfig.of`: timeout, retries, retry_for, retry_policy,
        api_key, ca_cert, name). `max_connections`: at most this many connections at once (httpx's default, 100,
        when None); 1 keeps every request on one kept-alive connection, so on one process of a server whose
        port several share (gunicorn workers): a frame-once session's edge requests, which go one at a time
        anyway. `transport` (e.g. httpx.MockTransport) or a ready `client` (e.g. FastAPI's TestClient) for
        tests."""
        super().__init__(base_url, config, compress, settings)
        self._owned = client is None
        limits = {"limits": httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
                  } if max_connections else {}
        self.http = client or httpx.Client(timeout=self.timeout, transport=transport, verify=self.verify, **limits)

    def send(self, call: Call, request_id: str) -> Answer:
        """POST one attempt of the call; its answer, normalised."""
        try:
            response = self.http.request("POST", self.url + call.path, **self.prepare(call, request_id))
        except httpx.TransportError as exc:
            raise self.failure(call.path, exc) from None
        return self.answer(response)

    def delete(self, path: str) -> None:
        """DELETE `path`, once (no retries): ServerError for an error answer, TransportError for none."""
        try:
            response = self.http.request("DELETE", self.url + path, headers=self.headers)
        except httpx.TransportError as exc:
            raise self.failure(path, exc) from None
        if response.status_code >= 400:
            raise self.error(response)

    def health(self) -> dict[str, Any]:
        """GET /health, once."""
        try:
            return self.health_of(self.http.request("GET", self.url + "/health", headers=self.headers))
        except httpx.TransportError as exc:
            raise self.failure("/health", exc) from None

    def close(self) -> None:
        """Close the connection pool (not a client handed in); requests in flight fail, without retries."""
        self.closed = True
        if self._owned:
            self.http.close()


class AsyncHttpTransport(_HttpBase):
    """One server over a reused httpx.AsyncClient."""

    def __init__(self, base_url: str, config: ClientConfig | None = None, *, compress: str | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, **settings: Any):
        """As HttpTransport (the edge's client of the cloud passes its own EDENSPLIT_API_KEY and
        EDENSPLIT_CA_CERT); `transport`: e.g. httpx.MockTransport or httpx.ASGITransport, for tests."""
        super().__init__(base_url, config, compress, settings)
        self.http = httpx.AsyncClient(timeout=self.timeout, transport=transport, verify=self.verify)

    async def send(self, call: Call, request_id: str) -> Answer:
        """POST one attempt of the call; its answer, normalised."""
        try:
            response = await self.http.request("POST", self.url + call.path, **self.prepare(call, request_id))
        except httpx.TransportError as exc:
            raise self.failure(call.path, exc) from None
        return self.answer(response)

    async def health(self) -> dict[str, Any]:
        """GET /health, once."""
        try:
            return self.health_of(await self.http.request("GET", self.url + "/health", headers=self.headers))
        except httpx.TransportError as exc:
            raise self.failure("/health", exc) from None

    async def aclose(self) -> None:
        """Close the connection pool; requests in flight fail, without retries."""
        self.closed = True
        await self.http.aclose()

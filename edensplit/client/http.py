"""Typed HTTP clients for the two servers, on httpx: connection reuse, timeouts, bounded retries.

`CloudClient.encode` turns two frames into an `EncodedPair` (the enc_out blob and what the client
needs to know of it); `EdgeClient.interpolate` turns an `EncodedPair` into the middle frame. Both
speak the JSON API (base64) or the binary fast path, chosen by `payload`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import numpy as np

from edensplit import __version__
from edensplit.errors import EdenError, ErrorCode
from edensplit.wire import (
    BLOB_MEDIA_TYPE,
    FRAMES_MEDIA_TYPE,
    WIRE_DTYPES,
    b64decode_field,
    b64encode,
    decode_image,
    encode_png,
    pack_frames,
    read_blob_header,
    unpack_frames,
)

log = logging.getLogger("edensplit.client")
Payload = Literal["json", "binary"]
RETRY_STATUSES = frozenset({502, 503, 504})


class ServerError(EdenError):
    """A server answered with an error envelope (or an unreadable error)."""

    def __init__(self, message: str, *, code: ErrorCode, status: int, server: str):
        super().__init__(f"{server}: {message}", code=code)
        self.status = status


@dataclass(frozen=True)
class RetryPolicy:
    """Retry connection errors, timeouts and 502/503/504 up to `retries` times, backing off exponentially."""

    retries: int = 3
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    def delay(self, attempt: int) -> float:
        return min(self.backoff_s * 2**attempt, self.max_backoff_s)


class HttpService:
    """One server: a reused httpx.Client, the retry loop, and error-envelope decoding."""

    name = "server"

    def __init__(self, base_url: str, *, timeout: float = 30.0, retries: int = 3,
                 transport: httpx.BaseTransport | None = None):
        self.base_url = base_url.rstrip("/")
        self.retry = RetryPolicy(retries)
        self.http = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                                 headers={"X-Client-Version": f"edensplit/{__version__}"}, transport=transport)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send with retries; return a 2xx response or raise ServerError / EdenError(UPSTREAM_ERROR)."""
        attempt = 0
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                if attempt >= self.retry.retries:
                    raise EdenError(f"cannot reach the {self.name} at {self.base_url}{path} after "
                                    f"{attempt + 1} attempts: {type(exc).__name__}: {exc}",
                                    code=ErrorCode.UPSTREAM_ERROR) from None
                log.warning("%s %s: %s, retrying", self.name, path, type(exc).__name__)
            else:
                if response.is_success:
                    return response
                if response.status_code not in RETRY_STATUSES or attempt >= self.retry.retries:
                    raise self._error(response)
                log.warning("%s %s: HTTP %d, retrying", self.name, path, response.status_code)
            time.sleep(self.retry.delay(attempt))
            attempt += 1

    def _error(self, response: httpx.Response) -> ServerError:
        try:
            error = response.json()["error"]
            code, message = ErrorCode(error["code"]), error["message"]
        except (ValueError, KeyError, TypeError):
            code, message = ErrorCode.UPSTREAM_ERROR, f"HTTP {response.status_code}: {response.text[:200]}"
        return ServerError(message, code=code, status=response.status_code, server=f"{self.name} {self.base_url}")

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/health").json()

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> HttpService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class EncodedPair:
    """The cloud's answer for one pair: the enc_out blob (raw bytes, or the base64 text as received)."""

    blob: bytes | None
    blob_b64: str | None
    grid: tuple[int, int]
    difference: float
    size: int  # bytes of the blob

    @property
    def raw(self) -> bytes:
        return self.blob if self.blob is not None else b64decode_field(self.blob_b64 or "", "enc_out")


class CloudClient(HttpService):
    """The cloud encoder: POST /api/v1/encode."""

    name = "cloud server"

    def __init__(self, base_url: str, *, payload: Payload = "binary", wire_dtype: str = "float32", **kwargs: Any):
        super().__init__(base_url, **kwargs)
        if wire_dtype not in WIRE_DTYPES:
            raise EdenError(f"wire_dtype must be one of {', '.join(WIRE_DTYPES)}", code=ErrorCode.INVALID_PARAMETER)
        self.payload, self.wire_dtype = payload, wire_dtype

    def encode(self, frame0: np.ndarray, frame1: np.ndarray, *, metadata: dict[str, Any] | None = None,
               request_id: str | None = None) -> EncodedPair:
        headers = {"X-Request-ID": request_id} if request_id else {}
        params = {"wire_dtype": self.wire_dtype}
        if self.payload == "binary":
            body = pack_frames({"frame0": frame0, "frame1": frame1},
                               {k: str(v) for k, v in (metadata or {}).items()})
            response = self.request("POST", "/api/v1/encode", content=body, params=params,
                                    headers={**headers, "Content-Type": FRAMES_MEDIA_TYPE, "Accept": BLOB_MEDIA_TYPE})
            header = read_blob_header(response.content)
            ph, pw = (int(v) for v in header["grid"].split(","))
            return EncodedPair(response.content, None, (ph, pw), float(header["difference"]), len(response.content))
        body = {"frame0": b64encode(encode_png(frame0)), "frame1": b64encode(encode_png(frame1)),
                "image_size": list(frame0.shape[:2]), "metadata": metadata or {}}
        data = self.request("POST", "/api/v1/encode", json=body, params=params, headers=headers).json()["data"]
        meta = data["metadata"]
        return EncodedPair(None, data["enc_out"], (meta["ph"], meta["pw"]), meta["difference"], data["enc_out_size"])


class EdgeClient(HttpService):
    """The edge sampler/decoder: POST /api/v1/interpolate."""

    name = "edge server"

    def __init__(self, base_url: str, *, payload: Payload = "binary", num_steps: int = 2, method: str = "euler",
                 **kwargs: Any):
        super().__init__(base_url, **kwargs)
        self.payload, self.num_steps, self.method = payload, num_steps, method

    def interpolate(self, pair: EncodedPair, *, seed: int = 0, request_id: str | None = None) -> np.ndarray:
        headers = {"X-Request-ID": request_id} if request_id else {}
        if self.payload == "binary":
            params = {"seed": seed, "num_steps": self.num_steps, "method": self.method}
            response = self.request("POST", "/api/v1/interpolate", content=pair.raw, params=params,
                                    headers={**headers, "Content-Type": BLOB_MEDIA_TYPE, "Accept": FRAMES_MEDIA_TYPE})
            frames, _ = unpack_frames(response.content, ("frame",))
            return frames["frame"]
        blob_b64 = pair.blob_b64 if pair.blob_b64 is not None else b64encode(pair.raw)
        body = {"enc_out": blob_b64, "seed": seed,
                "sampling_config": {"num_steps": self.num_steps, "method": self.method},
                "metadata": {"ph": pair.grid[0], "pw": pair.grid[1]}}
        data = self.request("POST", "/api/v1/interpolate", json=body, headers=headers).json()["data"]
        return decode_image(b64decode_field(data["generated_frame"], "generated_frame"), "generated_frame")


class SplitClient:
    """The split pipeline over HTTP (flow A): client -> cloud -> client -> edge -> client."""

    def __init__(self, cloud: CloudClient, edge: EdgeClient,
                 on_pair: Callable[[EncodedPair], None] | None = None):
        self.cloud, self.edge, self.on_pair = cloud, edge, on_pair

    def interpolate_pair(self, frame0: np.ndarray, frame1: np.ndarray, seed: int = 0) -> np.ndarray:
        pair = self.cloud.encode(frame0, frame1)
        if self.on_pair:
            self.on_pair(pair)
        return self.edge.interpolate(pair, seed=seed)

    def close(self) -> None:
        self.cloud.close()
        self.edge.close()

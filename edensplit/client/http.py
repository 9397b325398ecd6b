"""Typed HTTP clients for the two servers, on httpx: connection reuse, timeouts, bounded retries.

`CloudClient` turns frames into `EncodedBlob`s (the enc_out blob and what the client needs to know
of it); `EdgeClient` turns them into middle frames. Both speak the JSON API (base64) or the binary
fast path, chosen by `payload`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import numpy as np

from edensplit import __version__
from edensplit.client.payloads import EncodedBlob, Sampling, frame_from_container, frame_from_json, images_json
from edensplit.errors import EdenError, ErrorCode
from edensplit.wire import BLOB_MEDIA_TYPE, FRAMES_MEDIA_TYPE, WIRE_DTYPES, pack_frames
from edensplit.wire.compression import compress as compress_body

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

    def __init__(self, base_url: str, *, timeout: float = 30.0, retries: int = 3, compress: str | None = None,
                 transport: httpx.BaseTransport | None = None):
        self.base_url = base_url.rstrip("/")
        self.retry = RetryPolicy(retries)
        if compress not in (None, "zstd"):
            raise EdenError(f"HTTP compression must be zstd or none, got {compress!r}",
                            code=ErrorCode.INVALID_PARAMETER)
        self.compress = compress
        headers = {"X-Client-Version": f"edensplit/{__version__}", "Accept-Encoding": compress or "identity"}
        self.http = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                                 headers=headers, transport=transport)

    def binary_body(self, body: bytes, content_type: str) -> tuple[bytes, dict[str, str]]:
        """A binary request body and its headers, compressed when `compress` is set (off by default: on float
        tensors it saves under 10% and costs more time than that saves on links above ~20 MB/s)."""
        if not self.compress:
            return body, {"Content-Type": content_type}
        return compress_body(body, self.compress), {"Content-Type": content_type, "Content-Encoding": self.compress}

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


class CloudClient(HttpService):
    """The cloud encoder: POST /api/v1/encode (a pair) and /api/v1/encode_frame (one frame)."""

    name = "cloud server"

    def __init__(self, base_url: str, *, payload: Payload = "binary", wire_dtype: str = "float32", **kwargs: Any):
        super().__init__(base_url, **kwargs)
        if wire_dtype not in WIRE_DTYPES:
            raise EdenError(f"wire_dtype must be one of {', '.join(WIRE_DTYPES)}", code=ErrorCode.INVALID_PARAMETER)
        self.payload, self.wire_dtype = payload, wire_dtype

    def _encode(self, path: str, frames: dict[str, np.ndarray], request_id: str | None) -> EncodedBlob:
        headers = {"X-Request-ID": request_id} if request_id else {}
        params = {"wire_dtype": self.wire_dtype}
        if self.payload == "binary":
            body, kind = self.binary_body(pack_frames(frames), FRAMES_MEDIA_TYPE)
            response = self.request("POST", path, content=body, params=params,
                                    headers={**headers, **kind, "Accept": BLOB_MEDIA_TYPE})
            return EncodedBlob.from_bytes(response.content)
        data = self.request("POST", path, json=images_json(**frames), params=params, headers=headers).json()["data"]
        return EncodedBlob.from_json(data["enc_out"], data["metadata"])

    def encode(self, frame0: np.ndarray, frame1: np.ndarray, *, request_id: str | None = None) -> EncodedBlob:
        """A pair -> its enc_out blob (both frames, and their difference)."""
        return self._encode("/api/v1/encode", {"frame0": frame0, "frame1": frame1}, request_id)

    def encode_frame(self, frame: np.ndarray, *, request_id: str | None = None) -> EncodedBlob:
        """One video frame -> its enc_out blob (frame-once sessions)."""
        return self._encode("/api/v1/encode_frame", {"frame": frame}, request_id)


class EdgeClient(HttpService):
    """The edge: /api/v1/interpolate (a pair's blob), sessions (frame-once), /interpolate_frames (flow B)."""

    name = "edge server"

    def __init__(self, base_url: str, *, payload: Payload = "binary", sampling: Sampling | None = None,
                 **kwargs: Any):
        super().__init__(base_url, **kwargs)
        self.payload, self.sampling = payload, sampling or Sampling()

    def _frame(self, path: str, *, blob: bytes | None = None, frames: dict[str, np.ndarray] | None = None,
               json: dict[str, Any], params: dict[str, Any]) -> np.ndarray | None:
        """POST a blob or frames (binary) or `json`; return the generated frame, or None for a store-only answer."""
        if self.payload == "binary":
            raw, kind = (blob, BLOB_MEDIA_TYPE) if blob is not None else (pack_frames(frames or {}), FRAMES_MEDIA_TYPE)
            body, headers = self.binary_body(raw, kind)
            response = self.request("POST", path, content=body, params=params,
                                    headers={**headers, "Accept": FRAMES_MEDIA_TYPE})
            if response.headers.get("content-type", "").startswith("application/json"):
                return None
            return frame_from_container(response.content)
        data = self.request("POST", path, json=json, params=params).json()["data"]
        return frame_from_json(data["generated_frame"]) if "generated_frame" in data else None

    def interpolate(self, pair: EncodedBlob, *, seed: int = 0) -> np.ndarray:
        """A pair's blob -> the middle frame."""
        body = {"enc_out": pair.b64, **self.sampling.json(seed), "metadata": {"ph": pair.grid[0], "pw": pair.grid[1]}}
        return self._frame("/api/v1/interpolate", blob=pair.raw if self.payload == "binary" else None, json=body,
                           params=self.sampling.flat(seed))

    def session_frame(self, session_id: str, index: int, frame: EncodedBlob | np.ndarray, *,
                      difference: float | None = None, seed: int = 0, interpolate: bool | None = None
                      ) -> np.ndarray | None:
        """Frame `index` of a frame-once session: its blob (flow A) or the frame itself (flow B, the edge has the
        cloud encode it). Stores it; for index > 0 returns the frame between index-1 and index."""
        path = f"/api/v1/sessions/{session_id}/frames/{index}"
        params = self.sampling.flat(seed, difference=difference, interpolate=interpolate)
        extra = self.sampling.json(seed, difference=difference, interpolate=interpolate)
        binary = self.payload == "binary"
        if isinstance(frame, np.ndarray):
            return self._frame(path, frames={"frame": frame} if binary else None,
                               json={**images_json(frame=frame), **extra}, params=params)
        return self._frame(path, blob=frame.raw if binary else None, json={"enc_out": frame.b64, **extra},
                           params=params)

    def interpolate_frames(self, frame0: np.ndarray, frame1: np.ndarray, *, seed: int = 0) -> np.ndarray:
        """Flow B: raw frames to the edge, which calls the cloud itself."""
        frames = {"frame0": frame0, "frame1": frame1}
        return self._frame("/api/v1/interpolate_frames", frames=frames, json=images_json(**frames),
                           params=self.sampling.flat(seed))

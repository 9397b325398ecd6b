"""TEMPORARY: flow B's async call to the cloud, until the client's async transport lands."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np

from edensplit.errors import EdenError, ErrorCode
from edensplit.wire import BLOB_MEDIA_TYPE, FRAMES_MEDIA_TYPE, pack_frames


class AsyncCloudClient:
    def __init__(self, base_url: str, retries: int = 3):
        self.base_url, self.retries = base_url.rstrip("/"), retries
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=30)

    async def encode_blob(self, frames: list[np.ndarray], *, request_id: str) -> bytes:
        names = ("frame0", "frame1") if len(frames) == 2 else ("frame",)
        path = "/api/v1/encode" if len(frames) == 2 else "/api/v1/encode_frame"
        body = pack_frames(dict(zip(names, frames, strict=True)))
        for attempt in range(self.retries + 1):
            try:
                r = await self.http.post(path, content=body, headers={"Content-Type": FRAMES_MEDIA_TYPE,
                                                                      "Accept": BLOB_MEDIA_TYPE,
                                                                      "X-Request-ID": request_id})
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise EdenError(f"cannot reach the cloud server at {self.base_url}{path}: {exc}",
                                    code=ErrorCode.UPSTREAM_ERROR) from None
            else:
                if r.is_success:
                    return r.content
                raise EdenError(r.json()["error"]["message"], code=ErrorCode(r.json()["error"]["code"]))
            await asyncio.sleep(0.2 * 2**attempt)
        raise AssertionError

    async def aclose(self) -> None:
        await self.http.aclose()

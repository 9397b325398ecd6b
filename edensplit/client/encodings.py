"""Encodings shared by the levels of a flow-A job (4x, 8x): each frame, input or generated, is encoded by the
cloud once, whichever level asks first, and held until every level that takes it as an input is done."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import numpy as np


class SharedEncodings:
    """A cloud client shared by the levels of one job (flow A): each frame is encoded once, whichever level asks
    first, and the encoding is held until every level that takes the frame as an input is done with it.

    Frames are known by identity: the stream registers each frame with the number of levels that will take it
    (`register`) and each level releases it once (`release`); the entry goes when the count reaches 0. A frame
    asked for while not registered (a resend after the edge lost its cache) is simply encoded again."""

    def __init__(self, cloud: Any):
        self.cloud = cloud
        self.encoded = 0  # frames the cloud encoded
        self._held: dict[int, list[Any]] = {}  # id(frame) -> [frame, uses left, Future of its blob or None]
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cloud, name)

    def register(self, frame: np.ndarray, uses: int) -> None:
        """`frame` will be an input of `uses` more levels."""
        with self._lock:
            entry = self._held.get(id(frame))
            if entry is None:
                self._held[id(frame)] = [frame, uses, None]
            else:
                entry[1] += uses

    def release(self, frame: np.ndarray) -> None:
        """One level is done with `frame`."""
        with self._lock:
            entry = self._held.get(id(frame))
            if entry is not None and entry[0] is frame:
                entry[1] -= 1
                if entry[1] <= 0:
                    del self._held[id(frame)]

    @property
    def held(self) -> int:
        """Frames registered and not yet released by every level."""
        with self._lock:
            return len(self._held)

    def encode_frame(self, frame: np.ndarray, *, request_id: str | None = None) -> Any:
        """The frame's encoding: the one already made for it, else the cloud's (once, if two levels ask at once)."""
        with self._lock:
            entry = self._held.get(id(frame))
            if entry is not None and entry[0] is not frame:
                entry = None
            future = entry[2] if entry is not None else None
            mine = future is None
            if mine:
                future = Future()
                future.set_running_or_notify_cancel()
                if entry is not None:
                    entry[2] = future
        assert future is not None
        if not mine:
            return future.result()
        try:
            blob = self.cloud.encode_frame(frame, request_id=request_id)
        except BaseException as exc:
            future.set_exception(exc)
            with self._lock:
                if entry is not None and entry[2] is future:
                    entry[2] = None  # the next asker tries again
            raise
        with self._lock:
            self.encoded += 1
        future.set_result(blob)
        return blob

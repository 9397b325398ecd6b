"""What a job runs its pairs on: a `Backend` (the split clients of `edensplit.client.flows`, or `LocalBackend`,
both stages in this process: the reference). Every backend answers the same small protocol, with defaults that
fit a stateless one: the multiplier and the jobs call it without asking what it is."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from edensplit.errors import EdenError, ErrorCode
from edensplit.model.pipeline import LocalPipeline


class Tracker(Protocol):
    """Frames shared by the levels of a job (flow A's encodings): told which frames each level takes, and when it
    is done with them."""

    def register(self, frame: np.ndarray, uses: int) -> None:
        """`frame` is an input of `uses` more levels."""

    def release(self, frame: np.ndarray) -> None:
        """A level is done with `frame`."""


class Backend:
    """A backend: `interpolate_pair`, and what a video job asks of it (the defaults: no state per video)."""

    def interpolate_pair(self, frame0: np.ndarray, frame1: np.ndarray, seed: int, index: int = 0) -> np.ndarray:
        """The middle frame of pair `index`, two uint8 RGB [H, W, 3] frames, with noise seed `seed`."""
        raise NotImplementedError

    def begin_video(self, start: int = 0) -> None:
        """A new video (or a new run of pairs after some not sent), whose first pair is `start`."""

    def fork(self) -> Backend:
        """An independent backend over the same connections, for another level of midpoints (4x, 8x): one with
        per-video state gives a new one; a stateless one is itself. A backend that keeps state per video (it
        has its own `begin_video`) must say how it forks: sharing one between levels would mix their frames."""
        if type(self).begin_video is not Backend.begin_video:
            raise EdenError(f"{type(self).__name__} keeps per-video state and has no fork(): a multiplier above 2 "
                            "needs one per level", code=ErrorCode.INVALID_PARAMETER)
        return self

    @property
    def shared_encodings(self) -> Tracker | None:
        """Encodings its forks share (flow A's frame-once sessions), to be told which frames the levels take."""
        return None

    @property
    def services(self) -> dict[str, Any]:
        """The server clients it sends requests through, by role ("cloud", "edge"): a job meters them."""
        return {}

    def close(self) -> None:
        """Close its connections."""


class Wrapper(Backend):
    """A backend around another (to watch, time or disturb its pairs): all but `interpolate_pair` is the inner
    backend's."""

    def __init__(self, inner: Backend):
        self.inner = inner

    def interpolate_pair(self, frame0: np.ndarray, frame1: np.ndarray, seed: int, index: int = 0) -> np.ndarray:
        return self.inner.interpolate_pair(frame0, frame1, seed, index)

    def begin_video(self, start: int = 0) -> None:
        self.inner.begin_video(start)

    def fork(self) -> Backend:
        return self.inner.fork()

    @property
    def shared_encodings(self) -> Tracker | None:
        return self.inner.shared_encodings

    @property
    def services(self) -> dict[str, Any]:
        return self.inner.services

    def close(self) -> None:
        self.inner.close()


class LocalBackend(Backend):
    """Both stages in this process: `edensplit interpolate --local`. A video's frames are each encoded once,
    their temporal keys/values computed once (`LocalPipeline.video_pair`, keyed by frame index)."""

    def __init__(self, pipeline: LocalPipeline):
        self.pipeline = pipeline

    def begin_video(self, start: int = 0) -> None:
        self.pipeline.begin_video()  # frames are keyed by index: a resumed video may start anywhere

    def fork(self) -> LocalBackend:
        return LocalBackend(LocalPipeline(self.pipeline.model, self.pipeline.sampler))

    def interpolate_pair(self, frame0: np.ndarray, frame1: np.ndarray, seed: int, index: int = 0) -> np.ndarray:
        return self.pipeline.video_pair(frame0, frame1, seed, index)

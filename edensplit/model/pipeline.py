"""`LocalPipeline`: both stages in one process, the reference every split result is compared against."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from edensplit.errors import InputError
from edensplit.model.eden import Eden, FrameContext
from edensplit.model.encoding import FrameEncoding, Geometry
from edensplit.model.sampler import REFERENCE_SAMPLER, Sampler
from edensplit.model.seeds import make_noise
from edensplit.model.stages import encode_frames, frame_context, frame_difference, interpolate, to_uint8


class LocalPipeline:
    """Both stages in one process: frame0, frame1 -> middle frame. The split's reference.

    For a video (`video_pair`), each frame is encoded once and its temporal keys/values computed once,
    kept for the next pair it belongs to: the same frames as pair at a time, bit for bit."""

    KEEP = 4  # frames of the current video kept (pairs in flight come in any order within a small window)

    def __init__(self, model: Eden, sampler: Sampler = REFERENCE_SAMPLER):
        self.model = model
        self.sampler = sampler
        self._frames: OrderedDict[int, tuple[FrameEncoding, FrameContext]] = OrderedDict()
        self._lock = threading.Lock()
        self.computed = 0  # frames encoded and contextualised by `video_pair`, for tests

    def begin_video(self) -> None:
        with self._lock:
            self._frames.clear()

    def _frame(self, index: int, frame: np.ndarray | Tensor) -> tuple[FrameEncoding, FrameContext]:
        with self._lock:
            held = self._frames.get(index)
        if held is None:  # computed outside the lock: two threads may both compute it, to the same values
            enc = encode_frames(self.model, frame)
            held = (enc, frame_context(self.model, enc))
            with self._lock:
                self.computed += 1
                self._frames[index] = held
                while len(self._frames) > self.KEEP:
                    self._frames.popitem(last=False)
        return held

    def video_pair(self, frame0: np.ndarray | Tensor, frame1: np.ndarray | Tensor, seed: int, index: int
                   ) -> np.ndarray:
        """Pair (index, index + 1) of the current video -> the middle frame, uint8 [H, W, 3]."""
        (enc0, ctx0), (enc1, ctx1) = self._frame(index, frame0), self._frame(index + 1, frame1)
        noise = self.noise_for(seed, enc0.geometry)
        out = interpolate(self.model, enc0, enc1, frame_difference(frame0, frame1), noise, self.sampler,
                          contexts=(ctx0, ctx1))
        return to_uint8(out)[0]

    def noise_for(self, seed: int, geometry: Geometry) -> Tensor:
        return make_noise(seed, geometry.latent_tokens, self.model.args.latent_dim)

    def interpolate_batch(self, frames0: np.ndarray | Tensor, frames1: np.ndarray | Tensor,
                          seeds: Sequence[int]) -> np.ndarray:
        """B pairs of one size with one noise seed each -> uint8 [B, H, W, 3]."""
        enc0, enc1 = encode_frames(self.model, frames0), encode_frames(self.model, frames1)
        if len(seeds) != len(enc0):
            raise InputError(f"{len(enc0)} pairs need {len(enc0)} seeds, got {len(seeds)}")
        noise = torch.cat([self.noise_for(s, enc0.geometry) for s in seeds])
        out = interpolate(self.model, enc0, enc1, frame_difference(frames0, frames1), noise, self.sampler)
        return to_uint8(out)

    def interpolate(self, frame0: np.ndarray | Tensor, frame1: np.ndarray | Tensor, seed: int = 0) -> np.ndarray:
        """One pair of uint8 [H, W, 3] frames -> the middle frame, uint8 [H, W, 3]."""
        return self.interpolate_batch(frame0, frame1, [seed])[0]

"""Shared by the video tests: frames written to a file through `VideoWriter`."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from edensplit.video.writing import VideoWriter


def write_video(path: Path, frames: np.ndarray, rate: Fraction, codec: str) -> None:
    """Write `frames` ([N, H, W, 3] uint8) to `path` at `rate` with `codec`, and check that every one went in."""
    with VideoWriter(path, rate, frames.shape[2], frames.shape[1], codec=codec) as writer:
        for f in frames:
            writer.write(f)
    assert writer.frames_written == len(frames)

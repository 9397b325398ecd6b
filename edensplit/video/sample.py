"""A short deterministic synthetic clip (moving shapes on a gradient) for the demo, benchmarks and tests."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from edensplit.errors import ErrorCode, InputError
from edensplit.video.frames import PathLike
from edensplit.video.writing import VideoWriter

__all__ = ["make_sample_clip", "sample_middle_frame"]


def _bounce(x: float, lo: float, hi: float) -> float:
    """`x` folded back and forth into [lo, hi] (a triangle wave), so shapes bounce off the edges."""
    span = hi - lo
    if span <= 0:
        return lo
    m = (x - lo) % (2 * span)
    return lo + (m if m <= span else 2 * span - m)


def _sample_frame(k: float, width: int, height: int) -> np.ndarray:
    """Frame k of the sample clip (fractional k: the picture at that time): a gradient with a disc, a square
    and a bar moving a few pixels a frame."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = xx / max(width - 1, 1), yy / max(height - 1, 1)
    img = np.stack([40 + 120 * u, 60 + 100 * v, 150 - 60 * u + 20 * v], axis=-1)
    s = max(min(width, height), 8)

    def paint(mask: np.ndarray, colour: tuple[int, int, int]) -> None:  # soft-edged alpha blend
        img[:] = img * (1 - mask[..., None]) + np.asarray(colour, np.float32) * mask[..., None]

    r = s * 0.14  # disc moving right, 3 px a frame
    cx, cy = _bounce(r + 2 + 3 * k, r, width - r), height * 0.35
    paint(np.clip(r + 0.5 - np.hypot(xx - cx, yy - cy), 0, 1), (235, 70, 50))
    h = s * 0.11  # square moving down-left, 2 px a frame each way
    qx, qy = _bounce(width * 0.7 - 2 * k, h, width - h), _bounce(height * 0.2 + 2 * k, h, height - h)
    paint(np.clip(h + 0.5 - np.maximum(abs(xx - qx), abs(yy - qy)), 0, 1), (250, 220, 40))
    bw, bh = s * 0.25, s * 0.05  # bar moving left, 4 px a frame
    bx, by = _bounce(width * 0.6 - 4 * k, bw, width - bw), height * 0.78
    paint(np.clip(np.minimum(bw + 0.5 - abs(xx - bx), bh + 0.5 - abs(yy - by)), 0, 1), (40, 200, 230))
    return np.clip(np.floor(img + 0.5), 0, 255).astype(np.uint8)


def sample_middle_frame(k: int, width: int, height: int) -> np.ndarray:
    """The true middle frame between the sample clip's frames k and k + 1: the picture at time k + 1/2."""
    return _sample_frame(k + 0.5, width, height)


def make_sample_clip(path: PathLike, n_frames: int = 12, width: int = 256, height: int = 144,
                     rate: Fraction = Fraction(24)) -> Path:
    """Write a short deterministic synthetic clip (moving shapes on a gradient) to `path`; returns the path.

    `.mkv` is written losslessly with ffv1, anything else with libx264.
    """
    if n_frames < 1:
        raise InputError(f"n_frames must be at least 1, got {n_frames}", code=ErrorCode.INVALID_PARAMETER)
    p = Path(path)
    codec = "ffv1" if p.suffix.lower() == ".mkv" else "libx264"
    with VideoWriter(p, rate, width, height, codec=codec) as writer:
        for k in range(n_frames):
            writer.write(_sample_frame(k, width, height))
    return p

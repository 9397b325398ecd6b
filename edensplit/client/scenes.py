"""Scene cuts and still frames: the pairs of a video that the model should not be asked to interpolate.

EDEN invents a morph between any two frames; across a hard cut that is a blend of two unrelated shots,
and between two identical frames it is wasted work. A pair is classified before anything is sent:

- **still**: the two decoded frames are bit-equal. The earlier frame is repeated, no model call.
- **cut**: the cut score (below) is above the threshold (default `DEFAULT_THRESHOLD`). The earlier frame
  is repeated (the output holds the old shot until the new one starts), no model call.
- otherwise the pair is interpolated.

The cut score compares small thumbnails: each frame's luma (ITU-R 601 weights), box-averaged to
`THUMB_WIDTH` pixels wide and blurred with a [1, 2, 1] kernel each way (box averaging alone aliases fine
texture, which then changes under a sub-pixel pan). The second thumbnail is aligned to the first by the
best of a few whole-pixel translations (zero, and the strongest peaks of their phase correlation, up to a
quarter of the thumbnail each way), refined by quarter-pixel offsets (bilinear), so a camera pan, even a
fast one, is compensated. The score is the mean absolute difference over the overlap at the best
alignment, divided by the frames' contrast (their mean absolute deviation from their own mean, averaged,
at least `CONTRAST_FLOOR` grey levels, so that flat, dark, noisy frames do not amplify noise):

    score = min over shifts d of mean |A(x) - B(x - d)| / max((MAD(A) + MAD(B)) / 2, CONTRAST_FLOOR)

Unrelated shots score near or above 1 (two independent images differ by about their own spread); the
same shot with motion scores well below (only what moved differs, and a pan is aligned away). Measured
on the test footage (tests/client/test_scenes.py), 96x72 to 854x480: pans of 2-8 px and of 1/8 of the
width a frame <= 0.11, a talking head <= 0.08, the sample clip <= 0.17; hard cuts 1.33-1.57. The
default threshold, 0.5, is ~3x the worst motion and ~2.7x below the weakest cut. The metric costs 1-3 ms
a pair whatever the frame size, and each frame's thumbnail is made once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

THUMB_WIDTH = 64
"""Thumbnails are this many pixels wide (narrower frames are used at their own width)."""
MAX_SHIFT = 0.25
"""The largest translation tried, as a fraction of the thumbnail's width and height."""
PEAKS = 4
"""Phase-correlation peaks tried as alignments, besides no shift."""
SUBPIXEL = (-0.5, -0.25, 0.0, 0.25, 0.5)
"""Fractional offsets (thumbnail pixels, each axis) tried around the best whole-pixel alignment."""
CONTRAST_FLOOR = 8.0
"""Grey levels: the least contrast a score is divided by."""
DEFAULT_THRESHOLD = 0.5
"""A pair scoring above this is a cut (`--scene_threshold`)."""

CUT, STILL = "cut", "still"


def _blur(thumb: np.ndarray) -> np.ndarray:
    """A [1, 2, 1] / 4 blur along both axes (edges repeated)."""
    for axis in (0, 1):
        if thumb.shape[axis] < 3:
            continue
        padded = np.concatenate([thumb.take([0], axis), thumb, thumb.take([-1], axis)], axis=axis)
        n = thumb.shape[axis]
        thumb = (padded.take(range(0, n), axis) + 2 * padded.take(range(1, n + 1), axis)
                 + padded.take(range(2, n + 2), axis)) / 4
    return thumb


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """A uint8 RGB frame's luma, box-averaged to THUMB_WIDTH wide and blurred [1, 2, 1], as float32 [h, w]."""
    height, width = frame.shape[:2]
    tw = min(THUMB_WIDTH, width)
    th = max(round(height * tw / width), 1)
    img = Image.fromarray(np.ascontiguousarray(frame)).convert("L")
    return _blur(np.asarray(img.resize((tw, th), Image.Resampling.BOX), dtype=np.float32)).astype(np.float32)


def _shifts(a: np.ndarray, b: np.ndarray) -> list[tuple[int, int]]:
    """Candidate alignments (dy, dx), b(x - d) against a(x): none, then the strongest phase-correlation peaks."""
    h, w = a.shape
    window = np.outer(np.hanning(h), np.hanning(w)) if h > 2 and w > 2 else np.ones((h, w))
    fa = np.fft.rfft2((a - a.mean()) * window)
    fb = np.fft.rfft2((b - b.mean()) * window)
    cross = fa * np.conj(fb)
    cross /= np.abs(cross) + 1e-9
    corr = np.fft.irfft2(cross, s=(h, w))
    limit_y, limit_x = int(h * MAX_SHIFT), int(w * MAX_SHIFT)
    shifts = [(0, 0)]
    for flat in np.argsort(corr, axis=None)[::-1][: PEAKS * 4]:
        y, x = divmod(int(flat), w)
        dy, dx = (y + h // 2) % h - h // 2, (x + w // 2) % w - w // 2
        if abs(dy) <= limit_y and abs(dx) <= limit_x and (dy, dx) not in shifts:
            shifts.append((dy, dx))
            if len(shifts) > PEAKS:
                break
    return shifts


def _aligned_difference(a: np.ndarray, b: np.ndarray, dy: int, dx: int) -> float:
    """Mean |a(y, x) - b(y - dy, x - dx)| over where both are defined."""
    h, w = a.shape
    y0, y1, x0, x1 = max(0, dy), min(h, h + dy), max(0, dx), min(w, w + dx)
    return float(np.abs(a[y0:y1, x0:x1] - b[y0 - dy: y1 - dy, x0 - dx: x1 - dx]).mean())


def contrast(thumb: np.ndarray) -> float:
    """A thumbnail's mean absolute deviation from its mean, in grey levels."""
    return float(np.abs(thumb - thumb.mean()).mean())


def _subpixel_difference(a: np.ndarray, b: np.ndarray, dy: int, dx: int) -> float:
    """The least mean |a(x) - b(x - d - f)| over fractional offsets f in SUBPIXEL x SUBPIXEL (b bilinear), within
    a one-pixel margin of the overlap at whole shift d."""
    h, w = a.shape
    y0, y1, x0, x1 = max(0, dy) + 1, min(h, h + dy) - 1, max(0, dx) + 1, min(w, w + dx) - 1
    if y1 <= y0 or x1 <= x0:
        return _aligned_difference(a, b, dy, dx)
    target = a[y0:y1, x0:x1]
    best = float("inf")
    for fy in SUBPIXEL:
        sy = 1 if fy > 0 else -1  # b(y - fy) = (1 - |fy|) b(y) + |fy| b(y - sign(fy))
        rows = b[y0 - dy: y1 - dy] * (1 - abs(fy)) + b[y0 - dy - sy: y1 - dy - sy] * abs(fy)
        for fx in SUBPIXEL:
            sx = 1 if fx > 0 else -1
            moved = rows[:, x0 - dx: x1 - dx] * (1 - abs(fx)) + rows[:, x0 - dx - sx: x1 - dx - sx] * abs(fx)
            best = min(best, float(np.abs(target - moved).mean()))
    return best


def cut_score(a: np.ndarray, b: np.ndarray) -> float:
    """The cut score of two thumbnails (see the module docstring): about 1 for unrelated shots, small within one."""
    if a.shape != b.shape:
        raise ValueError(f"thumbnails of different shapes: {a.shape} and {b.shape}")
    dy, dx = min(_shifts(a, b), key=lambda d: _aligned_difference(a, b, *d))
    best = min(_aligned_difference(a, b, dy, dx), _subpixel_difference(a, b, dy, dx))
    return best / max((contrast(a) + contrast(b)) / 2, CONTRAST_FLOOR)


def frame_cut_score(frame0: np.ndarray, frame1: np.ndarray) -> float:
    """The cut score of two uint8 RGB frames."""
    return cut_score(thumbnail(frame0), thumbnail(frame1))


@dataclass
class SceneCounts:
    """What a job's scene detection found, in input pairs."""

    cuts: int = 0
    stills: int = 0


class SceneDetector:
    """Classifies consecutive input pairs: STILL (bit-equal), CUT (score above `threshold`) or None.

    Thread-safe; remembers the last frame's thumbnail, so a stream's frames are each thumbnailed once."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD):
        if not threshold > 0:
            raise ValueError(f"the scene threshold must be positive, got {threshold}")
        self.threshold = threshold
        self.counts = SceneCounts()
        self.highest_kept = 0.0  # the highest score of a pair interpolated (how close the shots came to a cut)
        self.lowest_cut: float | None = None  # the lowest score of a pair called a cut
        self.seconds = 0.0  # spent classifying
        self._last: tuple[np.ndarray, np.ndarray] | None = None  # (frame, its thumbnail)
        self._lock = threading.Lock()

    def _thumb(self, frame: np.ndarray) -> np.ndarray:
        with self._lock:
            last = self._last
        if last is not None and last[0] is frame:
            return last[1]
        return thumbnail(frame)

    def classify(self, frame0: np.ndarray, frame1: np.ndarray) -> str | None:
        """STILL, CUT or None (interpolate) for the pair (frame0, frame1); counted."""
        started = time.perf_counter()
        if frame0.shape == frame1.shape and np.array_equal(frame0, frame1):
            with self._lock:
                self.counts.stills += 1
                self.seconds += time.perf_counter() - started
            return STILL
        thumb0, thumb1 = self._thumb(frame0), thumbnail(frame1)
        score = cut_score(thumb0, thumb1)
        with self._lock:
            self._last = (frame1, thumb1)
            self.seconds += time.perf_counter() - started
            if score > self.threshold:
                self.counts.cuts += 1
                self.lowest_cut = score if self.lowest_cut is None else min(self.lowest_cut, score)
                return CUT
            self.highest_kept = max(self.highest_kept, score)
        return None

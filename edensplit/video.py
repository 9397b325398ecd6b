"""Reading and writing video and still frames for the client, through PyAV and Pillow.

The client turns a video into a stream of uint8 RGB `[H, W, 3]` frames, sends pairs off to be
interpolated, and writes the result back out at a multiplied frame rate. This module is that I/O and
nothing else: `probe_video` (size, exact rate, frame count), `read_frames` (a generator that decodes one
frame at a time, so memory does not grow with the video's length), `VideoWriter` (frames out at an
exact rational rate), PNG helpers, a synthetic sample clip for the demo and tests, and contact sheets
for looking at results.

Rates are `fractions.Fraction` end to end: NTSC 30000/1001 doubled is 60000/1001, never 59.94.

Codecs (`VideoWriter(codec=...)`):

- ``libx264`` (default, lossy, `crf`): yuv420p for even sizes. x264 cannot encode 4:2:0 at an odd
  width or height, so odd sizes are written as yuv444p (High 4:4:4 profile) instead of padding: the
  video keeps the frames' exact size, at the cost of players that only handle 4:2:0 (browsers,
  QuickTime); ffmpeg, mpv and VLC play it. If this PyAV build has no libx264, ``mpeg4`` is used and a
  warning is logged.
- ``libx264rgb`` (lossless, qp 0, rgb24) and ``ffv1`` (lossless, bgr0; use `.mkv`): decoding gives back
  the exact RGB frames written (`LOSSLESS_CODECS`).

YUV output is BT.709 limited range and tagged as such, so players and `read_frames` (which converts
with the frame's own colorspace) agree. `read_frames` asks swscale for exact rounding and full chroma
interpolation: its fast default YUV -> RGB path reads 4:2:0 video about 1.5 levels too dark.

Containers follow the file suffix (`.mp4`, `.mkv`, `.mov`). Matroska stores timestamps in
milliseconds and its frame-rate field cannot hold 60000/1001 exactly (FFmpeg reads it back as
19001/317), so the writer also tags the stream with the exact rate and `probe_video` prefers that tag
when it agrees with the container; for files from elsewhere, a rate within one part in a million of
a whole, half or NTSC (n * 1000/1001) rate is snapped to it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace, Interpolation
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from edensplit.errors import ErrorCode, InputError

__all__ = [
    "LOSSLESS_CODECS", "VideoInfo", "VideoWriter", "codec_available", "contact_sheet", "make_sample_clip",
    "probe_video", "read_frames", "read_png", "save_contact_sheet", "write_png",
]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

LOSSLESS_CODECS: frozenset[str] = frozenset({"ffv1", "libx264rgb"})
"""Codecs whose decoded frames equal, bit for bit, the RGB frames written."""

CODECS: tuple[str, ...] = ("libx264", "libx264rgb", "ffv1", "mpeg4")
"""Every codec `VideoWriter` accepts."""

CONTAINERS: dict[str, str] = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov"}
"""Output file suffix -> FFmpeg container format."""

RATE_TAG = "EDENSPLIT_FRAME_RATE"
"""Stream metadata key holding the exact rate, for containers (Matroska) that cannot store it."""

_FALLBACK_CODEC = "mpeg4"
_RGB_CODECS = frozenset({"libx264rgb", "ffv1"})
# YUV -> RGB with exact rounding and full chroma interpolation (about 10 ms a 1080p frame, not 2 ms).
_TO_RGB = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
_BT709 = 1  # AVCOL_PRI_BT709 / AVCOL_TRC_BT709
_FF_QP2LAMBDA = 118  # FFmpeg's scale from a quantiser to `global_quality`


def codec_available(name: str) -> bool:
    """Whether this PyAV build has an encoder called `name`."""
    return name in av.codecs_available


# --- reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    """A video stream's frame size, exact frame rate, and frame count (None when the container does not say)."""

    width: int
    height: int
    rate: Fraction
    frames: int | None


def _open_input(path: PathLike) -> tuple[av.container.InputContainer, av.VideoStream]:
    """Open `path` and its first video stream, or raise an InputError naming the path and the problem."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"video file not found: {p}", code=ErrorCode.INVALID_PARAMETER)
    if not p.is_file():
        raise InputError(f"not a video file: {p} is a directory or special file", code=ErrorCode.INVALID_PARAMETER)
    try:
        container = av.open(str(p), "r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"not a readable video: {p} ({reason})", code=ErrorCode.INVALID_PARAMETER) from None
    if not container.streams.video:
        container.close()
        raise InputError(f"not a video: {p} has no video stream", code=ErrorCode.INVALID_PARAMETER)
    return container, container.streams.video[0]


def _snap_rate(rate: Fraction) -> Fraction:
    """`rate`, or the nearest whole, half or NTSC (n * 1000/1001) rate if that is within one part in a million."""
    for near in (Fraction(round(rate)), Fraction(round(rate * 2), 2), Fraction(round(rate * 1001 / 1000) * 1000, 1001)):
        if near > 0 and abs(near - rate) <= rate / 1_000_000:
            return near
    return rate


def _stream_rate(stream: av.VideoStream) -> Fraction | None:
    """The stream's exact frame rate: the writer's tag when it agrees with the container, else its own rate."""
    measured = next((Fraction(r) for r in (stream.average_rate, stream.guessed_rate, stream.base_rate)
                     if r is not None and r > 0), None)
    tag = {k.upper(): v for k, v in stream.metadata.items()}.get(RATE_TAG)
    if tag is not None:
        try:
            tagged = Fraction(tag)
        except (ValueError, ZeroDivisionError):
            tagged = None
        # A stale tag (the file re-encoded at another rate) disagrees with the container: ignore it.
        if tagged is not None and tagged > 0 and (measured is None or abs(tagged - measured) <= tagged / 10_000):
            return tagged
    return None if measured is None else _snap_rate(measured)


def probe_video(path: PathLike) -> VideoInfo:
    """Size, exact frame rate and frame count of the first video stream in `path`."""
    container, stream = _open_input(path)
    try:
        ctx = stream.codec_context
        width, height = int(ctx.width), int(ctx.height)
        rate = _stream_rate(stream)
        frames = int(stream.frames) if stream.frames else None
    finally:
        container.close()
    if width <= 0 or height <= 0:
        raise InputError(f"not a usable video: {path} has no frame size", code=ErrorCode.INVALID_PARAMETER)
    if rate is None:
        raise InputError(f"not a usable video: {path} has no frame rate", code=ErrorCode.INVALID_PARAMETER)
    return VideoInfo(width=width, height=height, rate=rate, frames=frames)


def read_frames(path: PathLike) -> Iterator[np.ndarray]:
    """Yield the first video stream's frames one at a time as contiguous uint8 RGB `[H, W, 3]` arrays.

    A generator: the file is opened on the first `next()` (so errors surface there; call `probe_video`
    first to fail early) and closed when the frames run out or the generator is closed.
    """
    container, stream = _open_input(path)
    stream.thread_type = "AUTO"
    count = 0
    try:
        try:
            for frame in container.decode(stream):
                count += 1
                yield np.ascontiguousarray(frame.to_ndarray(format="rgb24", interpolation=_TO_RGB))
        except av.FFmpegError as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise InputError(f"video {path} failed to decode after {count} frames ({reason})",
                             code=ErrorCode.INVALID_PARAMETER) from None
    finally:
        container.close()


# --- writing ---------------------------------------------------------------------------------------


def _check_frame(frame: np.ndarray, what: str = "frame") -> np.ndarray:
    """`frame` as a contiguous uint8 `[H, W, 3]` array, or an InputError saying what is wrong."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        desc = f"{frame.dtype} {list(frame.shape)}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise InputError(f"{what} must be a uint8 [H, W, 3] RGB array, got {desc}", code=ErrorCode.INVALID_PARAMETER)
    return np.ascontiguousarray(frame)


class VideoWriter:
    """Write uint8 RGB frames to a video at an exact rational frame rate; a context manager.

    Frame i gets pts i in a stream time base of 1/rate, so the file plays at exactly `rate` fps.
    `codec` is one of `CODECS`; `crf` is libx264's quality (0-51, lower is better); the lossless codecs
    ignore it. `self.codec` and `self.pix_fmt` say what was actually used.
    """

    def __init__(self, path: PathLike, rate: Fraction, width: int, height: int, codec: str = "libx264",
                 crf: int = 18):
        self.path = Path(path)
        fmt = CONTAINERS.get(self.path.suffix.lower())
        if fmt is None:
            raise InputError(f"cannot write video {self.path}: unknown suffix {self.path.suffix!r} "
                             f"(use one of {', '.join(CONTAINERS)})", code=ErrorCode.INVALID_PARAMETER)
        try:  # a float such as 29.97 means its decimal value, not its binary expansion
            self.rate = Fraction(str(rate)) if isinstance(rate, float) else Fraction(rate)
        except (TypeError, ValueError):
            raise InputError(f"frame rate must be a number, got {rate!r}", code=ErrorCode.INVALID_PARAMETER) from None
        if self.rate <= 0:
            raise InputError(f"frame rate must be positive, got {self.rate}", code=ErrorCode.INVALID_PARAMETER)
        if int(width) <= 0 or int(height) <= 0:
            raise InputError(f"video size must be positive, got {width}x{height}", code=ErrorCode.INVALID_PARAMETER)
        if not 0 <= int(crf) <= 51:
            raise InputError(f"crf must be in 0..51, got {crf}", code=ErrorCode.INVALID_PARAMETER)
        self.width, self.height, self.crf = int(width), int(height), int(crf)
        self.codec = self._resolve_codec(codec)
        self.pix_fmt = self._pix_fmt()
        self.frames_written = 0
        if not self.path.parent.is_dir():  # PyAV only opens the file at the first frame: check now
            raise InputError(f"cannot create video {self.path}: no folder {self.path.parent}",
                             code=ErrorCode.INVALID_PARAMETER)
        self._container = av.open(str(self.path), "w", format=fmt)
        try:
            self._stream = self._add_stream()
        except (av.FFmpegError, ValueError) as exc:
            self._container.close()
            self.path.unlink(missing_ok=True)
            raise InputError(f"cannot write {self.codec} video to {self.path}: {exc}",
                             code=ErrorCode.INVALID_PARAMETER) from None
        self._closed = False

    @staticmethod
    def _resolve_codec(codec: str) -> str:
        """The encoder to use for `codec`: libx264 falls back to mpeg4 when missing; others must exist."""
        if codec not in CODECS:
            raise InputError(f"unknown video codec {codec!r} (use one of {', '.join(CODECS)})",
                             code=ErrorCode.INVALID_PARAMETER)
        if codec_available(codec):
            return codec
        if codec == "libx264" and codec_available(_FALLBACK_CODEC):
            log.warning("this PyAV build has no libx264 encoder; writing %s instead (lower quality)", _FALLBACK_CODEC)
            return _FALLBACK_CODEC
        have = [c for c in CODECS if codec_available(c)]
        raise InputError(f"this PyAV build has no {codec} encoder (available: {', '.join(have) or 'none'})",
                         code=ErrorCode.INVALID_PARAMETER)

    def _pix_fmt(self) -> str:
        """The encoder's pixel format: RGB for the lossless codecs, 4:2:0 YUV (4:4:4 at odd sizes) otherwise."""
        if self.codec == "libx264rgb":
            return "rgb24"
        if self.codec == "ffv1":
            return "bgr0"
        if self.codec == "libx264" and (self.width % 2 or self.height % 2):
            return "yuv444p"  # x264 rejects 4:2:0 at odd sizes; keep the exact size rather than pad
        return "yuv420p"

    def _add_stream(self) -> av.VideoStream:
        """Add the video stream: exact time base, rate tag, colour tags and the codec's quality options."""
        stream = self._container.add_stream(self.codec, rate=self.rate)
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, self.pix_fmt
        stream.time_base = Fraction(1) / self.rate
        stream.metadata[RATE_TAG] = str(self.rate)
        if self.codec not in _RGB_CODECS:  # YUV: BT.709 limited range, tagged so players and read_frames agree
            ctx = stream.codec_context
            ctx.colorspace, ctx.color_range = Colorspace.ITU709, ColorRange.MPEG
            ctx.color_primaries = ctx.color_trc = _BT709
        if self.codec == "libx264":
            stream.options = {"crf": str(self.crf)}
        elif self.codec == "libx264rgb":
            stream.options = {"qp": "0"}
        elif self.codec == _FALLBACK_CODEC:  # fixed quantiser, roughly following crf (18 -> q 3)
            stream.codec_context.qscale = True
            stream.codec_context.global_quality = _FF_QP2LAMBDA * min(max(round(self.crf / 6), 2), 31)
        return stream

    def write(self, frame: np.ndarray) -> None:
        """Encode one uint8 RGB `[height, width, 3]` frame as the next frame of the video."""
        if self._closed:
            raise InputError(f"video {self.path} is already closed", code=ErrorCode.INVALID_PARAMETER)
        frame = _check_frame(frame)
        if frame.shape[:2] != (self.height, self.width):
            raise InputError(f"frame is {frame.shape[1]}x{frame.shape[0]}, video {self.path} is "
                             f"{self.width}x{self.height}", code=ErrorCode.INVALID_PARAMETER)
        vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
        if self.codec not in _RGB_CODECS:
            vf = vf.reformat(format=self.pix_fmt, dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG)
        vf.pts = self.frames_written
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and close the file; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# --- stills ----------------------------------------------------------------------------------------


def write_png(path: PathLike, frame: np.ndarray) -> Path:
    """Save a uint8 RGB `[H, W, 3]` frame as a (lossless) PNG; returns the path."""
    p = Path(path)
    Image.fromarray(_check_frame(frame)).save(p, format="PNG")
    return p


def read_png(path: PathLike) -> np.ndarray:
    """Read a PNG (or any image Pillow opens) as a contiguous uint8 RGB `[H, W, 3]` array."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"image file not found: {p}", code=ErrorCode.INVALID_PARAMETER)
    try:
        with Image.open(p) as img:
            return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"not a readable image: {p} ({exc})", code=ErrorCode.INVALID_IMAGE) from None


# --- sample clip -----------------------------------------------------------------------------------


def _bounce(x: float, lo: float, hi: float) -> float:
    """`x` folded back and forth into [lo, hi] (a triangle wave), so shapes bounce off the edges."""
    span = hi - lo
    if span <= 0:
        return lo
    m = (x - lo) % (2 * span)
    return lo + (m if m <= span else 2 * span - m)


def _sample_frame(k: int, width: int, height: int) -> np.ndarray:
    """Frame k of the sample clip: a gradient with a disc, a square and a bar moving a few pixels a frame."""
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


# --- contact sheets --------------------------------------------------------------------------------

GAP = 4
"""Pixels between (and around) the cells of a contact sheet."""
HEADER = 16
"""Height of the label band at the top of a contact sheet with labels."""
_BACKGROUND = (24, 24, 24)
_TEXT = (235, 235, 235)


def contact_sheet(rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str] | None = None) -> np.ndarray:
    """Lay rows of uint8 RGB frames out in a grid on a dark background, as one uint8 `[H, W, 3]` image.

    Every cell is as large as the largest frame (smaller frames sit top-left), with `GAP` pixels between
    and around cells: width = cols * cell_w + (cols + 1) * GAP, height = rows * cell_h + (rows + 1) * GAP,
    plus `HEADER` rows when `labels` (one per column, at most as many as columns) are given.
    """
    grid = [[_check_frame(f, "contact sheet frame") for f in row] for row in rows]
    if not grid or not any(grid):
        raise InputError("contact sheet needs at least one frame", code=ErrorCode.INVALID_PARAMETER)
    n_cols = max(len(row) for row in grid)
    if labels is not None and len(labels) > n_cols:
        raise InputError(f"{len(labels)} labels for {n_cols} columns", code=ErrorCode.INVALID_PARAMETER)
    cell_h = max(f.shape[0] for row in grid for f in row)
    cell_w = max(f.shape[1] for row in grid for f in row)
    top = HEADER if labels else 0
    sheet = np.empty((top + len(grid) * cell_h + (len(grid) + 1) * GAP, n_cols * cell_w + (n_cols + 1) * GAP, 3),
                     np.uint8)
    sheet[:] = _BACKGROUND
    for i, row in enumerate(grid):
        y = top + GAP + i * (cell_h + GAP)
        for j, f in enumerate(row):
            x = GAP + j * (cell_w + GAP)
            sheet[y: y + f.shape[0], x: x + f.shape[1]] = f
    if labels:
        img = Image.fromarray(sheet)
        draw, font = ImageDraw.Draw(img), ImageFont.load_default()
        for j, text in enumerate(labels):
            draw.text((GAP + j * (cell_w + GAP), 2), str(text), fill=_TEXT, font=font)
        sheet = np.asarray(img, dtype=np.uint8).copy()
    return sheet


def save_contact_sheet(path: PathLike, rows: Sequence[Sequence[np.ndarray]],
                       labels: Sequence[str] | None = None) -> Path:
    """Write `contact_sheet(rows, labels)` to `path` as a PNG; returns the path."""
    return write_png(path, contact_sheet(rows, labels))

"""Reading video: `probe_video` (size, exact frame rate, frame count) and `read_frames` (one frame at a time).

`read_frames` is a generator that decodes one frame at a time, so memory does not grow with the video's length.
Rates are `fractions.Fraction` end to end: NTSC 30000/1001 doubled is 60000/1001, never 59.94. Matroska's
frame-rate field cannot hold 60000/1001 exactly (FFmpeg reads it back as 19001/317), so `VideoWriter` also tags
the stream with the exact rate (`RATE_TAG`) and `probe_video` prefers that tag when it agrees with the
container; for files from elsewhere, a rate within one part in a million of a whole, half or NTSC
(n * 1000/1001) rate is snapped to it. `read_frames` converts with the frame's own colorspace and asks swscale
for exact rounding and full chroma interpolation: its fast default YUV -> RGB path reads 4:2:0 video about 1.5
levels too dark.

Input videos are untrusted: FFmpeg opens them with the `file` protocol only and only the demuxers of real video
containers (`DEMUXERS`), checked before a demuxer reads its header. A playlist (HLS), a concat list or any other
format that makes FFmpeg open further files or URLs is refused, and nothing it names is opened.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import Interpolation

from edensplit.errors import ErrorCode, InputError
from edensplit.video.frames import PathLike

__all__ = ["DEMUXERS", "RATE_TAG", "VideoInfo", "open_video", "probe_video", "read_frames"]

RATE_TAG = "EDENSPLIT_FRAME_RATE"
"""Stream metadata key holding the exact rate, for containers (Matroska) that cannot store it."""

DEMUXERS: tuple[str, ...] = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "flv", "mpegts",
                              "mpeg", "ogg", "asf", "mxf", "nut", "yuv4mpegpipe", "ivf", "gif")
"""The FFmpeg demuxers an input video may be read with: containers whose demuxers open no other file (MP4/MOV,
Matroska/WebM, AVI, FLV, MPEG-TS/PS, Ogg, ASF/WMV, MXF, NUT, Y4M, IVF, GIF). Not hls, dash, concat, image2
(file patterns), sdp/rtp/rtsp or any other."""

_SAFE_OPEN = {"protocol_whitelist": "file", "format_whitelist": ",".join(DEMUXERS)}
_PLAYLISTS = {
    b"#EXTM3U": "an HLS/M3U playlist", b"ffconcat": "an FFmpeg concat list", b"<?xml": "an XML file (a DASH manifest?)",
    b"<MPD": "a DASH manifest", b"[playlist]": "a PLS playlist", b"v=0": "an SDP session file",
}
"""How a refused input is named, by its first bytes (FFmpeg does not say which demuxer it refused)."""

# YUV -> RGB with exact rounding and full chroma interpolation (about 10 ms a 1080p frame, not 2 ms).
_TO_RGB = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


@dataclass(frozen=True)
class VideoInfo:
    """A video stream's frame size, exact frame rate, and frame count (None when the container does not say)."""

    width: int
    height: int
    rate: Fraction
    frames: int | None
    start: Fraction = field(default=Fraction(0), compare=False)  # the first frame's time, in seconds
    duration: Fraction | None = field(default=None, compare=False)  # seconds, when the container says

    @property
    def frames_estimate(self) -> int | None:
        """The frame count, or one estimated from the duration and rate (Matroska stores no count)."""
        if self.frames:
            return self.frames
        return None if self.duration is None else max(round(self.duration * self.rate), 1)


def open_video(path: PathLike) -> av.container.InputContainer:
    """Open the file `path` for reading with the `file` protocol only and only the `DEMUXERS` (the demuxer is
    checked after FFmpeg's probe, before it reads anything): an InputError otherwise, naming what the file is."""
    p = Path(path)
    try:
        # "file:" so that a name such as "concat:a|b" or "http:x" is a file name, never another protocol
        return av.open(f"file:{p}", "r", container_options=dict(_SAFE_OPEN))
    except av.ArgumentError:  # EINVAL: FFmpeg's "Format not on whitelist"
        raise InputError(f"not a readable video: {p} ({_what_is(p)}: edensplit opens only video containers: "
                         "MP4/MOV, Matroska/WebM, AVI, FLV, MPEG-TS/PS, Ogg, ASF, MXF, NUT, Y4M, IVF, GIF; never "
                         "playlists or lists that make FFmpeg open other files)",
                         code=ErrorCode.INVALID_PARAMETER) from None
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"not a readable video: {p} ({reason})", code=ErrorCode.INVALID_PARAMETER) from None


def _what_is(path: Path) -> str:
    """What a refused input looks like, from its first bytes: a kind of playlist, or another format."""
    try:
        with open(path, "rb") as fp:
            head = fp.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError:
        head = b""
    return next((what for magic, what in _PLAYLISTS.items() if head.startswith(magic)),
                "a format FFmpeg reads with another demuxer")


def _open_input(path: PathLike) -> tuple[av.container.InputContainer, av.VideoStream]:
    """Open `path` and its first video stream, or raise an InputError naming the path and the problem."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"video file not found: {p}", code=ErrorCode.INVALID_PARAMETER)
    if not p.is_file():
        raise InputError(f"not a video file: {p} is a directory or special file", code=ErrorCode.INVALID_PARAMETER)
    container = open_video(p)
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
        tb = stream.time_base
        start = Fraction(stream.start_time) * tb if stream.start_time is not None and tb else Fraction(0)
        if stream.duration is not None and tb:
            duration: Fraction | None = Fraction(stream.duration) * tb
        else:
            duration = Fraction(container.duration, av.time_base) if container.duration else None
    finally:
        container.close()
    if width <= 0 or height <= 0:
        raise InputError(f"not a usable video: {path} has no frame size", code=ErrorCode.INVALID_PARAMETER)
    if rate is None:
        raise InputError(f"not a usable video: {path} has no frame rate", code=ErrorCode.INVALID_PARAMETER)
    return VideoInfo(width=width, height=height, rate=rate, frames=frames, start=start, duration=duration)


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

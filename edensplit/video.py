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

Audio and subtitle streams (`VideoWriter(copy_from=...)`) go from the input into the output unchanged: their
packets are remuxed, interleaved with the new video as it is written (memory stays flat), their timestamps
kept relative to the first video frame, so they stay in sync with it. Only what the output container cannot
hold is converted, and said so: audio re-encoded with the container's default codec (AAC for MP4/MOV), text
subtitles carried over as the container's text format (mov_text in MP4/MOV, SubRip in Matroska); bitmap
subtitles such a container cannot hold are left out.

Image folders (`list_images`, `read_images`): numbered images in, read one at a time.

Containers follow the file suffix (`.mp4`, `.mkv`, `.mov`). Matroska stores timestamps in
milliseconds and its frame-rate field cannot hold 60000/1001 exactly (FFmpeg reads it back as
19001/317), so the writer also tags the stream with the exact rate and `probe_video` prefers that tag
when it agrees with the container; for files from elsewhere, a rate within one part in a million of
a whole, half or NTSC (n * 1000/1001) rate is snapped to it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace, Interpolation
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from edensplit.errors import ErrorCode, InputError

__all__ = [
    "IMAGE_SUFFIXES", "LOSSLESS_CODECS", "StreamCopier", "VideoInfo", "VideoWriter", "codec_available",
    "contact_sheet", "list_images", "make_sample_clip", "probe_video", "read_frames", "read_images", "read_png",
    "save_contact_sheet", "write_png",
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
    start: Fraction = field(default=Fraction(0), compare=False)  # the first frame's time, in seconds
    duration: Fraction | None = field(default=None, compare=False)  # seconds, when the container says

    @property
    def frames_estimate(self) -> int | None:
        """The frame count, or one estimated from the duration and rate (Matroska stores no count)."""
        if self.frames:
            return self.frames
        return None if self.duration is None else max(round(self.duration * self.rate), 1)


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
    ignore it. `pix_fmt` overrides the encoder's pixel format (any the encoder takes; default: see
    `_pix_fmt`). `copy_from` names an input whose audio and subtitle streams go into the file too
    (`StreamCopier`; `start` is that input's first video frame time, `say` hears what had to be converted).
    `self.codec` and `self.pix_fmt` say what was actually used.
    """

    def __init__(self, path: PathLike, rate: Fraction, width: int, height: int, codec: str = "libx264",
                 crf: int = 18, pix_fmt: str | None = None, copy_from: PathLike | None = None,
                 start: Fraction = Fraction(0), say: Callable[[str], None] | None = None):
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
        self.pix_fmt = self._check_pix_fmt(pix_fmt) if pix_fmt else self._pix_fmt()
        self._yuv = not av.VideoFormat(self.pix_fmt).is_rgb
        self.frames_written = 0
        if not self.path.parent.is_dir():  # PyAV only opens the file at the first frame: check now
            raise InputError(f"cannot create video {self.path}: no folder {self.path.parent}",
                             code=ErrorCode.INVALID_PARAMETER)
        self._container = av.open(str(self.path), "w", format=fmt)
        self.copier: StreamCopier | None = None
        try:
            self._stream = self._add_stream()
            if copy_from is not None:
                self.copier = StreamCopier(copy_from, self._container, fmt, offset=start, say=say)
        except (av.FFmpegError, ValueError) as exc:
            self._container.close()
            self.path.unlink(missing_ok=True)
            raise InputError(f"cannot write {self.codec} video to {self.path}: {exc}",
                             code=ErrorCode.INVALID_PARAMETER) from None
        except BaseException:
            self._container.close()
            self.path.unlink(missing_ok=True)
            raise
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

    def _check_pix_fmt(self, pix_fmt: str) -> str:
        """`pix_fmt` if the encoder takes it (and, for libx264, the frame size suits its chroma subsampling)."""
        formats = [f.name for f in av.Codec(self.codec, "w").video_formats or ()]
        if pix_fmt not in formats:
            raise InputError(f"the {self.codec} encoder cannot write pixel format {pix_fmt!r} (it takes "
                             f"{', '.join(formats)})", code=ErrorCode.INVALID_PARAMETER)
        fmt = av.VideoFormat(pix_fmt)
        if self.codec == "libx264" and (fmt.chroma_width(self.width) * 2 == self.width + 1
                                        or fmt.chroma_height(self.height) * 2 == self.height + 1):
            raise InputError(f"libx264 cannot write {pix_fmt} (subsampled chroma) at the odd size "
                             f"{self.width}x{self.height}: use yuv444p", code=ErrorCode.INVALID_PARAMETER)
        return pix_fmt

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
        if self._yuv:  # YUV: BT.709 limited range, tagged so players and read_frames agree
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
        if self._yuv:
            vf = vf.reformat(format=self.pix_fmt, dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG)
        elif self.pix_fmt != "rgb24":
            vf = vf.reformat(format=self.pix_fmt)
        vf.pts = self.frames_written
        if self.copier is not None:  # the other streams' packets up to this frame's time, interleaved
            self.copier.feed_until(self.frames_written / self.rate)
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder (and the copied streams' rest) and close the file; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.copier is not None:
                self.copier.finish()
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            if self.copier is not None:
                self.copier.close()
            self._container.close()

    def abort(self) -> None:
        """Close without finishing (a failed job: the file is dropped or written again); nothing is flushed."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.copier is not None:
                self.copier.close()
        finally:
            with contextlib.suppress(av.FFmpegError, OSError, ValueError):
                self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# --- audio and subtitles ---------------------------------------------------------------------------

TEXT_SUBTITLES: frozenset[str] = frozenset({"subrip", "srt", "ass", "ssa", "mov_text", "webvtt", "text"})
"""Subtitle codecs whose text can be carried into another text format."""

_TEXT_TARGET = {"mp4": "mov_text", "mov": "mov_text", "matroska": "subrip"}
_ASS_TAG = re.compile(r"\{[^}]*\}")


def _can_hold(fmt: str, stream: av.stream.Stream) -> bool:
    """Whether container format `fmt` takes `stream`'s packets as they are (a header written in memory says)."""
    probe = av.open(io.BytesIO(), "w", format=fmt)
    try:
        probe.add_stream_from_template(stream)
        probe.start_encoding()
        return True
    except (av.FFmpegError, ValueError, TypeError):
        return False
    finally:
        with contextlib.suppress(av.FFmpegError, ValueError):
            probe.close()


def subtitle_text(codec: str, data: bytes) -> str:
    """The plain text of one text subtitle packet (SubRip/WebVTT text, an ASS event's Text field, mov_text)."""
    if codec == "mov_text":
        (length,) = struct.unpack(">H", data[:2]) if len(data) >= 2 else (0,)
        return data[2: 2 + length].decode("utf-8", "replace")
    text = data.decode("utf-8", "replace")
    if codec in ("ass", "ssa"):  # ReadOrder, Layer, Style, Name, MarginL, MarginR, MarginV, Effect, Text
        text = text.split(",", 8)[-1]
        text = _ASS_TAG.sub("", text).replace("\\N", "\n").replace("\\n", "\n").replace("\\h", " ")
    return text


def subtitle_packet(codec: str, text: str) -> bytes:
    """One packet of text subtitle codec `codec` (mov_text: a 16-bit length, then UTF-8; SubRip: UTF-8)."""
    data = text.encode("utf-8")
    return struct.pack(">H", len(data)) + data if codec == "mov_text" else data


@dataclass
class _Carried:
    """One input stream on its way out: copied as is, its text converted, or its audio re-encoded."""

    source: av.stream.Stream
    target: av.stream.Stream
    mode: str  # "copy", "text" (converted to the text subtitle codec `text_codec`) or "audio" (re-encoded)
    shift: int  # ticks of the source time base subtracted from every timestamp (the video's start)
    text_codec: str = ""


class StreamCopier:
    """The audio and subtitle streams of `source`, carried into an output container next to a new video.

    Packets are read from their own demuxer in file order and muxed as the video reaches their time
    (`feed_until`), so nothing accumulates; `finish` muxes the rest. Timestamps move by `offset` (the
    input video's first frame time), so audio keeps its place against the video's first frame. What the
    container cannot hold is converted (and said): audio re-encoded with the container's default audio
    codec, text subtitles to its text format; other subtitles are left out.
    """

    def __init__(self, source: PathLike, output: av.container.OutputContainer, fmt: str, *,
                 offset: Fraction = Fraction(0), say: Callable[[str], None] | None = None):
        say = say or (lambda message: None)
        self.notes: list[str] = []
        self._output = output
        self._input = av.open(str(source), "r")
        self._carried: dict[int, _Carried] = {}
        for stream in self._input.streams:
            if stream.type not in ("audio", "subtitle"):
                continue
            name = stream.codec_context.name if stream.codec_context else "unknown"
            what = f"{stream.type} stream #{stream.index} ({name})"
            tb = stream.time_base or Fraction(1, 1000)
            shift = round(offset / tb)
            text_codec = ""
            if _can_hold(fmt, stream):
                target = output.add_stream_from_template(stream)
                mode = "copy"
            elif stream.type == "subtitle" and name in TEXT_SUBTITLES and fmt in _TEXT_TARGET:
                text_codec = _TEXT_TARGET[fmt]
                target = output.add_mux_stream(text_codec)
                target.time_base = tb
                mode = "text"
                self.notes.append(f"{what} cannot go into {fmt} as it is: its text carried over as "
                                  f"{_TEXT_TARGET[fmt]} (styling dropped)")
            elif stream.type == "audio":
                codec = output.default_audio_codec
                target = output.add_stream(codec, rate=stream.sample_rate)
                target.layout = stream.layout
                mode = "audio"
                self.notes.append(f"{what} cannot go into {fmt} as it is: re-encoded as {codec}")
            else:
                self.notes.append(f"{what} cannot go into {fmt} and has no text to carry over: left out")
                continue
            for key, value in stream.metadata.items():
                if key.lower() in ("language", "title", "handler_name"):
                    target.metadata[key] = value
            self._carried[stream.index] = _Carried(stream, target, mode, shift, text_codec)
        for note in self.notes:
            say(note)
        self._packets = (self._input.demux(*[c.source for c in self._carried.values()])
                         if self._carried else iter(()))
        self._next: av.Packet | None = None
        self._done = not self._carried

    @property
    def streams(self) -> int:
        """How many streams are carried."""
        return len(self._carried)

    def _peek(self) -> av.Packet | None:
        """The next packet with a time (empty flush packets skipped), or None at the end."""
        while self._next is None and not self._done:
            packet = next(self._packets, None)
            if packet is None:
                self._done = True
            elif packet.size and (packet.dts is not None or packet.pts is not None):
                self._next = packet
        return self._next

    def feed_until(self, seconds: Fraction) -> None:
        """Mux every packet whose time (after the shift) is at or before `seconds`."""
        while (packet := self._peek()) is not None:
            carried = self._carried[packet.stream.index]
            ticks = packet.dts if packet.dts is not None else packet.pts
            if (ticks - carried.shift) * packet.time_base > seconds:
                return
            self._next = None
            self._mux(carried, packet)

    def _mux(self, carried: _Carried, packet: av.Packet) -> None:
        """One packet into the output: as it is, as converted text, or decoded and re-encoded."""
        if carried.mode == "audio":
            for frame in packet.decode():
                if frame.pts is not None:
                    frame.pts -= carried.shift
                for encoded in carried.target.encode(frame):
                    self._output.mux(encoded)
            return
        if carried.mode == "text":
            text = subtitle_text(carried.source.codec_context.name, bytes(packet))
            converted = av.Packet(subtitle_packet(carried.text_codec, text))
            converted.pts, converted.dts, converted.duration = packet.pts, packet.dts, packet.duration
            packet = converted
        for attr in ("pts", "dts"):
            value = getattr(packet, attr)
            if value is not None:
                setattr(packet, attr, value - carried.shift)
        packet.time_base = carried.source.time_base
        packet.stream = carried.target
        self._output.mux(packet)

    def finish(self) -> None:
        """Mux what is left (the streams' ends past the last video frame) and flush re-encoders."""
        while (packet := self._peek()) is not None:
            self._next = None
            self._mux(self._carried[packet.stream.index], packet)
        for carried in self._carried.values():
            if carried.mode == "audio":
                for encoded in carried.target.encode(None):
                    self._output.mux(encoded)

    def close(self) -> None:
        """Close the input."""
        self._input.close()


# --- stills ----------------------------------------------------------------------------------------


def write_png(path: PathLike, frame: np.ndarray, compress_level: int = 6) -> Path:
    """Save a uint8 RGB `[H, W, 3]` frame as a (lossless) PNG (zlib level 0-9: 1 is ~3x faster); returns the path."""
    p = Path(path)
    Image.fromarray(_check_frame(frame)).save(p, format="PNG", compress_level=compress_level)
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


IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
"""The files an image folder's frames are read from (other files there are ignored)."""

_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def list_images(folder: PathLike) -> list[Path]:
    """The numbered images in `folder`, in the order of the last number in each name (frame_2 before frame_10).

    Files with another suffix, or hidden, are ignored; an image without a number, or two with the same one,
    is an InputError (the order would be a guess)."""
    p = Path(folder)
    if not p.is_dir():
        raise InputError(f"image folder not found: {p}", code=ErrorCode.INVALID_PARAMETER)
    numbered: dict[int, Path] = {}
    for child in p.iterdir():
        if child.name.startswith(".") or child.suffix.lower() not in IMAGE_SUFFIXES or not child.is_file():
            continue
        match = _NUMBER.search(child.stem)
        if match is None:
            raise InputError(f"{child} has no frame number in its name (an image folder's frames are numbered: "
                             "0001.png, frame_0002.png, ...)", code=ErrorCode.INVALID_PARAMETER)
        number = int(match.group(1))
        if number in numbered:
            raise InputError(f"{numbered[number].name} and {child.name} have the same frame number {number}",
                             code=ErrorCode.INVALID_PARAMETER)
        numbered[number] = child
    return [numbered[n] for n in sorted(numbered)]


def read_images(paths: Sequence[PathLike]) -> Iterator[np.ndarray]:
    """Yield the images at `paths` one at a time as uint8 RGB `[H, W, 3]` arrays, all of one size."""
    size: tuple[int, ...] | None = None
    for path in paths:
        frame = read_png(path)
        if size is not None and frame.shape != size:
            raise InputError(f"{path} is {frame.shape[1]}x{frame.shape[0]}, the folder's first image "
                             f"{size[1]}x{size[0]}", code=ErrorCode.FRAME_SIZE_MISMATCH)
        size = frame.shape
        yield frame


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

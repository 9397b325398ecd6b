"""Writing video: `VideoWriter` puts uint8 RGB frames into a file at an exact rational frame rate.

Codecs (`VideoWriter(codec=...)`):

- ``libx264`` (default, lossy, `crf`): yuv420p for even sizes. x264 cannot encode 4:2:0 at an odd
  width or height, so odd sizes are written as yuv444p (High 4:4:4 profile) instead of padding: the
  video keeps the frames' exact size, at the cost of players that only handle 4:2:0 (browsers,
  QuickTime); ffmpeg, mpv and VLC play it. If this PyAV build has no libx264, ``mpeg4`` is used and a
  warning is logged.
- ``libx264rgb`` (lossless, qp 0, rgb24) and ``ffv1`` (lossless, bgr0; use `.mkv`): decoding gives back
  the exact RGB frames written (`LOSSLESS_CODECS`).

YUV output is BT.709 limited range and tagged as such, so players and `read_frames` agree. Containers follow
the file suffix (`.mp4`, `.mkv`, `.mov`); the stream is tagged with the exact rate (`RATE_TAG`) for containers
that cannot store it. Audio and subtitles come along through `StreamCopier` (`copy_from=`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace

from edensplit.errors import ErrorCode, InputError
from edensplit.video.frames import PathLike, check_frame
from edensplit.video.reading import RATE_TAG
from edensplit.video.streams import StreamCopier

__all__ = ["CODECS", "CONTAINERS", "LOSSLESS_CODECS", "VideoWriter", "codec_available"]

log = logging.getLogger(__name__)

LOSSLESS_CODECS: frozenset[str] = frozenset({"ffv1", "libx264rgb"})
"""Codecs whose decoded frames equal, bit for bit, the RGB frames written."""

CODECS: tuple[str, ...] = ("libx264", "libx264rgb", "ffv1", "mpeg4")
"""Every codec `VideoWriter` accepts."""

CONTAINERS: dict[str, str] = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov"}
"""Output file suffix -> FFmpeg container format."""

_FALLBACK_CODEC = "mpeg4"
_RGB_CODECS = frozenset({"libx264rgb", "ffv1"})
_BT709 = 1  # AVCOL_PRI_BT709 / AVCOL_TRC_BT709
_FF_QP2LAMBDA = 118  # FFmpeg's scale from a quantiser to `global_quality`


def _x264_asm() -> str | None:
    """x264's `asm` (CPU features it may use) for this machine: "avx2" where the CPU has AVX-512, else its own
    choice (None). Its AVX-512 code gives different bits for the same frames from one run to the next: on this
    project's machine (AMD EPYC, AVX-512), 3 of 14 encodes of one clip came out different (and so their decoded
    frames), none of 42 with AVX2 at most. Same frames in, same file out; AVX-512 adds little to x264's speed."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return None
    return "avx2" if " avx512f" in flags and " avx2" in flags else None


X264_ASM = _x264_asm()


def codec_available(name: str) -> bool:
    """Whether this PyAV build has an encoder called `name`."""
    return name in av.codecs_available


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
        pinned = {"x264-params": f"asm={X264_ASM}"} if X264_ASM else {}  # the same bits every run (_x264_asm)
        if self.codec == "libx264":
            stream.options = {"crf": str(self.crf), **pinned}
        elif self.codec == "libx264rgb":
            stream.options = {"qp": "0", **pinned}
        elif self.codec == _FALLBACK_CODEC:  # fixed quantiser, roughly following crf (18 -> q 3)
            stream.codec_context.qscale = True
            stream.codec_context.global_quality = _FF_QP2LAMBDA * min(max(round(self.crf / 6), 2), 31)
        return stream

    def write(self, frame: np.ndarray) -> None:
        """Encode one uint8 RGB `[height, width, 3]` frame as the next frame of the video."""
        if self._closed:
            raise InputError(f"video {self.path} is already closed", code=ErrorCode.INVALID_PARAMETER)
        frame = check_frame(frame)
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

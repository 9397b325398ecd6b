"""Carrying the input's audio and subtitle streams into the output video, in sync with it (`StreamCopier`).

Their packets are remuxed, interleaved with the new video as it is written (memory stays flat), their
timestamps kept relative to the first video frame. Only what the output container cannot hold is converted,
and said so: audio re-encoded with the container's default codec (AAC for MP4/MOV), text subtitles carried
over as the container's text format (mov_text in MP4/MOV, SubRip in Matroska); bitmap subtitles such a
container cannot hold are left out.
"""

from __future__ import annotations

import contextlib
import io
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import av

from edensplit.video.frames import PathLike
from edensplit.video.reading import open_video

__all__ = ["TEXT_SUBTITLES", "StreamCopier", "subtitle_packet", "subtitle_text"]

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
        self._input = open_video(source)  # the file protocol and video demuxers only, as the frames are read
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

"""StreamCopier: audio and subtitles carried into the output, copied or converted, in sync with the video."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from edensplit.video.reading import probe_video, read_frames
from edensplit.video.streams import subtitle_packet, subtitle_text
from edensplit.video.writing import VideoWriter
from tests.media import audio_samples, sample_frames, write_av_clip


def _write_with(source, path, multi: int = 2, say=None) -> VideoWriter:
    """Every frame of `source` written `multi` times at `multi` times its rate, its other streams carried."""
    info = probe_video(source)
    with VideoWriter(path, info.rate * multi, info.width, info.height, copy_from=source, start=info.start,
                     say=say) as writer:
        for frame in read_frames(source):
            for _ in range(multi):
                writer.write(frame)
    return writer


@pytest.mark.parametrize(("source_suffix", "audio_codec", "target", "copied"),
                         [(".mkv", "libopus", ".mp4", True), (".mp4", "aac", ".mp4", True),
                          (".mkv", "libopus", ".mov", False), (".mkv", "aac", ".mkv", True)])
def test_audio_comes_through_in_sync(tmp_path, source_suffix, audio_codec, target, copied):
    """Copied where the container takes the codec (the packets unchanged), else re-encoded and said so; either
    way the same sample rate, the same length within one video frame, and the tone starting at the same time."""
    rate = Fraction(30000, 1001)
    source = write_av_clip(tmp_path / f"in{source_suffix}", sample_frames(20, 64, 48), rate, audio_codec,
                           onset_frame=8)
    said: list[str] = []
    writer = _write_with(source, tmp_path / f"out{target}", say=said.append)
    assert (said == []) == copied and writer.copier is not None and writer.copier.streams == 1
    if not copied:
        assert said == ["audio stream #1 (opus) cannot go into mov as it is: re-encoded as aac"]
    before, sr_in, start_in = audio_samples(source)
    after, sr_out, start_out = audio_samples(tmp_path / f"out{target}")
    assert sr_out == sr_in == 48000
    frame_s = 1 / rate
    assert abs(len(after) - len(before)) / sr_in < frame_s
    onset_in = start_in + Fraction(int(np.argmax(np.abs(before) > 0.05)), sr_in)
    onset_out = start_out + Fraction(int(np.argmax(np.abs(after) > 0.05)), sr_out)
    assert abs(onset_in - 8 / rate) < Fraction(1, 100)  # the tone starts at video frame 8
    assert abs(onset_out - onset_in) < frame_s / 4  # and still does, against the output's first frame
    if copied:
        with av.open(str(source)) as a, av.open(str(tmp_path / f"out{target}")) as b:
            packets_in = [bytes(p) for p in a.demux(a.streams.audio[0]) if p.size]
            packets_out = [bytes(p) for p in b.demux(b.streams.audio[0]) if p.size]
        assert packets_out == packets_in  # remuxed: the same encoded audio, byte for byte


def test_subtitles_are_copied_or_carried_as_text(tmp_path):
    rate = Fraction(24)
    cues = [(0, 400, "Hello there"), (500, 300, "Second line")]
    source = write_av_clip(tmp_path / "in.mkv", sample_frames(24, 64, 48), rate, "libopus", subtitles=cues)
    said: list[str] = []
    _write_with(source, tmp_path / "out.mp4", say=said.append)
    assert said == ["subtitle stream #2 (srt) cannot go into mp4 as it is: its text carried over as mov_text "
                    "(styling dropped)"]
    _write_with(source, tmp_path / "out.mkv", say=said.append)
    assert len(said) == 1  # Matroska holds SubRip as it is
    for path, codec in ((tmp_path / "out.mp4", "mov_text"), (tmp_path / "out.mkv", "subrip")):
        with av.open(str(path)) as container:
            stream = container.streams.subtitles[0]
            assert stream.codec_context.name in (codec, "srt")
            got = [(int(p.pts * p.time_base * 1000), int(p.duration * p.time_base * 1000),
                    subtitle_text(stream.codec_context.name, bytes(p)))
                   for p in container.demux(stream) if p.size and subtitle_text(stream.codec_context.name,
                                                                                      bytes(p))]
        assert got == cues, path


def test_subtitle_text_of_each_format():
    assert subtitle_text("ass", b"0,0,Default,,0,0,0,,{\\i1}Hi{\\i0}\\Nthere, you") == "Hi\nthere, you"
    assert subtitle_text("mov_text", b"\x00\x05hello\x00\x00style") == "hello"
    assert subtitle_packet("mov_text", "h\u00e9") == b"\x00\x03h\xc3\xa9"
    assert subtitle_packet("subrip", "hi") == b"hi"

"""Video and still I/O: real files written and read back through PyAV and Pillow in tmp_path."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from fractions import Fraction

import av
import numpy as np
import pytest

from edensplit import video
from edensplit.errors import ErrorCode, InputError
from edensplit.video import (
    GAP,
    HEADER,
    LOSSLESS_CODECS,
    VideoInfo,
    VideoWriter,
    codec_available,
    contact_sheet,
    make_sample_clip,
    probe_video,
    read_frames,
    read_png,
    save_contact_sheet,
    write_png,
)
from tests.conftest import make_frames
from tests.media import audio_samples, sample_frames, write_av_clip

SUFFIX = {"libx264": ".mp4", "libx264rgb": ".mp4", "ffv1": ".mkv", "mpeg4": ".mp4"}
AVAILABLE = [c for c in ("libx264", "libx264rgb", "ffv1", "mpeg4") if codec_available(c)]
LOSSLESS = sorted(c for c in LOSSLESS_CODECS if codec_available(c))
RATES = [Fraction(24), Fraction(30000, 1001), Fraction(60000, 1001)]


def _write(path, frames: np.ndarray, rate: Fraction, codec: str) -> None:
    with VideoWriter(path, rate, frames.shape[2], frames.shape[1], codec=codec) as writer:
        for f in frames:
            writer.write(f)
    assert writer.frames_written == len(frames)


@pytest.mark.parametrize("rate", RATES, ids=str)
@pytest.mark.parametrize("codec", AVAILABLE)
def test_round_trip_count_size_and_exact_rate(tmp_path, codec, rate):
    frames = make_frames(12, 48, 64)
    path = tmp_path / f"clip{SUFFIX[codec]}"
    _write(path, frames, rate, codec)
    info = probe_video(path)
    assert (info.width, info.height) == (64, 48)
    assert info.rate == rate and isinstance(info.rate, Fraction)
    assert info.frames == (None if SUFFIX[codec] == ".mkv" else 12)  # Matroska does not store a frame count
    out = list(read_frames(path))
    assert len(out) == 12
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in out)
    # The frames that come back are the ones written, in order. Measured mean error: 0 lossless, <= 4.31
    # libx264 (the frames carry sigma-4 noise), 4.06 mpeg4; each frame against its neighbour differs by >= 7.3.
    assert np.abs(np.stack(out).astype(np.int16) - frames).mean() < 5.5


@pytest.mark.parametrize("codec", LOSSLESS)
@pytest.mark.parametrize("size", [(48, 64), (47, 63)], ids=["64x48", "63x47"])
def test_lossless_codecs_are_bit_exact(tmp_path, codec, size):
    frames = np.random.default_rng(1).integers(0, 256, (12, *size, 3), dtype=np.uint8)  # worst case: noise
    path = tmp_path / f"clip{SUFFIX[codec]}"
    _write(path, frames, Fraction(30000, 1001), codec)
    out = np.stack(list(read_frames(path)))
    np.testing.assert_array_equal(out, frames)


@pytest.mark.skipif(not codec_available("libx264"), reason="no libx264 in this PyAV build")
@pytest.mark.parametrize("size", [(48, 64), (47, 63)], ids=["64x48", "63x47"])
def test_libx264_is_close_and_keeps_odd_sizes(tmp_path, size):
    frames = np.stack([video._sample_frame(k, size[1], size[0]) for k in range(12)])
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, Fraction(24), size[1], size[0]) as writer:
        assert writer.codec == "libx264"
        assert writer.pix_fmt == ("yuv420p" if size == (48, 64) else "yuv444p")
        for f in frames:
            writer.write(f)
    out = np.stack(list(read_frames(path)))
    assert out.shape == frames.shape
    assert out.flags["C_CONTIGUOUS"]
    assert np.abs(out.astype(np.int16) - frames).mean() < 4.5  # sharp coloured edges at 4:2:0 on a tiny frame
    info = probe_video(path)
    assert (info.width, info.height, info.frames) == (size[1], size[0], 12)


@pytest.mark.skipif(not codec_available("libx264"), reason="no libx264 in this PyAV build")
def test_libx264_smooth_frames_decode_without_bias(tmp_path):
    # swscale's default YUV -> RGB path is ~1.5 levels low on 4:2:0; read_frames asks for exact rounding.
    yy, xx = np.mgrid[0:48, 0:64]
    frame = np.stack([40 + 2 * xx, 30 + 3 * yy, 220 - 2 * xx], axis=-1).astype(np.uint8)
    _write(tmp_path / "grad.mp4", np.stack([frame] * 4), Fraction(24), "libx264")
    err = np.stack(list(read_frames(tmp_path / "grad.mp4"))).astype(np.int16) - frame
    assert np.abs(err).mean() < 1.3
    assert abs(err[..., 1].mean()) < 0.5  # green is mostly luma: no chroma-siting shift to excuse a bias


def test_missing_libx264_falls_back_to_mpeg4(tmp_path, monkeypatch, caplog):
    if not codec_available("mpeg4"):
        pytest.skip("no mpeg4 in this PyAV build")
    monkeypatch.setattr(video, "codec_available", lambda name: name != "libx264")
    frames = make_frames(12, 48, 64)
    path = tmp_path / "clip.mp4"
    with caplog.at_level(logging.WARNING, logger="edensplit.video"), \
            VideoWriter(path, Fraction(60000, 1001), 64, 48) as writer:
        for f in frames:
            writer.write(f)
    assert writer.codec == "mpeg4"
    assert "no libx264" in caplog.text
    out = np.stack(list(read_frames(path)))
    assert out.shape == frames.shape
    assert np.abs(out.astype(np.int16) - frames).mean() < 8.0
    assert probe_video(path).rate == Fraction(60000, 1001)


def test_writer_rejects_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="unknown suffix"):
        VideoWriter(tmp_path / "clip.gif", Fraction(24), 64, 48)
    with pytest.raises(InputError, match="unknown video codec"):
        VideoWriter(tmp_path / "clip.mp4", Fraction(24), 64, 48, codec="prores")
    with pytest.raises(InputError, match="positive"):
        VideoWriter(tmp_path / "clip.mp4", Fraction(0), 64, 48)
    with pytest.raises(InputError, match="crf"):
        VideoWriter(tmp_path / "clip.mp4", Fraction(24), 64, 48, crf=80)
    with pytest.raises(InputError, match="cannot create video"):
        VideoWriter(tmp_path / "no" / "such" / "dir" / "clip.mp4", Fraction(24), 64, 48)
    codec = "ffv1" if codec_available("ffv1") else AVAILABLE[0]
    with VideoWriter(tmp_path / f"clip{SUFFIX[codec]}", Fraction(24), 64, 48, codec=codec) as writer:
        with pytest.raises(InputError, match="64x48"):
            writer.write(np.zeros((48, 63, 3), np.uint8))
        with pytest.raises(InputError, match="uint8"):
            writer.write(np.zeros((48, 64, 3), np.float32))
        writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.close()  # idempotent
    with pytest.raises(InputError, match="closed"):
        writer.write(np.zeros((48, 64, 3), np.uint8))


def test_read_frames_is_a_lazy_generator(tmp_path):
    path = make_sample_clip(tmp_path / "clip.mkv", n_frames=5, width=64, height=48)
    gen = read_frames(path)
    assert isinstance(gen, Iterator)
    first = next(gen)
    assert isinstance(first, np.ndarray) and first.dtype == np.uint8 and first.shape == (48, 64, 3)
    assert first.flags["C_CONTIGUOUS"]
    gen.close()  # closes the container; nothing left to yield
    assert list(gen) == []
    assert sum(1 for _ in read_frames(path)) == 5


def test_probe_video_missing_file(tmp_path):
    path = tmp_path / "nope.mp4"
    with pytest.raises(InputError) as err:
        probe_video(path)
    assert err.value.code == ErrorCode.INVALID_PARAMETER
    assert str(err.value) == f"video file not found: {path}"
    with pytest.raises(InputError, match="video file not found"):
        next(read_frames(path))


def test_probe_video_not_a_video(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    with pytest.raises(InputError) as err:
        probe_video(path)
    assert err.value.code == ErrorCode.INVALID_PARAMETER
    message = str(err.value)
    assert message.startswith(f"not a readable video: {path} (")
    assert "Traceback" not in message and "\n" not in message
    with pytest.raises(InputError, match="is a directory"):
        probe_video(tmp_path)
    empty = tmp_path / "empty.mkv"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="not a readable video"):
        probe_video(empty)


def test_rate_tag_and_snapping():
    # Matroska stores 60000/1001 as a 16683333 ns frame duration, which FFmpeg reads as 19001/317.
    assert video._snap_rate(Fraction(19001, 317)) == Fraction(60000, 1001)
    assert video._snap_rate(Fraction(30000, 1001)) == Fraction(30000, 1001)
    assert video._snap_rate(Fraction(2997, 100)) == Fraction(2997, 100)  # a real 29.97 is left alone
    assert video._snap_rate(Fraction(24000001, 1000000)) == Fraction(24)
    assert video._snap_rate(Fraction(25, 2)) == Fraction(25, 2)
    assert video._snap_rate(Fraction(123457, 4096)) == Fraction(123457, 4096)  # far from any standard rate


def test_foreign_matroska_rate_is_snapped_and_stale_tag_ignored(tmp_path, monkeypatch):
    if not codec_available("ffv1"):
        pytest.skip("no ffv1 in this PyAV build")
    frames = make_frames(3, 48, 64)
    monkeypatch.setattr(video, "RATE_TAG", "SOMETHING_ELSE")  # a file written without our tag
    _write(tmp_path / "untagged.mkv", frames, Fraction(60000, 1001), "ffv1")
    monkeypatch.undo()
    assert probe_video(tmp_path / "untagged.mkv").rate == Fraction(60000, 1001)
    with VideoWriter(tmp_path / "stale.mkv", Fraction(25), 64, 48, codec="ffv1") as writer:
        writer._stream.metadata[video.RATE_TAG] = "30000/1001"  # e.g. re-encoded at 25 fps, tag copied
        for f in frames:
            writer.write(f)
    assert probe_video(tmp_path / "stale.mkv").rate == Fraction(25)


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_make_sample_clip(tmp_path, suffix):
    rate = Fraction(30000, 1001)
    path = make_sample_clip(tmp_path / f"sample{suffix}", n_frames=8, width=96, height=64, rate=rate)
    assert path.is_file()
    assert probe_video(path) == VideoInfo(96, 64, rate, None if suffix == ".mkv" else 8)
    frames = list(read_frames(path))
    assert len(frames) == 8
    for a, b in zip(frames, frames[1:], strict=False):
        assert np.abs(a.astype(np.int16) - b).mean() > 0.5  # things move every frame
    if suffix == ".mkv":  # lossless: the same clip twice is the same bits
        again = make_sample_clip(tmp_path / "again.mkv", n_frames=8, width=96, height=64, rate=rate)
        np.testing.assert_array_equal(np.stack(frames), np.stack(list(read_frames(again))))


def test_contact_sheet_shape_and_layout(tmp_path):
    a = np.full((48, 64, 3), 200, np.uint8)
    b = np.full((40, 60, 3), 100, np.uint8)
    sheet = contact_sheet([[a, b, a], [b, a]])
    assert sheet.dtype == np.uint8
    assert sheet.shape == (2 * 48 + 3 * GAP, 3 * 64 + 4 * GAP, 3)
    assert (sheet[GAP: GAP + 48, GAP: GAP + 64] == 200).all()
    assert (sheet[0:GAP] == video._BACKGROUND).all()
    x1 = GAP + 64 + GAP
    assert (sheet[GAP: GAP + 40, x1: x1 + 60] == 100).all()
    labelled = contact_sheet([[a, a, a]], labels=["frame k", "middle", "frame k+1"])
    assert labelled.shape == (HEADER + 48 + 2 * GAP, 3 * 64 + 4 * GAP, 3)
    assert (labelled[:HEADER] != video._BACKGROUND).any()  # some text was drawn
    np.testing.assert_array_equal(labelled[HEADER:], contact_sheet([[a, a, a]]))
    with pytest.raises(InputError):
        contact_sheet([[a]], labels=["one", "two"])
    with pytest.raises(InputError):
        contact_sheet([])
    path = save_contact_sheet(tmp_path / "sheet.png", [[a, b]], labels=["a", "b"])
    assert read_png(path).shape == (HEADER + 48 + 2 * GAP, 2 * 64 + 3 * GAP, 3)


def test_png_round_trip_is_exact(tmp_path):
    frame = np.random.default_rng(2).integers(0, 256, (47, 63, 3), dtype=np.uint8)
    path = write_png(tmp_path / "f.png", frame)
    out = read_png(path)
    assert out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, frame)
    with pytest.raises(InputError, match="image file not found"):
        read_png(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(InputError, match="not a readable image") as err:
        read_png(bad)
    assert err.value.code == ErrorCode.INVALID_IMAGE


# -- pixel formats, carried audio and subtitles, image folders ---------------------------------------


def _error_with(tmp_path, codec: str, pix_fmt: str | None) -> tuple[str, float]:
    """The sample frames through `codec` in `pix_fmt`: the format the file holds, the mean error read back."""
    frames = np.stack([video._sample_frame(k, 64, 48) for k in range(4)])
    path = tmp_path / f"clip-{pix_fmt}{SUFFIX[codec]}"
    with VideoWriter(path, Fraction(24), 64, 48, codec=codec, pix_fmt=pix_fmt) as writer:
        for f in frames:
            writer.write(f)
    with av.open(str(path)) as container:
        held = container.streams.video[0].codec_context.pix_fmt
    return held, float(np.abs(np.stack(list(read_frames(path))).astype(np.int16) - frames).mean())


def test_pix_fmt_is_what_the_file_holds(tmp_path):
    default = _error_with(tmp_path, "libx264", None)
    assert default[0] == "yuv420p"
    full_chroma = _error_with(tmp_path, "libx264", "yuv444p")
    # 4:4:4 keeps the colour edges 4:2:0 blurs: measured 2.0-2.05 against 3.74 grey levels.
    assert full_chroma[0] == "yuv444p" and full_chroma[1] < 0.7 * default[1]
    ten_bit = _error_with(tmp_path, "libx264", "yuv420p10le")
    assert ten_bit[0] == "yuv420p10le" and ten_bit[1] < 4.5  # measured 3.54
    assert _error_with(tmp_path, "ffv1", "gbrp10le") == ("gbrp10le", 0.0)  # planar RGB, 10 bits: lossless


def test_pix_fmt_the_encoder_cannot_write_is_refused(tmp_path):
    with pytest.raises(InputError, match="cannot write pixel format 'rgb48le'.*yuv444p"):
        VideoWriter(tmp_path / "a.mp4", Fraction(24), 64, 48, pix_fmt="rgb48le")
    with pytest.raises(InputError, match="odd size 63x47: use yuv444p"):
        VideoWriter(tmp_path / "b.mp4", Fraction(24), 63, 47, pix_fmt="yuv420p")


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
                    video.subtitle_text(stream.codec_context.name, bytes(p)))
                   for p in container.demux(stream) if p.size and video.subtitle_text(stream.codec_context.name,
                                                                                      bytes(p))]
        assert got == cues, path


def test_subtitle_text_of_each_format():
    assert video.subtitle_text("ass", b"0,0,Default,,0,0,0,,{\\i1}Hi{\\i0}\\Nthere, you") == "Hi\nthere, you"
    assert video.subtitle_text("mov_text", b"\x00\x05hello\x00\x00style") == "hello"
    assert video.subtitle_packet("mov_text", "h\u00e9") == b"\x00\x03h\xc3\xa9"
    assert video.subtitle_packet("subrip", "hi") == b"hi"


def test_probe_says_when_the_video_starts_and_how_long_it_is(tmp_path):
    path = make_sample_clip(tmp_path / "clip.mp4", n_frames=24, width=64, height=48, rate=Fraction(24))
    info = probe_video(path)
    assert info.start == 0 and info.duration == 1 and info.frames_estimate == 24
    mkv = make_sample_clip(tmp_path / "clip.mkv", n_frames=24, width=64, height=48, rate=Fraction(24))
    assert probe_video(mkv).frames is None and probe_video(mkv).frames_estimate == 24


def test_image_folders_are_read_in_frame_number_order(tmp_path):
    frames = [video._sample_frame(k, 32, 24) for k in range(12)]
    for k, frame in enumerate(frames):
        write_png(tmp_path / f"frame_{k + 1}.png", frame)  # frame_1 ... frame_12: 10 sorts after 9
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"")
    images = video.list_images(tmp_path)
    assert [p.name for p in images] == [f"frame_{k + 1}.png" for k in range(12)]
    np.testing.assert_array_equal(np.stack(list(video.read_images(images))), np.stack(frames))
    write_png(tmp_path / "cover.png", frames[0])
    with pytest.raises(InputError, match="cover.png has no frame number"):
        video.list_images(tmp_path)
    (tmp_path / "cover.png").unlink()
    write_png(tmp_path / "frame_0001.png", frames[0])
    with pytest.raises(InputError, match="same frame number 1"):
        video.list_images(tmp_path)
    with pytest.raises(InputError, match="image folder not found"):
        video.list_images(tmp_path / "missing")
    small = write_png(tmp_path / "x.png", frames[0][:10])
    with pytest.raises(InputError, match="is 32x10, the folder's first image 32x24"):
        list(video.read_images([images[0], small]))

"""Video and still I/O: real files written and read back through PyAV and Pillow in tmp_path."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from fractions import Fraction

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

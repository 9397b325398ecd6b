"""probe_video and read_frames: exact rates, lazy decoding, start and duration, and errors that name the file."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction

import numpy as np
import pytest

from edensplit.errors import ErrorCode, InputError
from edensplit.video import writing
from edensplit.video.reading import RATE_TAG, _snap_rate, probe_video, read_frames
from edensplit.video.sample import make_sample_clip
from edensplit.video.writing import VideoWriter, codec_available
from tests.conftest import make_frames
from tests.video.helpers import write_video


@pytest.mark.skipif(not codec_available("libx264"), reason="no libx264 in this PyAV build")
def test_libx264_smooth_frames_decode_without_bias(tmp_path):
    # swscale's default YUV -> RGB path is ~1.5 levels low on 4:2:0; read_frames asks for exact rounding.
    yy, xx = np.mgrid[0:48, 0:64]
    frame = np.stack([40 + 2 * xx, 30 + 3 * yy, 220 - 2 * xx], axis=-1).astype(np.uint8)
    write_video(tmp_path / "grad.mp4", np.stack([frame] * 4), Fraction(24), "libx264")
    err = np.stack(list(read_frames(tmp_path / "grad.mp4"))).astype(np.int16) - frame
    assert np.abs(err).mean() < 1.3
    assert abs(err[..., 1].mean()) < 0.5  # green is mostly luma: no chroma-siting shift to excuse a bias


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
    assert _snap_rate(Fraction(19001, 317)) == Fraction(60000, 1001)
    assert _snap_rate(Fraction(30000, 1001)) == Fraction(30000, 1001)
    assert _snap_rate(Fraction(2997, 100)) == Fraction(2997, 100)  # a real 29.97 is left alone
    assert _snap_rate(Fraction(24000001, 1000000)) == Fraction(24)
    assert _snap_rate(Fraction(25, 2)) == Fraction(25, 2)
    assert _snap_rate(Fraction(123457, 4096)) == Fraction(123457, 4096)  # far from any standard rate


def test_foreign_matroska_rate_is_snapped_and_stale_tag_ignored(tmp_path, monkeypatch):
    if not codec_available("ffv1"):
        pytest.skip("no ffv1 in this PyAV build")
    frames = make_frames(3, 48, 64)
    monkeypatch.setattr(writing, "RATE_TAG", "SOMETHING_ELSE")  # a file written without our tag
    write_video(tmp_path / "untagged.mkv", frames, Fraction(60000, 1001), "ffv1")
    monkeypatch.undo()
    assert probe_video(tmp_path / "untagged.mkv").rate == Fraction(60000, 1001)
    with VideoWriter(tmp_path / "stale.mkv", Fraction(25), 64, 48, codec="ffv1") as writer:
        writer._stream.metadata[RATE_TAG] = "30000/1001"  # e.g. re-encoded at 25 fps, tag copied
        for f in frames:
            writer.write(f)
    assert probe_video(tmp_path / "stale.mkv").rate == Fraction(25)


def test_probe_says_when_the_video_starts_and_how_long_it_is(tmp_path):
    path = make_sample_clip(tmp_path / "clip.mp4", n_frames=24, width=64, height=48, rate=Fraction(24))
    info = probe_video(path)
    assert info.start == 0 and info.duration == 1 and info.frames_estimate == 24
    mkv = make_sample_clip(tmp_path / "clip.mkv", n_frames=24, width=64, height=48, rate=Fraction(24))
    assert probe_video(mkv).frames is None and probe_video(mkv).frames_estimate == 24

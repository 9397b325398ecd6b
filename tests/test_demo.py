"""`edensplit demo`, the first command a new user runs: servers up, a clip through them, files written."""

from __future__ import annotations

from fractions import Fraction

from edensplit.demo import run_demo
from edensplit.video.images import read_png
from edensplit.video.reading import probe_video, read_frames


def test_demo_writes_the_video_and_the_sheet_and_says_it_used_random_weights(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("MODEL_PATH", raising=False)
    result = run_demo(tmp_path / "demo", n_frames=4, width=64, height=48)
    said = capsys.readouterr().out
    assert "RANDOM weights" in said and "not EDEN's quality" in said
    assert str(result["video"]) in said and str(result["sheet"]) in said
    info = probe_video(result["video"])
    assert info.rate == Fraction(48) and (info.width, info.height) == (64, 48)
    assert sum(1 for _ in read_frames(result["video"])) == 7
    sheet = read_png(result["sheet"])
    assert sheet.shape[1] > 3 * 64 and sheet.shape[0] > 3 * 48  # 3 rows of (frame, generated, frame)
    assert result["random_weights"] is True

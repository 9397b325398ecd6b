"""`edensplit demo`, the first command a new user runs: servers up, a clip through them, files written."""

from __future__ import annotations

from fractions import Fraction

from edensplit.demo import demo_model, run_demo
from edensplit.video.images import read_png
from edensplit.video.reading import probe_video, read_frames


def test_demo_writes_the_video_and_the_sheet_and_says_it_used_random_weights(no_tiny, monkeypatch, tmp_path, capsys):
    """In a copy without the tiny EDEN (as before it was installed), the demo runs random weights and says so."""
    for name in ("MODEL_PATH", "EDEN_RANDOM_WEIGHTS", "EDEN_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    result = run_demo(tmp_path / "demo", n_frames=4, width=64, height=48)
    said = capsys.readouterr().out
    assert "no tiny EDEN installed" in said and "RANDOM weights" in said and "not EDEN's quality" in said
    assert str(result["video"]) in said and str(result["sheet"]) in said
    info = probe_video(result["video"])
    assert info.rate == Fraction(48) and (info.width, info.height) == (64, 48)
    assert sum(1 for _ in read_frames(result["video"])) == 7
    sheet = read_png(result["sheet"])
    assert sheet.shape[1] > 3 * 64 and sheet.shape[0] > 3 * 48  # 3 rows of (frame, generated, frame)
    assert result["random_weights"] is True


def test_the_demo_runs_the_tiny_eden_where_installed_and_says_so(tiny_dir, monkeypatch, tmp_path, capsys):
    """Without MODEL_PATH: the tiny EDEN (said in one line; the servers run it: their start-up line names it); with
    EDEN_RANDOM_WEIGHTS=1, random weights of EDEN_CONFIG; with MODEL_PATH, that."""
    for name in ("MODEL_PATH", "EDEN_RANDOM_WEIGHTS", "EDEN_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    result = run_demo(tmp_path / "demo", n_frames=3, width=64, height=48)
    said = capsys.readouterr().out
    assert result["weights"] == "the tiny EDEN" and result["random_weights"] is False
    assert "no MODEL_PATH: running the tiny EDEN trained on synthetic motion" in said and "RANDOM" not in said
    assert "loaded tiny EDEN trained on synthetic motion, digest" in (tmp_path / "demo" / "edge.log").read_text()
    monkeypatch.setenv("EDEN_RANDOM_WEIGHTS", "1")
    assert demo_model(tmp_path) == ({"EDEN_RANDOM_WEIGHTS": "1", "EDEN_CONFIG": str(tmp_path / "demo_eden.yaml")},
                                    "random weights")
    monkeypatch.setenv("EDEN_CONFIG", str(tiny_dir / "eden_tiny.yaml"))
    assert demo_model(tmp_path) == ({"EDEN_RANDOM_WEIGHTS": "1"}, "random weights")
    monkeypatch.setenv("MODEL_PATH", "hf://zhZ524/EDEN/eden.pt")
    assert demo_model(tmp_path) == ({}, "MODEL_PATH")

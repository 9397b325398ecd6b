"""`edensplit bench --mode quality`: every method on held-out synthetic triplets and real clips, as Markdown and
JSON; the model is the one MODEL_PATH names, else the tiny EDEN (here the conftest's random stand-in for it)."""

from __future__ import annotations

import json

import numpy as np

from edensplit.bench.quality import QUALITY_COLUMNS, drop_frame_triplets, real_clip, run_quality
from tests.bench.helpers import cells


def test_quality_scores_every_method_on_every_set(tiny_dir, monkeypatch, tmp_path, capsys):
    for name in ("MODEL_PATH", "EDEN_RANDOM_WEIGHTS", "EDEN_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    rows = run_quality(counts=(4, 2), real_triplets=2, random_model=False, output=tmp_path / "q.md",
                       json_path=tmp_path / "q.json", command="edensplit bench --mode quality")
    sets = list(dict.fromkeys(r.set for r in rows))
    assert sets[:2] == ["synthetic 64x64 (held-out stream 1000)", "synthetic 128x128 (held-out stream 1001)"]
    assert len(sets) == 4 and all("drop-frame" in s for s in sets[2:])  # carphone and bikes (the test extra)
    by = {(r.set, r.method): r for r in rows}
    for s in sets:
        # the blend of real neighbouring frames is far better than a random-weight stand-in's frame
        assert by[s, "blend"].psnr > by[s, "eden"].psnr + 5 and by[s, "blend"].ssim > by[s, "eden"].ssim
        assert by[s, "blend"].psnr > by[s, "nearest"].psnr  # t = 1/2: the blend is the better trivial guess
    for s in sets[:2]:
        assert all(np.isfinite(by[s, m].centroid_px) for m in ("eden", "blend", "nearest"))
        assert by[s, "blend"].count == (4 if "64x64" in s else 2)
    said = capsys.readouterr()
    assert "no MODEL_PATH: running the tiny EDEN" in said.err  # the try-out default, said once
    text = (tmp_path / "q.md").read_text()
    assert {len(cells(line)) for line in text.splitlines() if line.startswith("|")} == {len(QUALITY_COLUMNS)}
    document = json.loads((tmp_path / "q.json").read_text())
    assert document["kind"] == "edensplit.bench.quality" and len(document["rows"]) == len(rows)
    assert "tiny EDEN trained on synthetic motion" in document["environment"]["model"]


def test_drop_frame_triplets_are_three_neighbours_spread_over_the_clip():
    frames = [np.full((2, 2, 3), k, np.uint8) for k in range(10)]
    triplets = drop_frame_triplets(frames, 3)
    assert [(int(a[0, 0, 0]), int(b[0, 0, 0]), int(c[0, 0, 0])) for a, b, c in triplets] == [(0, 1, 2), (4, 5, 6),
                                                                                            (7, 8, 9)]
    assert len(drop_frame_triplets(frames, 50)) == 8
    assert real_clip("no-such-clip.mp4") is None

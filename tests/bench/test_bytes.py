"""`edensplit bench --mode bytes`: the user's design vs frame-once sessions through real servers, and issue #9's
acceptance read from the rows."""

from __future__ import annotations

import json

import pytest

from edensplit.bench.bytes import BYTES_COLUMNS, acceptance, run_bytes
from edensplit.bench.systems import SystemRow
from tests.bench.helpers import cells


def test_bytes_compares_designs_with_the_users_and_checks_the_acceptance(monkeypatch, model_env, tmp_path):
    for key, value in model_env.items():
        monkeypatch.setenv(key, value)
    rows = run_bytes((48, 64), 4, output=tmp_path / "bytes.md", json_path=tmp_path / "bytes.json", log_dir=tmp_path)
    user, f16, i8 = rows
    assert (user.design, f16.design, i8.design) == ("user's design", "frame-once float16", "frame-once int8")
    assert user.encodings > f16.encodings > i8.encodings
    assert f16.error["mean_abs"] < 0.5 and i8.error["mean_abs"] < 3
    # against the true middle frames too: random weights are far from them, and the column says by how much
    assert all(r.truth is not None and 0 < r.truth["psnr_db"] < 30 for r in rows)
    document = json.loads((tmp_path / "bytes.json").read_text())
    assert [r["encodings_ratio_vs_first"] for r in document["rows"]] == pytest.approx(
        [1.0, user.encodings / f16.encodings, user.encodings / i8.encodings])
    text = (tmp_path / "bytes.md").read_text()
    assert {len(cells(line)) for line in text.splitlines() if line.startswith("|")} == {len(BYTES_COLUMNS)}
    # The tiny model's encodings are small beside their headers: the ratios are below the full model's, and the
    # acceptance says so criterion by criterion.
    verdicts = acceptance(rows)
    assert len(verdicts) == 3 and not all(ok for _, ok in verdicts)
    assert any("int8" in text and "grey levels" in text and ok for text, ok in verdicts)


def test_acceptance_reads_ratios_and_error_from_the_rows():
    def row(design, dtype, encodings, mean_abs):
        r = SystemRow((144, 176), "float32", design, "http", "binary", "a-once", dtype, generated=39,
                      hops={"cloud_in": 0, "cloud_out": encodings / 2, "edge_in": encodings / 2, "edge_out": 0})
        r.error = {"mean_abs": mean_abs, "max_abs": 1.0, "psnr_db": 60.0}
        return r

    user = row("user's design", "float32", 100.0, 0.0)
    good = [user, row("frame-once float16", "float16", 19.0, 0.01), row("frame-once int8", "int8", 9.9, 2.9)]
    assert [ok for _, ok in acceptance(good)] == [True, True, True]
    bad = [user, row("frame-once float16", "float16", 21.0, 0.01), row("frame-once int8", "int8", 10.1, 3.1)]
    assert [ok for _, ok in acceptance(bad)] == [False, False, False]
    with pytest.raises(ValueError):
        acceptance(good[1:])

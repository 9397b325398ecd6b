"""`edensplit bench --mode perf`: the stages in this process and the system through real servers, at a tiny size,
their JSON and Markdown; the run's budget; every table cell filled."""

from __future__ import annotations

import json

import pytest

from edensplit.bench.perf import SYSTEM_COLUMNS, run_perf, system_cells
from edensplit.bench.stages import SKIPPED, STAGE_COLUMNS, StageRow, stage_cells
from edensplit.bench.systems import SystemRow
from tests.bench.helpers import cells


def test_perf_measures_stages_and_servers_and_writes_json_and_markdown(monkeypatch, model_env, tmp_path):
    for key, value in model_env.items():
        monkeypatch.setenv(key, value)
    stages, system = run_perf([(48, 64)], ["float32", "bfloat16"], [1, 2, 4], device="cpu", n_frames=3,
                              iters=1, min_seconds=0, batch_budget_s=30, output=tmp_path / "perf.md",
                              json_path=tmp_path / "perf.json", log_dir=tmp_path, command="edensplit bench ...")
    assert [(r.size, r.precision) for r in stages] == [((48, 64), "float32"), ((48, 64), "bfloat16")]
    for row in stages:
        assert row.failed is None
        assert row.encoder_ms_per_frame > 0 and row.edge_ms_per_pair > 0 and row.edge_ms_per_frame_session > 0
        assert row.edge_ms_per_pair_by_batch[1] == row.edge_ms_per_pair
        assert row.best_batch in row.edge_ms_per_pair_by_batch
        assert row.peak_mib is None  # no GPU
        assert row.pair_ms == 2 * row.encoder_ms_per_frame + row.edge_ms_per_pair
    # The user's design runs once per size (float32: the bytes baseline and the frames' reference).
    assert [(r.precision, r.design, r.wire_dtype) for r in system] == [
        ("float32", "user's design", "float32"), ("float32", "frame-once", "float16"),
        ("float32", "frame-once", "int8"), ("bfloat16", "frame-once", "float16"), ("bfloat16", "frame-once", "int8")]
    user, f16, i8 = system[:3]
    assert user.error == {"mean_abs": 0.0, "max_abs": 0.0, "psnr_db": None}
    assert all(r.failed is None and r.generated == 2 and r.pairs_per_s > 0 for r in system)
    assert i8.encodings < f16.encodings < user.encodings
    assert user.total == sum(user.hops.values()) and user.encodings == user.hops["cloud_out"] + user.hops["edge_in"]
    # Bytes by route add up to the hops.
    assert f16.hops["edge_in"] == sum(v for k, v in f16.routes["edge"].items() if k.startswith("request "))
    document = json.loads((tmp_path / "perf.json").read_text())
    assert document["kind"] == "edensplit.bench.perf" and document["environment"]["device"] == "cpu"
    assert len(document["stages"]) == 2 and len(document["system"]) == 5
    assert document["system"][0]["encodings_ratio_vs_user"] == 1.0
    assert document["system"][2]["encodings_ratio_vs_user"] == pytest.approx(user.encodings / i8.encodings)
    assert [256, 448] in [r["size"] for r in document["reference_h200"]]
    text = (tmp_path / "perf.md").read_text()
    assert "edensplit bench ..." in text
    for columns in (STAGE_COLUMNS, SYSTEM_COLUMNS):
        table = [cells(line) for line in text.splitlines() if line.startswith("|")
                 and len(cells(line)) == len(columns)]
        assert table[0] == list(columns)
    assert {len(cells(line)) for line in text.splitlines() if line.startswith("|")} == {len(STAGE_COLUMNS),
                                                                                       len(SYSTEM_COLUMNS)}


def test_perf_budget_skips_what_would_start_late(monkeypatch, model_env, tmp_path):
    for key, value in model_env.items():
        monkeypatch.setenv(key, value)
    stages, system = run_perf([(48, 64)], ["float32"], [1], device="cpu", n_frames=3, iters=1, min_seconds=0,
                              budget_s=1e-9, json_path=tmp_path / "perf.json", log_dir=tmp_path)
    assert [r.failed for r in stages + system] == [SKIPPED] * 4
    assert "skipped" in json.loads((tmp_path / "perf.json").read_text())["system"][0]["failed"]


def test_stage_and_system_cells_fill_every_column():
    ok = StageRow((256, 448), "float32", 1.0, 10.0, 8.0, {1: 10.0, 2: 7.0}, 2, None, None)
    failed = StageRow((480, 854), "float16", failed="RuntimeError: boom | with a pipe\nand a line")
    for row in (ok, failed):
        assert len(stage_cells(row)) == len(STAGE_COLUMNS)
    by = dict(zip(STAGE_COLUMNS, stage_cells(ok), strict=True))
    assert by["H200 reference pair ms"] == "38.7" and by["H200 reference encoder ms/pair"] == "4.3"
    assert by["session saving"] == "20%" and by["pair ms (2 encodes + edge, batch 1)"] == "12.0"
    assert "|" not in "".join(stage_cells(failed)) and "\n" not in "".join(stage_cells(failed))
    sys_failed = SystemRow((256, 448), "float16", "frame-once", "ws", "binary", "a-once", "int8", failed="x")
    assert len(system_cells(sys_failed, [sys_failed])) == len(SYSTEM_COLUMNS)

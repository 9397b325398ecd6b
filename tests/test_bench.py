"""`edensplit bench` measures what it says: real servers, bytes from their metrics, frames checked
against --local. (A smoke run at a tiny size; the figures themselves come from running the command.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edensplit.bench import (
    BYTES_COLUMNS,
    COLUMNS,
    SKIPPED,
    STAGE_COLUMNS,
    SYSTEM_COLUMNS,
    Row,
    StageRow,
    SystemRow,
    acceptance,
    frame_error,
    report,
    run_bench,
    run_bytes,
    run_perf,
    stage_cells,
    system_cells,
    time_interleaved,
    time_ms,
)


def test_bench_rows_compare_flows_and_check_frames(monkeypatch, model_env, tmp_path):
    for key, value in model_env.items():
        monkeypatch.setenv(key, value)
    rows = run_bench((48, 64), n_frames=4, transports=("ws-binary",), dtypes=("float32",),
                     flows=("a-pairs", "a-once", "b-pairs", "b-once"), output=tmp_path / "bench.md",
                     log_dir=tmp_path, json_path=tmp_path / "bench.json")
    local, pairs, once, proxy, proxy_once = rows
    assert local.transport == "local" and local.speed == 1.0
    for row in (pairs, once, proxy, proxy_once):
        assert row.error == 0.0  # exact mode: every generated frame equals --local's
        assert row.fps > 0 and row.p95_ms >= row.p50_ms > 0
    # Frame-once ships each frame's encoding once instead of twice per pair.
    assert once.hops["cloud_out"] < 0.8 * pairs.hops["cloud_out"]
    assert once.hops["edge_in"] < 0.8 * pairs.hops["edge_in"]
    # Flow B: the client sends its frames to the edge only, and the edge forwards them to the cloud.
    assert abs(proxy.hops["cloud_in"] - proxy.hops["edge_in"]) < 0.05 * proxy.hops["edge_in"]
    # The pair's blob goes cloud -> edge (over HTTP; the WebSocket rows also count their message headers).
    assert abs(proxy.hops["cloud_out"] - pairs.hops["cloud_out"]) < 0.05 * pairs.hops["cloud_out"]
    # Flow B with a session: each frame goes to the edge once and is encoded once.
    assert proxy_once.hops["edge_in"] < 0.8 * proxy.hops["edge_in"]
    assert proxy_once.hops["cloud_out"] < 0.8 * proxy.hops["cloud_out"]
    text = (tmp_path / "bench.md").read_text()
    assert "| ws-binary | float32 | a-once |" in text
    assert {len(cells(line)) for line in text.splitlines() if line.startswith("|")} == {len(COLUMNS)}
    document = json.loads((tmp_path / "bench.json").read_text())
    assert document["kind"] == "edensplit.bench.compare" and len(document["rows"]) == len(rows)
    assert document["rows"][2]["hops"] == pytest.approx(once.hops)


def cells(line: str) -> list[str]:
    """A Markdown table line's cells (the line starts and ends with a pipe; no cell holds one)."""
    assert line.startswith("|") and line.endswith("|"), line
    return [c.strip() for c in line[1:-1].split("|")]


def test_report_table_has_one_cell_per_column_on_every_line():
    hops = {"cloud_in": 1.5e6, "cloud_out": 2.25e6, "edge_in": 2.5e6, "edge_out": 0.2e6}
    rows = [Row("local", "float32", "-", 3.0, 300, 320, {}, 1.0, None),
            Row("http-binary", "float16", "a-pairs", 2.5, 400, 450, hops, 0.83, 0.25),
            Row("ws-binary", "float32", "b-once", 2.0, 500, 520, {k: v / 2 for k, v in hops.items()}, 0.67, 0.0)]
    text = report(rows, (48, 64), 4, 2)
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows)  # header, separator, one line per row
    header, separator, *body = (cells(line) for line in table)
    assert header == list(COLUMNS)
    assert separator == ["---"] * len(header)
    for row, line in zip(rows, body, strict=True):
        assert len(line) == len(header), line
        by_column = dict(zip(header, line, strict=True))
        assert by_column["transport"] == row.transport and by_column["flow"] == row.flow
    a_row, b_row = (dict(zip(header, line, strict=True)) for line in body[1:])
    # Each hop lands in its own column, in MB; the flow-A path sums cloud out and edge in.
    assert [a_row[c] for c in COLUMNS[6:10]] == ["1.500", "2.250", "2.500", "0.200"]
    assert a_row["cloud→client→edge MB"] == "4.750" and a_row["frames vs local"] == "0.250"
    assert [b_row[c] for c in COLUMNS[6:10]] == ["0.750", "1.125", "1.250", "0.100"]
    assert b_row["cloud→client→edge MB"] == "-" and b_row["frames vs local"] == "identical"
    assert body[0][6:11] == ["-"] * 5  # the local row has no hops


# -- perf and bytes modes ---------------------------------------------------------------------------------------


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


def test_bytes_compares_designs_with_the_users_and_checks_the_acceptance(monkeypatch, model_env, tmp_path):
    for key, value in model_env.items():
        monkeypatch.setenv(key, value)
    rows = run_bytes((48, 64), 4, output=tmp_path / "bytes.md", json_path=tmp_path / "bytes.json", log_dir=tmp_path)
    user, f16, i8 = rows
    assert (user.design, f16.design, i8.design) == ("user's design", "frame-once float16", "frame-once int8")
    assert user.encodings > f16.encodings > i8.encodings
    assert f16.error["mean_abs"] < 0.5 and i8.error["mean_abs"] < 3
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


def test_frame_error_and_time_ms():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 10
    err = frame_error([a, b], [a, a])
    assert err["max_abs"] == 10 and err["mean_abs"] == pytest.approx(10 / 96)
    assert err["psnr_db"] == pytest.approx(10 * np.log10(255 ** 2 / (100 / 96)))
    assert frame_error([a], [a]) == {"mean_abs": 0.0, "max_abs": 0.0, "psnr_db": None}
    calls = []
    ms = time_ms(lambda: calls.append(1), torch.device("cpu"), warmup=2, iters=3)
    assert len(calls) == 5 and ms >= 0
    # Compared figures are timed in turns (warm-ups first), on the wall clock or this process's CPU time.
    order = []
    medians = time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                               torch.device("cpu"), warmup=1, iters=2, clock="cpu")
    assert order == ["a", "b", "a", "b", "a", "b"] and set(medians) == {"a", "b"}
    with pytest.raises(ValueError):
        time_interleaved({"a": lambda: None}, torch.device("cpu"), clock="sundial")


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

"""`edensplit bench` (mode compare) measures what it says: real servers, bytes from their metrics, frames checked
against --local. (A smoke run at a tiny size; the figures themselves come from running the command.)"""

from __future__ import annotations

import json

import pytest

from edensplit.bench.compare import COLUMNS, Row, report, run_bench
from tests.bench.helpers import cells


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

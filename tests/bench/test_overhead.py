"""`edensplit bench --mode overhead`: a smoke run at a tiny size through real servers with the stand-in model (the
figures themselves come from running the command), and the step split's arithmetic."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from edensplit.bench.overhead import FLOOR_REPS, hop_transports
from edensplit.bench.overhead_report import MAIN_COLUMNS, STEP_COLUMNS, WS_COLUMNS, run_overhead
from edensplit.bench.steps import REQUEST, STEPS, split
from edensplit.bench.systems import Design
from tests.bench.helpers import cells


def test_overhead_rows_have_the_floor_and_the_steps(servers, monkeypatch, model_env, tmp_path):
    """Through the suite's servers (the tiny model: the stand-in's are tested in tests/model/test_stand_in.py) and a
    floor server of its own."""
    for key, value in model_env.items():  # the tiny config's shapes, for the stand-in this process times
        monkeypatch.setenv(key, value)
    cloud, edge = servers
    rows = run_overhead([(48, 64)], ("http-binary", "ws-binary"), ("float16",), ("a-once",), frames=3, window=2,
                        budget_s=3, output=tmp_path / "overhead.md", json_path=tmp_path / "overhead.json",
                        log_dir=tmp_path, urls={"cloud": cloud.url, "edge": edge.url})
    assert [(r.transport, r.payload, r.wire_dtype, r.flow) for r in rows] == [
        ("http", "binary", "float16", "a-once"), ("ws", "binary", "float16", "a-once")]
    for row in rows:
        assert row.failed is None and row.rounds >= 1 and row.generated >= 2 * row.rounds
        assert row.ms_per_frame > 0 and row.floor_ms > 0 and row.model_ms >= 0
        assert set(row.model_parts) == {"model", "difference"}
        assert row.hops["cloud_out"] > 0 and row.hops["edge_in"] > 0 and row.hops["edge_out"] > 0
        assert set(row.steps) == {key for key, _ in STEPS} and row.largest_step in dict(STEPS).values()
        assert row.steps["pack"] > 0 and row.steps["read"] > 0 and row.steps["idempotency"] > 0
    document = json.loads((tmp_path / "overhead.json").read_text())
    assert document["kind"] == "edensplit.bench.overhead" and document["acceptance"] is None  # not 1080x1920
    assert "given by URL" in document["environment"]["model"] and document["steps"] == dict(STEPS)
    for row in document["rows"]:
        assert row["overhead_ms"] == pytest.approx(row["ms_per_frame"] - row["model_ms"])
        assert row["overhead_vs_floor"] == pytest.approx(row["overhead_ms"] / row["floor_ms"])
    tables = [[line for line in block.splitlines() if line.startswith("|")]
              for block in (tmp_path / "overhead.md").read_text().split("\n\n")]
    tables = [t for t in tables if t]
    assert [len(t) for t in tables] == [4, 4, 3]  # header, separator, rows: both rows; WS vs HTTP: one
    for table, columns in zip(tables, (MAIN_COLUMNS, STEP_COLUMNS, WS_COLUMNS), strict=True):
        assert cells(table[0]) == list(columns) and {len(cells(line)) for line in table} == {len(columns)}
    assert "Thin rows" in (tmp_path / "overhead.md").read_text() and FLOOR_REPS >= 1


@pytest.mark.parametrize("flow", ["a-once", "b-pairs"])
def test_the_split_adds_up_to_the_clients_request_time(flow):
    """Whatever the servers counted, the steps add up to the client's pack + exchange + unpack; in flow B the
    cloud's request time moves out of the edge's prepare (the edge waited for it there) into the cloud's steps."""
    client = Counter({("edge", "pack"): 0.01, ("edge", "exchange"): 0.5, ("edge", "unpack"): 0.02})
    if flow == "a-once":
        client.update({("cloud", "pack"): 0.03, ("cloud", "exchange"): 0.4, ("cloud", "unpack"): 0.001})
    cloud = Counter({("/api/v1/encode", REQUEST): 0.3, ("/api/v1/encode", "decode"): 0.05,
                     ("/api/v1/encode", "model"): 0.1, ("/api/v1/encode", "read"): 0.02})
    edge = Counter({("/e", REQUEST): 0.45, ("/e", "prepare"): 0.35 if flow == "b-pairs" else 0.001,
                    ("/e", "model"): 0.05, ("/e", "idempotency"): 0.01})
    out = split(client, {"cloud": cloud, "edge": edge}, flow)
    assert list(out) == [key for key, _ in STEPS]
    assert sum(out.values()) == pytest.approx(sum(client.values()))
    if flow == "b-pairs":
        assert out["prepare"] == pytest.approx(0.05) and out["send_receive"] == pytest.approx(0.05)
        assert hop_transports(Design("ws", "binary", flow, "float32"))["cloud_in"] == "http"
    else:
        assert out["send_receive"] == pytest.approx(0.9 - 0.75)

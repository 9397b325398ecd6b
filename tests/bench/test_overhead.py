"""`edensplit bench --mode overhead`: a smoke run at a tiny size through real servers with the stand-in model (the
figures themselves come from running the command), and the step split's arithmetic."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from edensplit.bench.overhead import FLOOR_REPS, SIZES, OverheadRow, hop_transports, run_order
from edensplit.bench.overhead_report import (
    MAIN_COLUMNS,
    PATHS,
    STEP_COLUMNS,
    WS_COLUMNS,
    acceptance,
    paths_table,
    rows_from_json,
    run_overhead,
)
from edensplit.bench.steps import REQUEST, STEPS, split
from edensplit.bench.systems import Design
from edensplit.wire.shm import MAX_HANDLE_BYTES
from tests.bench.helpers import cells


def test_overhead_rows_have_the_floor_the_steps_and_the_bytes(monkeypatch, model_env, tmp_path):
    """A tiny matrix through servers of its own (the stand-in model, the tiny config's shapes, ALLOW_SHM=1) and the
    floor server: every row measured beside its floor, its steps split; the shm rows move their encodings through
    shared memory and only handles over the sockets, as the servers' byte metrics count them."""
    for key, value in model_env.items():  # the tiny config's shapes, for the servers and the stand-in timed here
        monkeypatch.setenv(key, value)
    rows = run_overhead([(96, 128)], ("http-binary", "http-shm", "ws-shm"), ("float16",), ("a-once", "b-once"),
                        frames=3, window=2, budget_s=4, output=tmp_path / "overhead.md",
                        json_path=tmp_path / "overhead.json", log_dir=tmp_path)
    assert [(r.path, r.wire_dtype, r.flow) for r in rows] == [
        ("http-binary", "float16", "a-once"), ("http-shm", "float16", "a-once"), ("ws-shm", "float16", "a-once"),
        ("http-binary", "float32", "b-once"), ("http-shm", "float32", "b-once"), ("ws-shm", "float32", "b-once")]
    for row in rows:
        assert row.failed is None and row.rounds >= 1, row
        assert row.generated == row.rounds * (row.frames_per_round - 1)  # a session of n frames: n - 1 generated
        assert row.ms_per_frame > 0 and row.ms_in_flight > 0 and row.floor_ms > 0 and row.model_ms > 0
        assert set(row.model_parts) == {"model", "difference"}
        assert row.hops["edge_in"] > 0 and row.hops["edge_out"] > 0
        assert set(row.steps) == {key for key, _ in STEPS} and row.largest_step in dict(STEPS).values()
        assert row.steps["pack"] > 0 and row.steps["read"] > 0
    binary, shared, over_ws = rows[:3]
    encoding = binary.hops["cloud_out"]  # the encoding's bytes, over the sockets twice in flow A
    assert binary.hops["edge_in"] >= encoding > 2 * MAX_HANDLE_BYTES and not any(binary.shm_hops.values())
    for row in (shared, over_ws):  # only handles cross the sockets; the encoding goes cloud -> edge in a segment
        assert max(row.hops.values()) <= MAX_HANDLE_BYTES, row.hops
        assert row.shm_hops["cloud_out"] == row.shm_hops["edge_in"] > 2 * MAX_HANDLE_BYTES  # the encodings
        assert row.shm_hops["edge_out"] > 0 and row.shm_hops["cloud_in"] > 0  # the generated frames, the frames
    flow_b = rows[4]  # the edge asks the cloud for handles (EDENSPLIT_SHM=1): the encoding comes back in a segment
    assert flow_b.hops["cloud_out"] <= MAX_HANDLE_BYTES < flow_b.shm_hops["cloud_out"]
    document = json.loads((tmp_path / "overhead.json").read_text())
    assert document["kind"] == "edensplit.bench.overhead" and document["acceptance"] == []  # not 1080x1920
    assert "stand-in" in document["environment"]["model"] and document["steps"] == dict(STEPS)
    for row in document["rows"]:
        assert row["overhead_ms"] == pytest.approx(row["ms_per_frame"] - row["model_ms"])
        assert row["overhead_vs_floor"] == pytest.approx(row["overhead_ms"] / row["floor_ms"])
    text = (tmp_path / "overhead.md").read_text()
    tables = [[line for line in block.splitlines() if line.startswith("|")] for block in text.split("\n\n")]
    tables = [t for t in tables if t]
    assert [len(t) for t in tables] == [8, 8, 4]  # header, separator, rows: six rows; WS vs HTTP: shm in a and b
    for table, columns in zip(tables, (MAIN_COLUMNS, STEP_COLUMNS, WS_COLUMNS), strict=True):
        assert cells(table[0]) == list(columns) and {len(cells(line)) for line in table} == {len(columns)}
    assert "Thin rows" in text and FLOOR_REPS >= 1


def test_acceptance_names_both_criteria_on_the_rows_it_asks_for():
    """HTTP binary against its floor, shared memory against HTTP binary and a handle's bytes per hop."""
    def row(payload: str, overhead: float, floor: float, socket: float) -> OverheadRow:
        return OverheadRow((1080, 1920), "http", payload, "float16", "a-once", rounds=3, ms_per_frame=overhead + 5,
                           model_ms=5, floor_ms=floor, hops=dict.fromkeys(("cloud_in", "cloud_out"), socket))
    met = acceptance([row("binary", 100, 60, 25e6), row("shm", 15, 0.5, 400)])
    assert [m for _, m in met] == [True, True] and "0.15 of http-binary's 100.0 ms" in met[1][0]
    missed = acceptance([row("binary", 130, 60, 25e6), row("shm", 30, 0.5, 400), row("json", 900, 60, 33e6)])
    assert [m for _, m in missed] == [False, False] and "2.17x the floor's 60.0 ms" in missed[0][0]
    assert [m for _, m in acceptance([row("binary", 100, 60, 25e6), row("shm", 15, 0.5, 25e6)])] == [True, False]
    assert acceptance([row("shm", 15, 0.5, 400)]) == []  # nothing to hold it to


def test_the_acceptance_rows_run_first_then_each_size_cheaper_rows_first():
    """The two rows the issue holds to a bar run before any other has loaded the machine (a full run's JSON rows
    grow the bench's process by gigabytes); the rest run size by size, binary and half precision first."""
    plan = run_order(SIZES, ("http-binary", "http-json", "http-shm"), ("float16", "float32"), ("a-once", "b-pairs"))
    first = [(size, f"{d.transport}-{d.payload}", d.wire_dtype, d.flow) for size, d in plan[:2]]
    assert first == [((1080, 1920), "http-binary", "float16", "a-once"),
                     ((1080, 1920), "http-shm", "float16", "a-once")]
    rest = plan[2:]
    assert [size for size, _ in rest] == sorted((size for size, _ in rest), key=SIZES.index)
    small = [d for size, d in rest if size == (480, 854)]
    assert small[0].payload != "json" and small[-1].payload == "json"
    assert len(plan) == len(set(plan)) == 2 * (3 * 2 + 3)  # every row once: a-once in two dtypes, b-pairs in one


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


def test_the_readmes_table_of_paths_is_the_one_the_committed_run_makes():
    """The README's "which path to use" figures are copied from no one's notes: they are benchmarks/overhead.json's
    rows, rendered by the report (and the report carries the same table)."""
    root = Path(__file__).resolve().parents[2]
    rows = rows_from_json(json.loads((root / "benchmarks" / "overhead.json").read_text()))
    table = paths_table(rows)
    assert len(table) == 2 + len(PATHS)
    readme = (root / "README.md").read_text()
    assert "\n".join(table) in readme
    assert "\n".join(table) in (root / "benchmarks" / "overhead.md").read_text()


def test_the_figures_docs_performance_quotes_are_the_committed_runs():
    root = Path(__file__).resolve().parents[2]
    run = (root / "benchmarks" / "overhead.md").read_text()
    doc = (root / "docs" / "performance.md").read_text()
    section = doc[doc.index("## Serving overhead"):doc.index("## GPU")]
    quoted = [line for line in section.splitlines() if line.startswith("| 1080x1920") or line.startswith("> Issue #16")]
    assert len(quoted) == 6
    for line in quoted:
        assert line.removeprefix("> ") in run.splitlines(), line
    assert run.splitlines()[0] in section

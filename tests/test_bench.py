"""`edensplit bench` measures what it says: real servers, bytes from their metrics, frames checked
against --local. (A smoke run at a tiny size; the figures themselves come from running the command.)"""

from __future__ import annotations

from edensplit.bench import run_bench


def test_bench_rows_compare_flows_and_check_frames(monkeypatch, model_env, tmp_path):
    for key, value in model_env.items():
        monkeypatch.setenv(key, value)
    rows = run_bench((48, 64), n_frames=4, transports=("ws-binary",), dtypes=("float32",),
                     flows=("a-pairs", "a-once", "b-pairs", "b-once"), output=tmp_path / "bench.md",
                     log_dir=tmp_path)
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
    assert "| ws-binary | float32 | a-once |" in (tmp_path / "bench.md").read_text()

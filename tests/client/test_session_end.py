"""A job's frame-once sessions are dropped at the edge when the job ends (every level's, over HTTP and WebSocket,
in both flows), so the edge does not hold a finished video's encodings until they expire; and an edge that is
gone by then fails nothing."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edensplit.client.http import HttpTransport
from edensplit.client.services import Edge
from edensplit.servers.launch import free_port
from tests.conftest import generated, run_cli


def edge_metric(url: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def drops(url: str) -> float:
    return edge_metric(url, "edensplit_requests_total", route="/api/v1/sessions/{session_id}", method="DELETE",
                       status="200")


@pytest.mark.parametrize(("transport", "flow", "multi"), [("http", "a", "2"), ("ws", "a", "4"), ("http", "b", "2")])
def test_a_finished_jobs_sessions_are_dropped_at_the_edge(servers, clip, workdir, transport, flow, multi):
    cloud, edge = servers
    before = drops(edge.url)
    held = edge_metric(edge.url, "edensplit_session_cache_sessions")  # other tests' sessions on these shared servers
    out = workdir / f"session-end-{transport}-{flow}-{multi}"
    run_cli("--video_path", str(clip), "--output_dir", str(out), "--seed", "3", "--save_frames",
            "--transport", transport, "--flow", flow, "--multi", multi,
            env={"CLOUD_SERVER_URL": cloud.url, "EDGE_SERVER_URL": edge.url})
    assert generated(out) and all(isinstance(f, np.ndarray) for f in generated(out))
    levels = {"2": 1, "4": 2}[multi]  # a session per level: the job's and its forks'
    assert drops(edge.url) - before == levels
    assert edge_metric(edge.url, "edensplit_session_cache_sessions") == held  # none of this job's left


def test_dropping_a_session_at_an_edge_that_is_gone_fails_nothing():
    edge = Edge(HttpTransport(f"http://127.0.0.1:{free_port()}"))
    assert edge.drop_session("0" * 32) is False
    edge.close()

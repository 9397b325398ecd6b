"""Shared memory end to end: real uvicorn servers with ALLOW_SHM=1 on this machine, the real CLI with --shm. The
frames equal `--local`'s bit for bit over HTTP and WebSocket, in sessions and pairs, and in flow B (the edge with
EDENSPLIT_SHM=1); no encoding crosses a socket (the servers' byte counters); a client or an edge killed mid-job
leaves no segment once the cloud's TTL has passed."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edensplit.client.http import HttpTransport
from edensplit.client.services import Cloud, Edge
from edensplit.servers.launch import ServerProcess
from edensplit.wire import shm
from tests.conftest import N_FRAMES, generated, make_frames, run_cli
from tests.system import finish, long_clip, requests_total, resume, since, start_cli, wait_for_saved

TTL_S = 2.0  # long enough that a stalled test still finds a fresh segment before the sweep takes it
ASK_AND_DIE = """
import json, os, signal, sys
import httpx, numpy as np
from edensplit.wire.frames import pack_frames
frame = np.zeros((72, 96, 3), np.uint8)
r = httpx.post(sys.argv[1] + "/api/v1/encode_frame", content=pack_frames({"frame": frame}), headers={
    "Content-Type": "application/vnd.edensplit.frames+safetensors",
    "Accept": "application/vnd.edensplit.shm-handle+json"})
print(json.dumps(json.loads(r.content)), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture(scope="module")
def shared(model_env, workdir):
    """A cloud and an edge that allow shared memory (the edge also asks the cloud for handles in flow B)."""
    env = {**model_env, "ALLOW_SHM": "1", "SHM_TTL_S": str(TTL_S)}
    with ServerProcess("edensplit.cloud:app", env=env, log_path=workdir / "shm-cloud.log") as cloud, \
            ServerProcess("edensplit.edge:app", env={**env, "CLOUD_SERVER_URL": cloud.url, "EDENSPLIT_SHM": "1"},
                          log_path=workdir / "shm-edge.log") as edge:
        yield cloud, edge


def sent_bytes(url: str) -> dict[str, float]:
    """edensplit_request_bytes_total and edensplit_response_bytes_total by route."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name in ("edensplit_request_bytes_total", "edensplit_response_bytes_total"):
                key = f"{sample.name.split('_')[1]} {sample.labels['route']}"
                totals[key] = totals.get(key, 0) + sample.value
    return totals


def made_by(server: ServerProcess) -> list[str]:
    return [name for name, maker, _ in shm.segments() if maker.split("-")[0] == str(server.proc.pid)]


@pytest.mark.parametrize(("transport", "flow", "mode"),
                         [("http", "a", "session"), ("ws", "a", "session"), ("http", "a", "pairs"),
                          ("http", "b", "session")])
def test_frames_through_shared_memory_equal_local(shared, clip, local_run, workdir, transport, flow, mode):
    cloud, edge = shared
    before = {"cloud": sent_bytes(cloud.url), "edge": sent_bytes(edge.url)}
    out = workdir / f"shm-{transport}-{flow}-{mode}"
    result = run_cli("--video_path", str(clip), "--output_dir", str(out), "--seed", "3", "--save_frames", "--shm",
                     "--transport", transport, "--flow", flow, *(["--pairs"] if mode == "pairs" else []),
                     env={"CLOUD_SERVER_URL": cloud.url, "EDGE_SERVER_URL": edge.url})
    if flow == "a":
        assert "shared memory" in result.stdout
    split = generated(out)
    assert len(split) == len(local_run) == N_FRAMES - 1
    for k, (a, b) in enumerate(zip(split, local_run, strict=True)):
        assert np.array_equal(a, b), f"generated frame {k} differs from --local"
    # Only handles (under 1 KB) crossed the sockets: each frame (a 21 KB container here), encoding (12.9 KB a
    # frame) and generated frame went through shared memory; but in flow B the edge sends the cloud its frames
    # as bytes (it asks only for the encodings' handles).
    after = {"cloud": sent_bytes(cloud.url), "edge": sent_bytes(edge.url)}
    moved = {f"{s} {k}": after[s][k] - before[s].get(k, 0) for s in after for k in after[s]
             if after[s][k] != before[s].get(k, 0) and not k.split()[1].startswith(("/metrics", "/health"))}
    requests = (N_FRAMES if mode == "session" else 2 * (N_FRAMES - 1)) * (2 if flow == "a" else 1)
    small = {k: v for k, v in moved.items() if not (flow == "b" and k.startswith("cloud request"))}
    assert small and all(v < 1000 * requests for v in small.values()), moved
    if flow == "b":
        assert moved["cloud request /api/v1/encode_frame"] > 20_000 * N_FRAMES, moved  # the frames themselves


def test_no_segment_is_left_by_a_client_or_an_edge_killed_mid_job(shared, model_env, workdir):
    cloud, edge = shared
    clip = long_clip(workdir)
    env = {"CLOUD_SERVER_URL": cloud.url, "EDGE_SERVER_URL": edge.url, "EDENSPLIT_SHM": "1"}
    out = workdir / "shm-killed-client"
    job = start_cli("--video_path", str(clip), "--output_dir", str(out), "--seed", "3", "--no_progress",
                    env=env)
    wait_for_saved({out / "interpolated.mp4": job}, 3, hold=True)
    job.send_signal(signal.SIGKILL)
    job.wait()
    gone_within(cloud, TTL_S + 3)
    # A client killed right after the cloud answered with a handle (so a segment is surely waiting for it):
    killed = subprocess.run([sys.executable, "-c", ASK_AND_DIE, cloud.url], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL and json.loads(killed.stdout)["segment"] in made_by(cloud)
    assert shm_gauges(cloud)["edensplit_shm_segments"] == 1  # that one; the cloud's others: spares for its next answers
    gone_within(cloud, TTL_S + 3)
    # The edge, killed mid-job: the client gives up (its retry budget, 1 s), the cloud's segments expire.
    with ServerProcess("edensplit.edge:app", env={**model_env, "ALLOW_SHM": "1"},
                       log_path=workdir / "shm-edge-2.log") as doomed:
        out = workdir / "shm-killed-edge"
        job = start_cli("--video_path", str(clip), "--output_dir", str(out), "--seed", "3", "--no_progress",
                        env={**env, "EDGE_SERVER_URL": doomed.url, "EDENSPLIT_RETRY_FOR": "1"})
        wait_for_saved({out / "interpolated.mp4": job}, 3, hold=True)
        doomed.proc.send_signal(signal.SIGKILL)
        resume({out / "interpolated.mp4": job})
        code, _, err = finish(job, timeout=60)
        assert code != 0 and "edge server" in err
    gone_within(cloud, TTL_S + 3)


def shm_gauges(server: ServerProcess) -> dict[str, float]:
    """The server's shared-memory gauges by name."""
    names = ("edensplit_shm_segments", "edensplit_shm_bytes", "edensplit_shm_spare_bytes")
    families = text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)
    return {sample.name: sample.value for family in families for sample in family.samples if sample.name in names}


def gone_within(cloud: ServerProcess, seconds: float) -> None:
    """No segment of the cloud's left (its spares gone too, unused for the TTL), and its gauges back to 0 (they
    follow the files at the next sweep)."""
    deadline = time.monotonic() + seconds
    while True:
        shm_lines = shm_gauges(cloud)
        if not made_by(cloud) and shm_lines == dict.fromkeys(shm_lines, 0.0) and len(shm_lines) == 3:
            return
        assert time.monotonic() < deadline, f"segments left: {made_by(cloud)}, {shm_lines}"
        time.sleep(0.1)


def test_bytes_where_a_server_takes_no_handles_said_once(shared, servers, clip, local_run, workdir):
    cloud, _ = shared
    _, plain_edge = servers  # no ALLOW_SHM
    out = workdir / "shm-plain-edge"
    result = run_cli("--video_path", str(clip), "--output_dir", str(out), "--seed", "3", "--save_frames", "--shm",
                     env={"CLOUD_SERVER_URL": cloud.url, "EDGE_SERVER_URL": plain_edge.url})
    assert all(np.array_equal(a, b) for a, b in zip(generated(out), local_run, strict=True))
    said = [line for line in result.stderr.splitlines() if "takes no shared-memory handles" in line]
    assert len(said) == 2, result.stderr  # once for its frames, once for the encodings the cloud made


def test_an_encoding_used_twice_is_encoded_again(shared):
    """A handle is good once: a second use (or a retry after the edge took it) has the cloud encode it again."""
    cloud_server, edge_server = shared
    frames = make_frames(2, 40, 70)
    with Cloud(HttpTransport(cloud_server.url), shm=True) as cloud, Edge(HttpTransport(edge_server.url),
                                                                         shm=True) as edge:
        before = requests_total(cloud_server)
        encoded = cloud.encode(frames[0], frames[1])
        assert encoded.handle is not None and encoded.blob is None
        first, second = edge.interpolate(encoded), edge.interpolate(encoded)
        assert np.array_equal(first, second)
        encodes = since(before, requests_total(cloud_server))
        assert encodes == {("/api/v1/encode", "POST", "200"): 2}, encodes
    del first, second  # the edge's frames: this process may view them in place (a segment it holds) until then
    gc.collect()
    assert not [name for name, maker, _ in shm.segments() if maker.split("-")[0] == str(os.getpid())]


def test_a_request_refused_while_the_clouds_budget_is_full_gets_in_once_it_frees(shared, model_env, workdir):
    """Backpressure through shared memory: while the cloud holds an answer nobody takes, a second request is
    refused (503) and retried, as one with the bytes would be, until the first answer's TTL frees the budget. At
    the byte budget the cloud only knows the answer's size once it has taken the client's segment: the retry finds
    it gone (SHM_NOT_FOUND, 410), and the client writes it again for as long as its retry policy lasts. (At the
    segment limit the cloud refuses before taking it: tests/servers/test_shm.py.)"""
    cloud_server, _ = shared
    frames = make_frames(2, 40, 70)
    with Cloud(HttpTransport(cloud_server.url), shm=True) as cloud:
        size = cloud.encode_frame(frames[0]).handle.size  # the answer's bytes, on a cloud of the same model
    env = {**model_env, "ALLOW_SHM": "1", "SHM_TTL_S": "3", "BODY_MEMORY_MB": str(1.5 * size / 2**20)}
    with ServerProcess("edensplit.cloud:app", env=env, log_path=workdir / "shm-full.log") as full, \
            Cloud(HttpTransport(full.url), shm=True) as cloud:
        held = cloud.encode_frame(frames[0])  # never taken: it holds the cloud's budget until its TTL
        before, started = requests_total(full), time.monotonic()
        second = cloud.encode_frame(frames[1])
        waited, counts = time.monotonic() - started, since(before, requests_total(full))
    assert held.handle is not None and second.handle is not None
    assert waited >= 2.0  # it got in once the held answer's TTL (3 s) had passed, not before
    route = "/api/v1/encode_frame"
    assert counts[(route, "POST", "200")] == 1 and counts[(route, "POST", "503")] >= 2, counts
    assert counts[(route, "POST", "410")] >= 2, counts  # written again more than once (it used to give up then)
    assert not [name for name, maker, _ in shm.segments() if maker.split("-")[0] == str(os.getpid())]

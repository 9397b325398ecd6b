"""Streaming end to end (real uvicorn servers on loopback): WebSocket JSON and binary, frame-once
sessions, flow B, payloads over uvicorn's 16 MiB WebSocket limit, several clients at once, and a
connection killed mid-video. Every generated frame must equal the `--local` run's, exactly once."""

from __future__ import annotations

import itertools
import socket
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edensplit.client.backends import Wrapper
from edensplit.client.flows import FrameOnceClient, open_backend
from edensplit.client.jobs import interpolate_video
from edensplit.client.services import Cloud, Edge
from edensplit.client.ws import WsTransport
from edensplit.model.checkpoint import load_model
from edensplit.model.stages import encode_frames
from edensplit.servers.launch import ServerProcess, free_port
from edensplit.video.reading import read_frames
from edensplit.wire.blob import unpack_encoding
from tests.conftest import N_FRAMES, TINY_CONFIG, generated, run_cli

# Every combination the README names: transport x payload x flow x (frame-once | --pairs) = 16, and each HTTP one
# again with --compress zstd (HTTP only; with the JSON payload it compresses nothing, as the README says: "compress
# binary bodies", so it must still work and give the same frames).
MODES = [(transport, payload, flow, session, compress)
         for transport, payload, flow, session in itertools.product(("http", "ws"), ("binary", "json"), ("a", "b"),
                                                                    ("once", "pairs"))
         for compress in (("none", "zstd") if transport == "http" else ("none",))]
HIDDEN = ("/metrics", "/health")  # the test's own requests


def served(server: ServerProcess) -> dict[str, dict[str, float]]:
    """The server's /metrics: requests answered and request/response bytes, by route."""
    totals: dict[str, dict[str, float]] = {"requests": {}, "bytes_in": {}, "bytes_out": {}}
    names = {"edensplit_requests_total": "requests", "edensplit_request_bytes_total": "bytes_in",
             "edensplit_response_bytes_total": "bytes_out"}
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics", timeout=30).text):
        for sample in family.samples:
            route = sample.labels.get("route", "")
            if sample.name in names and not route.startswith(HIDDEN):
                counts = totals[names[sample.name]]
                counts[route] = counts.get(route, 0) + sample.value
    return totals


def since(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {kind: {route: n - before[kind].get(route, 0) for route, n in counts.items()
                   if n != before[kind].get(route, 0)} for kind, counts in after.items()}


SESSION_ROUTE = "/api/v1/sessions/{session_id}"  # DELETE, over plain HTTP whatever the transport


@pytest.mark.parametrize("transport,payload,flow,session,compress", MODES,
                         ids=["-".join(m[:4]) + ("-zstd" if m[4] == "zstd" else "") for m in MODES])
def test_every_transport_and_flow_is_bit_identical_to_local(servers, clip, local_run, workdir, transport, payload,
                                                            flow, session, compress):
    cloud, edge = servers
    out = workdir / "-".join(("stream", transport, payload, flow, session, compress))
    # Flow B: the client is given a cloud it cannot reach; only the edge may call the cloud.
    cloud_url = cloud.url if flow == "a" else f"http://127.0.0.1:{free_port()}"
    before = served(cloud), served(edge)
    result = run_cli("--video_path", str(clip), "--output_dir", str(out), "--seed", "3", "--save_frames",
                     "--transport", transport, "--payload", payload, "--flow", flow, "--compress", compress,
                     *(("--pairs",) if session == "pairs" else ()),
                     "--cloud_url", cloud_url, "--edge_url", edge.url, "--no_progress", env={})
    on_cloud, on_edge = since(before[0], served(cloud)), since(before[1], served(edge))
    assert f"{N_FRAMES} frames in, {2 * N_FRAMES - 1} out" in result.stdout
    frames = generated(out)
    assert len(frames) == N_FRAMES - 1
    for k, (a, b) in enumerate(zip(frames, local_run, strict=True)):
        assert np.array_equal(a, b), f"generated frame {k} differs from --local"

    # The combination really ran. Frame-once: one request per frame on each server (the edge's first only stores
    # frame 0); pairs: one per pair. In flow B the cloud's requests come from the edge, over HTTP.
    requests = N_FRAMES if session == "once" else N_FRAMES - 1
    assert sum(on_cloud["requests"].values()) == requests, on_cloud
    dropped = on_edge["requests"].pop(SESSION_ROUTE, 0)  # the job's end: its session dropped at the edge
    assert sum(on_edge["requests"].values()) == requests, on_edge
    assert dropped == (1 if session == "once" else 0)
    over_ws = {"cloud": requests if (transport, flow) == ("ws", "a") else 0,
               "edge": requests if transport == "ws" else 0}
    for name, counts in (("cloud", on_cloud), ("edge", on_edge)):
        assert sum(n for route, n in counts["requests"].items() if route.startswith("/ws/")) == over_ws[name], counts
    # The frames the client sends (to the cloud in flow A, the edge in flow B) travel as raw pixels on the binary
    # path (at least H*W*3 bytes each), as PNG in JSON or zstd-compressed far below that.
    height, width, _ = frames[0].shape
    raw = (N_FRAMES if session == "once" else 2 * (N_FRAMES - 1)) * height * width * 3
    frames_in = sum((on_cloud if flow == "a" else on_edge)["bytes_in"].values())
    if payload == "binary" and compress == "none":
        assert frames_in >= raw, (frames_in, raw)
    else:
        assert frames_in < raw, (frames_in, raw)
    if payload == "binary" and compress == "zstd":  # and the edge's binary answers come back compressed
        assert sum(on_edge["bytes_out"].values()) < (N_FRAMES - 1) * height * width * 3, on_edge


def test_payloads_over_16_mib_pass_a_plain_uvicorn_server(servers):
    cloud, _ = servers
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 2944, 2976, 3), dtype=np.uint8)  # 53 MB in, a 17.5 MB blob out (< MAX_PIXELS)
    client = Cloud(WsTransport(cloud.url, path=Cloud.WS_PATH), payload="binary")
    try:
        encoded = client.encode(frames[0], frames[1])
    finally:
        client.close()
    assert encoded.size > 16 * 2**20
    local = encode_frames(load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=0), frames)
    remote = unpack_encoding(encoded.raw, frames=2).encoding
    assert torch_equal(remote.cond_dit, local.cond_dit) and torch_equal(remote.cond_dec, local.cond_dec)


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_several_clients_at_once(servers, clip, local_run, workdir):
    cloud, edge = servers
    results: dict[int, list[np.ndarray]] = {}

    def job(i: int) -> None:
        backend = open_backend(cloud_url=cloud.url, edge_url=edge.url, transport="ws", payload="binary")
        try:
            interpolate_video(backend, clip, workdir / f"many-{i}", seed=3, save_frames=True, progress=False)
        finally:
            backend.close()
        results[i] = generated(workdir / f"many-{i}")

    threads = [threading.Thread(target=job, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(results) == [0, 1, 2]
    for frames in results.values():
        assert all(np.array_equal(a, b) for a, b in zip(frames, local_run, strict=True))


class Saboteur(Wrapper):
    """Wraps a backend: cuts the cloud connection's socket at pair `cut_at` and restarts the edge server
    (losing its session cache) at pair `restart_at`, while other pairs are in flight."""

    def __init__(self, backend: FrameOnceClient, edge: ServerProcess, cut_at: int, restart_at: int):
        super().__init__(backend)
        self.backend, self.edge, self.cut_at, self.restart_at = backend, edge, cut_at, restart_at
        self.calls: list[int] = []

    def interpolate_pair(self, frame0, frame1, seed, index):
        self.calls.append(index)
        if index == self.cut_at:
            self.backend.cloud.transport._conn.socket.shutdown(socket.SHUT_RDWR)
        if index == self.restart_at:
            self.edge.stop()
            self.edge.start()
        return self.backend.interpolate_pair(frame0, frame1, seed, index)


def test_killed_connections_mid_video_still_give_every_frame_exactly_once(model_env, clip, local_run, workdir):
    with ServerProcess("edensplit.cloud:app", env=model_env, log_path=workdir / "kill-cloud.log") as cloud, \
            ServerProcess("edensplit.edge:app", env=model_env, log_path=workdir / "kill-edge.log") as edge:
        backend = FrameOnceClient(Cloud(WsTransport(cloud.url, path=Cloud.WS_PATH, timeout=60)),
                                  Edge(WsTransport(edge.url, path=Edge.WS_PATH, timeout=60)))
        saboteur = Saboteur(backend, edge, cut_at=3, restart_at=6)
        try:
            result = interpolate_video(saboteur, clip, Path(workdir) / "killed", seed=3, save_frames=True,
                                       progress=False, codec="ffv1")
        finally:
            backend.close()
    assert backend.cloud.transport.reconnects >= 1 and backend.edge.transport.reconnects >= 1
    assert backend.resent >= 1  # the restarted edge had lost the session; the client rebuilt it
    assert sorted(saboteur.calls) == list(range(N_FRAMES - 1))
    assert result.frames_out == 2 * N_FRAMES - 1
    frames = generated(workdir / "killed")
    assert len(frames) == N_FRAMES - 1
    for k, (a, b) in enumerate(zip(frames, local_run, strict=True)):
        assert np.array_equal(a, b), f"generated frame {k} differs from --local"
    # Exactly once, in the video itself (lossless ffv1): f0, m01, f1, ..., f_last, each frame in its place. A lost
    # answer shortens it, a duplicated one lengthens it or puts a frame where another belongs (the generated frames
    # all differ from one another and from the inputs, so any misplaced frame fails its comparison).
    video = list(read_frames(result.output))
    inputs = list(read_frames(clip))
    assert len(video) == 2 * N_FRAMES - 1
    for k, frame in enumerate(inputs):
        assert np.array_equal(video[2 * k], frame), f"output frame {2 * k} is not input frame {k}"
    for k, frame in enumerate(local_run):
        assert np.array_equal(video[2 * k + 1], frame), f"output frame {2 * k + 1} is not --local's generated frame {k}"
    assert all(not np.array_equal(a, b) for i, a in enumerate(video) for b in video[i + 1:]), "a frame appears twice"

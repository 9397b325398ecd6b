"""Streaming end to end (real uvicorn servers on loopback): WebSocket JSON and binary, frame-once
sessions, flow B, payloads over uvicorn's 16 MiB WebSocket limit, several clients at once, and a
connection killed mid-video. Every generated frame must equal the `--local` run's, exactly once."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from edensplit.client.flows import FrameOnceClient, open_backend
from edensplit.client.jobs import interpolate_video
from edensplit.client.ws import WsCloudClient, WsEdgeClient
from edensplit.model import encode_frames, load_model
from edensplit.servers.launch import ServerProcess
from edensplit.wire import unpack_encoding
from tests.conftest import N_FRAMES, TINY_CONFIG, generated, run_cli

MODES = [  # transport, payload, flow, extra flags
    ("ws", "binary", "a", ()),
    ("ws", "json", "a", ()),
    ("ws", "binary", "a", ("--pairs",)),
    ("ws", "json", "a", ("--pairs",)),
    ("http", "binary", "a", ("--pairs",)),
    ("http", "json", "a", ("--pairs",)),
    ("http", "binary", "a", ("--compress", "zstd")),
    ("ws", "binary", "b", ()),
    ("ws", "json", "b", ()),
    ("http", "binary", "b", ()),
    ("http", "json", "b", ()),
    ("ws", "binary", "b", ("--pairs",)),
    ("http", "json", "b", ("--pairs",)),
]


@pytest.mark.parametrize("transport,payload,flow,extra", MODES,
                         ids=["-".join((t, p, f, *(x.strip("-") for x in e))) for t, p, f, e in MODES])
def test_every_transport_and_flow_is_bit_identical_to_local(servers, clip, local_run, workdir, transport, payload,
                                                            flow, extra):
    cloud, edge = servers
    out = workdir / ("stream-" + "-".join((transport, payload, flow, *(x.strip("-") for x in extra))))
    result = run_cli("--video_path", str(clip), "--output_dir", str(out), "--seed", "3", "--save_frames",
                     "--transport", transport, "--payload", payload, "--flow", flow, *extra,
                     "--cloud_url", cloud.url, "--edge_url", edge.url, "--no_progress", env={})
    assert f"{N_FRAMES} frames in, {2 * N_FRAMES - 1} out" in result.stdout
    frames = generated(out)
    assert len(frames) == N_FRAMES - 1
    for k, (a, b) in enumerate(zip(frames, local_run, strict=True)):
        assert np.array_equal(a, b), f"generated frame {k} differs from --local"


def test_payloads_over_16_mib_pass_a_plain_uvicorn_server(servers):
    cloud, _ = servers
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 3072, 3072, 3), dtype=np.uint8)  # 56 MB of frames in, a 19 MB blob out
    client = WsCloudClient(cloud.url, payload="binary")
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


class Saboteur:
    """Wraps a backend: cuts the cloud connection's socket at pair `cut_at` and restarts the edge server
    (losing its session cache) at pair `restart_at`, while other pairs are in flight."""

    def __init__(self, backend: FrameOnceClient, edge: ServerProcess, cut_at: int, restart_at: int):
        self.backend, self.edge, self.cut_at, self.restart_at = backend, edge, cut_at, restart_at
        self.calls: list[int] = []

    def begin_video(self) -> None:
        self.backend.begin_video()

    def interpolate_pair(self, frame0, frame1, seed, index):
        self.calls.append(index)
        if index == self.cut_at:
            self.backend.cloud.channel._conn.socket.shutdown(socket.SHUT_RDWR)
        if index == self.restart_at:
            self.edge.stop()
            self.edge.start()
        return self.backend.interpolate_pair(frame0, frame1, seed, index)


def test_killed_connections_mid_video_still_give_every_frame_exactly_once(model_env, clip, local_run, workdir):
    with ServerProcess("edensplit.cloud:app", env=model_env, log_path=workdir / "kill-cloud.log") as cloud, \
            ServerProcess("edensplit.edge:app", env=model_env, log_path=workdir / "kill-edge.log") as edge:
        backend = FrameOnceClient(WsCloudClient(cloud.url, timeout=60), WsEdgeClient(edge.url, timeout=60))
        saboteur = Saboteur(backend, edge, cut_at=3, restart_at=6)
        try:
            result = interpolate_video(saboteur, clip, Path(workdir) / "killed", seed=3, save_frames=True,
                                       progress=False, codec="ffv1")
        finally:
            backend.close()
    assert backend.cloud.channel.reconnects >= 1 and backend.edge.channel.reconnects >= 1
    assert backend.resent >= 1  # the restarted edge had lost the session; the client rebuilt it
    assert sorted(saboteur.calls) == list(range(N_FRAMES - 1))
    assert result.frames_out == 2 * N_FRAMES - 1
    frames = generated(workdir / "killed")
    assert len(frames) == N_FRAMES - 1
    for k, (a, b) in enumerate(zip(frames, local_run, strict=True)):
        assert np.array_equal(a, b), f"generated frame {k} differs from --local"

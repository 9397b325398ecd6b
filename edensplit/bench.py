"""`edensplit bench`: transports x wire dtypes x flows against `--local`, on this machine.

Starts a cloud and an edge server (real uvicorn processes on loopback; the full-size EDEN with random
weights unless MODEL_PATH is set), interpolates the same generated clip through every combination,
and prints, per combination: output frames/s, p50/p95 latency per generated frame, and the bytes per
generated frame on each hop, read from the servers' own /metrics (the bytes on the wire). The local
baseline runs both stages in this process on the same machine.
"""

from __future__ import annotations

import os
import platform
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import httpx
import numpy as np
import torch

from edensplit.client.flows import open_backend
from edensplit.client.jobs import LocalBackend, PairBackend, interpolate_stream
from edensplit.model import ALL_STAGES, LocalPipeline
from edensplit.servers.launch import ServerProcess
from edensplit.servers.runtime import load_model_for
from edensplit.settings import ModelSettings
from edensplit.video import make_sample_clip, read_frames

TRANSPORTS = ("http-json", "http-binary", "ws-json", "ws-binary")
FLOWS = ("a-pairs", "a-once", "b-pairs", "b-once")
_BYTES = re.compile(r'^edensplit_(request|response)_bytes_total\{route="([^"]+)"\} ([0-9.e+]+)$', re.M)


@dataclass
class Timed:
    """Wraps a backend and records each pair's latency."""

    backend: PairBackend
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def begin_video(self) -> None:
        begin = getattr(self.backend, "begin_video", None)
        if begin is not None:
            begin()

    def interpolate_pair(self, frame0: np.ndarray, frame1: np.ndarray, seed: int, index: int) -> np.ndarray:
        started = time.perf_counter()
        frame = self.backend.interpolate_pair(frame0, frame1, seed, index)
        with self.lock:
            self.latencies.append(time.perf_counter() - started)
        return frame


@dataclass
class Row:
    transport: str
    dtype: str
    flow: str
    fps: float
    p50_ms: float
    p95_ms: float
    hops: dict[str, float]  # bytes per generated frame
    speed: float  # output frames/s relative to local
    error: float | None  # mean absolute difference from the local run's frames, in grey levels (0 = identical)


def wire_bytes(url: str) -> dict[str, float]:
    """{'in': request bytes, 'out': response bytes} a server has counted (HTTP and WebSocket)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    totals = {"in": 0.0, "out": 0.0}
    for kind, route, value in _BYTES.findall(text):
        if route.startswith(("/api/", "/ws/")):
            totals["in" if kind == "request" else "out"] += float(value)
    return totals


def run_once(backend: PairBackend, frames: list[np.ndarray], window: int) -> tuple[float, list[float], list]:
    timed = Timed(backend)
    started = time.perf_counter()
    out = [f for f, generated in interpolate_stream(timed, frames, base_seed=0, window=window) if generated]
    return time.perf_counter() - started, timed.latencies, out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1000 if values else float("nan")


def run_bench(size: tuple[int, int] = (240, 428), n_frames: int = 6, transports: tuple[str, ...] = TRANSPORTS,
              dtypes: tuple[str, ...] = ("float32", "float16"), flows: tuple[str, ...] = FLOWS, window: int = 2,
              output: Path | None = None, log_dir: Path | None = None) -> list[Row]:
    height, width = size
    tmp = Path(tempfile.mkdtemp(prefix="edensplit-bench-"))
    log_dir = log_dir or tmp
    clip = make_sample_clip(tmp / "clip.mkv", n_frames=n_frames, width=width, height=height, rate=Fraction(24))
    frames = list(read_frames(clip))
    env = {} if os.environ.get("MODEL_PATH") else {"EDEN_RANDOM_WEIGHTS": "1"}
    settings = ModelSettings(**{"eden_random_weights": True} if env else {})
    model = load_model_for(ALL_STAGES, settings)
    local = LocalBackend(LocalPipeline(model))
    run_once(local, frames[:2], 1)  # warm-up
    local_s, local_lat, reference = run_once(local, frames, 1)
    out_frames = 2 * n_frames - 1
    local_fps = out_frames / local_s
    print(f"local: {local_fps:.2f} output frames/s, p50 {percentile(local_lat, 50):.0f} ms "
          f"({model.weights_source}, {height}x{width}, {n_frames} frames)", flush=True)
    del model, local
    rows = [Row("local", "float32", "-", local_fps, percentile(local_lat, 50), percentile(local_lat, 95), {}, 1.0,
                None)]
    with ServerProcess("edensplit.cloud:app", env=env, log_path=log_dir / "bench-cloud.log") as cloud, \
            ServerProcess("edensplit.edge:app", env={**env, "CLOUD_SERVER_URL": cloud.url},
                          log_path=log_dir / "bench-edge.log") as edge:
        for flow in flows:
            for transport in transports:
                for dtype in dtypes if not flow.startswith("b") else ("float32",):
                    kind, payload = transport.split("-")
                    backend = open_backend(cloud_url=cloud.url, edge_url=edge.url, transport=kind, payload=payload,
                                           flow=flow[0], frame_once=flow.endswith("once"), wire_dtype=dtype,)
                    try:
                        run_once(backend, frames[:2], 1)  # warm-up: connections, first-call costs
                        before = {"cloud": wire_bytes(cloud.url), "edge": wire_bytes(edge.url)}
                        seconds, lat, out = run_once(backend, frames, window)
                        after = {"cloud": wire_bytes(cloud.url), "edge": wire_bytes(edge.url)}
                    finally:
                        backend.close()
                    n = len(out)
                    delta = {f"{s}_{d}": (after[s][d] - before[s][d]) / n for s in after for d in ("in", "out")}
                    error = float(np.mean([np.abs(a.astype(float) - b).mean() for a, b in zip(out, reference,
                                                                                               strict=True)]))
                    row = Row(transport, dtype, flow, out_frames / seconds, percentile(lat, 50), percentile(lat, 95),
                              delta, out_frames / seconds / local_fps, error)
                    rows.append(row)
                    print(format_row(row), flush=True)
    text = report(rows, size, n_frames, window)
    print(text)
    if output:
        output.write_text(text)
    return rows


def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e6:.3f}"


# One column per hop, named by the server that counts it (its /metrics): (Row.hops key, column header).
# Flow A: client→cloud, cloud→client, client→edge, edge→client. Flow B (the edge proxies to the cloud):
# edge→cloud, cloud→edge, client→edge, edge→client.
HOP_COLUMNS = (
    ("cloud_in", "into cloud MB (A: client→cloud, B: edge→cloud)"),
    ("cloud_out", "out of cloud MB (A: cloud→client, B: cloud→edge)"),
    ("edge_in", "into edge MB (client→edge)"),
    ("edge_out", "out of edge MB (edge→client)"),
)
COLUMNS = ("transport", "wire dtype", "flow", "output frames/s", "p50 ms", "p95 ms",
           *(title for _, title in HOP_COLUMNS), "cloud→client→edge MB", "vs local", "frames vs local")


def _table_line(cells: list[str] | tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"


def row_cells(row: Row) -> list[str]:
    """A row's cells, one per entry of COLUMNS ('-' where a hop or figure does not apply)."""
    h = row.hops
    a_path = (h.get("cloud_out", 0) + h.get("edge_in", 0)) if h and not row.flow.startswith("b") else None
    same = "-" if row.error is None else ("identical" if row.error == 0 else f"{row.error:.3f}")
    return [row.transport, row.dtype, row.flow, f"{row.fps:.2f}", f"{row.p50_ms:.0f}", f"{row.p95_ms:.0f}",
            *(_mb(h.get(key)) for key, _ in HOP_COLUMNS), _mb(a_path), f"{row.speed:.2f}x", same]


def format_row(row: Row) -> str:
    """One Markdown table row: exactly len(COLUMNS) cells, so it renders under the report's header."""
    return _table_line(row_cells(row))


def report(rows: list[Row], size: tuple[int, int], n_frames: int, window: int) -> str:
    cpu = platform.processor() or platform.machine()
    device = "CPU" if not torch.cuda.is_available() else torch.cuda.get_device_name(0)
    lines = [
        f"edensplit bench: {size[0]}x{size[1]}, {n_frames} input frames ({2 * n_frames - 1} output, "
        f"{n_frames - 1} generated), pairs in flight {window}; {os.cpu_count()} cores ({cpu}), {device}, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "Bytes are per generated frame (MB), as counted by the servers, one column per hop: flow A's hops are "
        "client→cloud, cloud→client, client→edge, edge→client; flow B's (the edge forwards to the cloud) "
        "edge→cloud, cloud→edge, client→edge, edge→client. The cloud→client→edge column is the flow-A path "
        "(cloud out + edge in). 'vs local' is output frames/s relative to --local in one process; "
        "'frames vs local' the mean absolute difference of the generated frames in grey levels.",
        "",
        _table_line(COLUMNS),
        "|" + "---|" * len(COLUMNS),
    ]
    lines += [format_row(r) for r in rows]
    return "\n".join(lines) + "\n"


def parse_size(text: str) -> tuple[int, int]:
    height, _, width = text.lower().partition("x")
    return int(height), int(width)

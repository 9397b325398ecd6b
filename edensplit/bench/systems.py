"""Through real servers: a cloud and an edge on loopback, one design (transport, payload, flow, wire dtype) on one
clip, the bytes per hop the servers counted (/metrics), and the row a run makes (shared by perf and bytes)."""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from edensplit.bench.timing import percentile, run_once
from edensplit.client.flows import open_backend
from edensplit.servers.launch import ServerProcess
from edensplit.wire import codecs

# Seconds per request attempt: a benchmark measures how long a pair takes, on a loaded CPU too (a 480x854 pair on
# one busy core can take over the client's default 30 s), and leaves retries to the tests of retries.
REQUEST_TIMEOUT_S = 300.0
_BYTES = re.compile(r'^edensplit_(request|response)_bytes_total\{route="([^"]+)"\} ([0-9.e+]+)$', re.M)


def route_bytes(url: str) -> dict[tuple[str, str], float]:
    """{(request|response, route): body bytes} a server has counted on its API routes (HTTP and WebSocket)."""
    return route_bytes_of(httpx.get(f"{url}/metrics", timeout=10).text)


def route_bytes_of(text: str) -> dict[tuple[str, str], float]:
    """`route_bytes` from a /metrics text already read."""
    return {(kind, route): float(value) for kind, route, value in _BYTES.findall(text)
            if route.startswith(("/api/", "/ws/"))}


def wire_bytes(url: str) -> dict[str, float]:
    """{'in': request bytes, 'out': response bytes} a server has counted (HTTP and WebSocket)."""
    totals = {"in": 0.0, "out": 0.0}
    for (kind, _), value in route_bytes(url).items():
        totals["in" if kind == "request" else "out"] += value
    return totals


def frame_error(frames: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> dict[str, float | None]:
    """Frames against reference frames, all pixels pooled: mean and max absolute difference in grey levels,
    and PSNR in dB (None when identical)."""
    diff = np.concatenate([(a.astype(np.float64) - b).ravel() for a, b in zip(frames, reference, strict=True)])
    mse = float(np.mean(diff ** 2))
    return {"mean_abs": float(np.mean(np.abs(diff))), "max_abs": float(np.max(np.abs(diff))),
            "psnr_db": None if mse == 0 else 10 * math.log10(255 ** 2 / mse)}


def start_together(stack: contextlib.ExitStack, *processes: ServerProcess) -> None:
    """Launch the processes at once, then wait until each is ready; each is stopped when `stack` closes."""
    for process in processes:
        stack.callback(process.stop)
        process.launch()
    for process in processes:
        process.wait_ready()


@contextlib.contextmanager
def servers(env: dict[str, str], log_dir: Path, tag: str = "bench", edge_env: dict[str, str] | None = None
            ) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """A cloud and an edge (which knows the cloud, for flow B; `edge_env` its own settings over `env`, e.g. another
    DEVICE): real uvicorn processes on loopback, started at once."""
    cloud = ServerProcess("edensplit.cloud:app", env=env, log_path=log_dir / f"{tag}-cloud.log")
    edge = ServerProcess("edensplit.edge:app", env={**env, **(edge_env or {}), "CLOUD_SERVER_URL": cloud.url},
                         log_path=log_dir / f"{tag}-edge.log")
    with contextlib.ExitStack() as stack:
        start_together(stack, cloud, edge)
        yield cloud, edge


@dataclass(frozen=True)
class Design:
    """How a clip travels: transport (http, ws), payload (json, binary), flow (a-pairs, a-once, b-pairs, b-once),
    wire dtype of the encodings."""

    transport: str
    payload: str
    flow: str
    wire_dtype: str

    @property
    def name(self) -> str:
        if self == USER_DESIGN:
            return "user's design"
        return "frame-once" if self.flow.endswith("once") else "pair at a time"


USER_DESIGN = Design("http", "json", "a-pairs", codecs.FLOAT32.name)


@dataclass
class SystemRun:
    """What one design's run through the servers gave: time, latencies, frames, bytes by route."""

    seconds: float
    latencies: list[float]
    frames: list[np.ndarray]
    routes: dict[str, dict[str, float]]  # server -> "request|response route" -> bytes per generated frame

    def hops(self) -> dict[str, float]:
        """Bytes per generated frame by hop: cloud_in, cloud_out, edge_in, edge_out."""
        return hops_of(self.routes)


def hops_of(routes: dict[str, dict[str, float]]) -> dict[str, float]:
    """Bytes by hop (cloud_in, cloud_out, edge_in, edge_out) from {server: {"request|response route": bytes}}."""
    out = {}
    for server, by_route in routes.items():
        for direction, kind in (("in", "request"), ("out", "response")):
            out[f"{server}_{direction}"] = sum(v for k, v in by_route.items() if k.startswith(kind + " "))
    return out


def routes_per_frame(before: dict[str, dict[tuple[str, str], float]], after: dict[str, dict[tuple[str, str], float]],
                     n: int) -> dict[str, dict[str, float]]:
    """{server: {"request|response route": bytes per generated frame}} from `route_bytes` before and after n
    generated frames (the routes that moved)."""
    return {s: {f"{kind} {route}": (value - before[s].get((kind, route), 0.0)) / n
                for (kind, route), value in after[s].items() if value != before[s].get((kind, route), 0.0)}
            for s in after}


def run_design(cloud_url: str, edge_url: str, design: Design, frames: list[np.ndarray], window: int) -> SystemRun:
    """One warm-up pair, then the clip; bytes are what the servers counted meanwhile, per generated frame. Payload
    "shm": binary bodies through shared memory (`--shm`; servers on this machine with ALLOW_SHM=1)."""
    shared = design.payload == "shm"
    backend = open_backend(cloud_url=cloud_url, edge_url=edge_url, transport=design.transport,
                           payload="binary" if shared else design.payload, flow=design.flow[0],
                           frame_once=design.flow.endswith("once"), wire_dtype=design.wire_dtype,
                           timeout=REQUEST_TIMEOUT_S, shm=shared)
    urls = {"cloud": cloud_url, "edge": edge_url}
    try:
        run_once(backend, frames[:2], 1)  # warm-up: connections, first-call costs
        before = {s: route_bytes(u) for s, u in urls.items()}
        seconds, latencies, out = run_once(backend, frames, window)
        after = {s: route_bytes(u) for s, u in urls.items()}
    finally:
        backend.close()
    return SystemRun(seconds, latencies, out, routes_per_frame(before, after, len(out)))


@dataclass
class SystemRow:
    """One design at one size and compute precision through real servers: its figures, or why none."""

    size: tuple[int, int]
    precision: str  # the servers' compute precision
    design: str
    transport: str
    payload: str
    flow: str
    wire_dtype: str
    generated: int = 0
    pairs_per_s: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    hops: dict[str, float] = field(default_factory=dict)  # bytes per generated frame: cloud_in/out, edge_in/out
    routes: dict[str, dict[str, float]] = field(default_factory=dict)  # server -> "kind route" -> bytes/frame
    error: dict[str, float | None] | None = None  # frames vs the user's design in float32 at this size
    truth: dict[str, float | None] | None = None  # frames vs the true middle frames, where they are known
    failed: str | None = None

    @property
    def encodings(self) -> float | None:
        """Bytes of encodings per generated frame, both hops: the cloud's responses + the edge's requests."""
        return self.hops["cloud_out"] + self.hops["edge_in"] if self.hops else None

    @property
    def total(self) -> float | None:
        return sum(self.hops.values()) if self.hops else None


def system_row(size: tuple[int, int], precision: str, design: Design, run: SystemRun,
               reference: list[np.ndarray] | None) -> SystemRow:
    """A run's row: pairs/s, latencies, bytes per hop and route, frames vs the reference."""
    return SystemRow(size, precision, design.name, design.transport, design.payload, design.flow, design.wire_dtype,
                     len(run.frames), len(run.frames) / run.seconds, percentile(run.latencies, 50),
                     percentile(run.latencies, 95), run.hops(), run.routes,
                     frame_error(run.frames, reference) if reference is not None else None)

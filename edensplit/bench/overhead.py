"""Mode overhead: what the split adds per generated frame, beside the floor of moving the same bytes.

Real servers on loopback with the stand-in model (EDENSPLIT_STAND_IN_MODEL=1: the full-size shapes, nothing
computed), a clip held in memory, each path (transport-payload: http-binary, ws-json, ..., and http-shm / ws-shm: the
binary payload with `shm`, frames and encodings through shared memory and only handles over the sockets, the servers
with ALLOW_SHM=1 and flow B's edge with EDENSPLIT_SHM=1) x wire dtype x flow x size as one row: rounds of the clip
through the servers (pairs in flight), each followed by the floor for the bytes that round moved per hop over the
sockets (`edensplit.bench.floor`), so the machine's load falls on both. A row's figures are medians over its rounds;
its step split (`edensplit.bench.steps`) and its bytes are summed over all rounds. A new way to move encodings is one
more path value: it needs a payload `open_backend` knows and, if it is a new transport, a floor of its own.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from edensplit.bench.floor import Floor
from edensplit.bench.inputs import _clip_frames
from edensplit.bench.steps import ClientSteps, ServerCounts, largest, server_counts, split
from edensplit.bench.systems import REQUEST_TIMEOUT_S, Design, hops_of, routes_per_frame, start_together
from edensplit.bench.timing import run_once
from edensplit.client.flows import open_backend
from edensplit.model.stages import frame_difference
from edensplit.servers.launch import ServerProcess
from edensplit.wire import codecs

SIZES = ((480, 854), (1080, 1920))
PATHS = ("http-binary", "ws-binary", "http-shm", "ws-shm", "http-json", "ws-json")  # transport-payload
SHM = "shm"  # the payload of the shared-memory paths: binary bodies, with `shm`
DTYPES = (codecs.FLOAT16.name, codecs.FLOAT32.name)
FLOWS = ("a-once", "a-pairs", "b-once", "b-pairs")
# The servers' settings: the stand-in model; shared memory taken where a client asks; at most 8 sessions kept (the
# client does not end its sessions, which an edge keeps for SESSION_TTL_S with their last 4 frames' encodings:
# with the default 64, 6.4 GB at 1080x1920 in float16 per edge, pressing on the machine's memory as the matrix goes);
# one torch thread per server: three processes share the cores, and a model step's second thread waiting for a core
# another process holds made the stand-in's own steps (its zeros, the cast into a blob) 2 to 4 times slower.
STAND_IN_ENV = {"EDENSPLIT_STAND_IN_MODEL": "1", "ALLOW_SHM": "1", "MAX_SESSIONS": "8", "TORCH_THREADS": "1"}
MAX_ROUNDS = 5
FULL_ROUNDS = 3  # a row of fewer rounds is thin
THIN_FRAMES = (3, 2)  # frames per round, in turn, of a row whose warm-up pair says a full round would not fit
FLOOR_REPS = 3  # hops per byte count per round; their median is the round's
# Issue #16's acceptance rows: at 1080x1920, float16, flow A frame-once, HTTP binary's serving overhead at most 2x
# the floor for the same bytes; shared memory's (over HTTP) at most a fifth of HTTP binary's. They get FOCUS_WEIGHT
# times a row's share of the budget (more rounds).
ACCEPTANCE = ((1080, 1920), codecs.FLOAT16.name, "a-once", {"http-binary": 2.0, "http-shm": 1 / 5})
FOCUS_WEIGHT = 3.0


@dataclass
class OverheadRow:
    """One path x wire dtype x flow at one size: its figures (medians over rounds, ms per generated frame)."""

    size: tuple[int, int]
    transport: str
    payload: str
    wire_dtype: str  # flow B: the edge's own calls to the cloud (float32)
    flow: str
    rounds: int = 0
    frames_per_round: int = 0
    first_pair_only: bool = False  # no round fitted its share: its warm-up pair is its one round (first calls in it)
    generated: int = 0  # over every round
    ms_per_frame: float | None = None  # wall time per generated frame, one pair at a time
    ms_in_flight: float | None = None  # wall time per generated frame, `window` pairs in flight
    model_ms: float | None = None  # the model's own work per generated frame, one pair at a time
    model_parts: dict[str, float] = field(default_factory=dict)  # the servers' model step, the pair's difference
    floor_ms: float | None = None  # the same bytes per hop through the bare app
    hops: dict[str, float] = field(default_factory=dict)  # bytes per generated frame: cloud_in/out, edge_in/out
    shm_hops: dict[str, float] = field(default_factory=dict)  # the same hops' bytes through shared memory
    hop_transports: dict[str, str] = field(default_factory=dict)  # what each hop's floor went over
    steps: dict[str, float] = field(default_factory=dict)  # ms per generated frame, summed over requests
    largest_step: str | None = None
    seconds: float = 0.0  # the row's time in all: warm-up, rounds, floors
    failed: str | None = None

    @property
    def path(self) -> str:
        return f"{self.transport}-{self.payload}"

    @property
    def thin(self) -> bool:
        return self.rounds < FULL_ROUNDS

    @property
    def frames_per_s(self) -> float | None:
        """Generated frames per second with pairs in flight."""
        return 1000 / self.ms_in_flight if self.ms_in_flight else None

    @property
    def overhead_ms(self) -> float | None:
        """Serving overhead per generated frame: the wall time per generated frame, one pair at a time, less the
        stand-in model's."""
        return None if self.ms_per_frame is None or self.model_ms is None else self.ms_per_frame - self.model_ms

    @property
    def vs_floor(self) -> float | None:
        overhead = self.overhead_ms
        return overhead / self.floor_ms if overhead is not None and self.floor_ms else None


def designs(paths: Sequence[str], dtypes: Sequence[str], flows: Sequence[str]) -> list[Design]:
    """The rows of one size, in the table's order; flow B has one wire dtype (the edge's float32 calls)."""
    out = []
    for flow in flows:
        for path in paths:
            transport, _, payload = path.partition("-")
            for dtype in (codecs.FLOAT32.name,) if flow.startswith("b") else dtypes:
                out.append(Design(transport, payload or "binary", flow, dtype))
    return out


def cost_order(design: Design) -> tuple[bool, bool, bool]:
    """Cheaper rows first (binary or shm, half precision, frame-once), so the costly ones get what the budget has
    left."""
    return design.payload == "json", design.wire_dtype == codecs.FLOAT32.name, not design.flow.endswith("once")


def weight(size: tuple[int, int], design: Design) -> float:
    """A row's weight in the budget: FOCUS_WEIGHT for the acceptance rows, else 1."""
    focus_size, dtype, flow, paths = ACCEPTANCE
    focus = (size, design.wire_dtype, design.flow) == (focus_size, dtype, flow)
    return FOCUS_WEIGHT if focus and f"{design.transport}-{design.payload}" in paths else 1.0


def run_order(sizes: Sequence[tuple[int, int]], paths: Sequence[str], dtypes: Sequence[str],
              flows: Sequence[str]) -> list[tuple[tuple[int, int], Design]]:
    """The order rows run in: the acceptance rows first (`weight`), on a machine no other row has loaded yet (the
    JSON rows grow this process by gigabytes; in a full run that ran them after the 480x854 rows, the shared-memory
    row's server parse took 127 ms per frame, against 6 in a run of the two rows alone nine minutes later); then
    size by size, cheaper rows first."""
    plan = [(size, d) for size in sizes for d in sorted(designs(paths, dtypes, flows), key=cost_order)]
    return sorted(plan, key=lambda planned: weight(*planned) == 1.0)  # a stable sort: the rest keep their order


def hop_transports(design: Design) -> dict[str, str]:
    """The transport of each hop: the row's, but flow B's edge -> cloud calls, which are HTTP."""
    cloud = "http" if design.flow.startswith("b") else design.transport
    return {"cloud_in": cloud, "cloud_out": cloud, "edge_in": design.transport, "edge_out": design.transport}


def difference_ms(frames: Sequence[np.ndarray]) -> float:
    """Milliseconds of one frame_difference of the clip's first pair, in this process: the pair's raw difference,
    which the client computes in flow A sessions and the edge in flow B sessions (scene-detection work, counted as
    the model's), timed once per round so that the machine's load falls on it as on the round."""
    started = time.perf_counter()
    frame_difference(frames[0], frames[1])
    return (time.perf_counter() - started) * 1000


def frames_per_round(warm_up_s: float, frames: int, window: int, share_s: float) -> int:
    """`frames`, or fewer (THIN_FRAMES, in turn) when the warm-up pair says a round of `frames` (its pairs one at a
    time, then in flight) would take over half the row's share (fewer frames per round make rows less alike: a
    session of n frames sends n encodings for n - 1 generated frames)."""
    for n in (frames, *(t for t in THIN_FRAMES if t < frames)):
        if warm_up_s * (n - 1) * (1 + 1 / max(window, 1)) <= share_s / 2:
            return n
    return min(frames, THIN_FRAMES[-1])


def shm_hops(before: dict[str, ServerCounts], after: dict[str, ServerCounts]) -> dict[str, float]:
    """Bytes each hop moved through shared memory between two counts: a server's "taken" its way in (what it read
    from segments: the client's frames, the cloud's encodings), its "made" its way out (the segments it wrote)."""
    out = {}
    for server in after:
        for direction, event in (("in", "taken"), ("out", "made")):
            out[f"{server}_{direction}"] = after[server].shm[event] - before[server].shm[event]
    return out


def run_row(design: Design, size: tuple[int, int], clip: list[np.ndarray], urls: dict[str, str], floor: Floor,
            share_s: float, window: int) -> OverheadRow:
    """One row: a warm-up pair, then rounds (at least one, at most MAX_ROUNDS, while the row's share of the budget
    lasts), each the clip with its pairs one at a time (the wall time, the steps and the bytes: nothing overlaps, so
    the wall time less the model's is what serving added), the clip with `window` pairs in flight (frames/s), a
    pair's difference and the floor of the bytes the round moved. A row whose warm-up pair leaves no time for a
    round in its share keeps that pair (pairs one at a time, first calls included) as its one round
    (`first_pair_only`), its floor of one send per hop. The model's work per generated frame is the
    servers' model step (edensplit_stage_seconds, both servers: the stand-in's calls, and a pair's difference where
    the cloud computes it) and, in frame-once sessions, the pair's difference (`difference_ms`)."""
    row = OverheadRow(size, design.transport, design.payload, design.wire_dtype, design.flow,
                      hop_transports=hop_transports(design))
    started = time.perf_counter()
    shared = design.payload == SHM
    urls = {"cloud": urls["cloud"], "edge": urls["edge_shm" if shared and "edge_shm" in urls else "edge"]}
    backend = open_backend(cloud_url=urls["cloud"], edge_url=urls["edge"], transport=design.transport,
                           payload="binary" if shared else design.payload, flow=design.flow[0],
                           frame_once=design.flow.endswith("once"), wire_dtype=design.wire_dtype,
                           timeout=REQUEST_TIMEOUT_S, shm=shared)
    metrics = httpx.Client(timeout=10)  # the servers' /metrics, read before and after each round
    walls, in_flight, floors, models, recorder = [], [], [], [], ClientSteps()
    steps: dict[str, float] = {}
    moved: list[dict[str, dict[str, float]]] = []
    shm_moved: dict[str, float] = {}

    def one_at_a_time(frames: list[np.ndarray], reps: int) -> float:
        """The clip's pairs one at a time, counted as a round (wall, steps, bytes, the model's part, the floor with
        `reps` sends per hop); its seconds."""
        before = {s: server_counts(u, metrics) for s, u in urls.items()}
        recorder.take()
        seconds, _, out = run_once(backend, frames, 1)
        client = recorder.take()
        after = {s: server_counts(u, metrics) for s, u in urls.items()}
        n = len(out)
        routes = routes_per_frame({s: b.routes for s, b in before.items()}, {s: a.routes for s, a in after.items()}, n)
        moved.append({s: {k: v * n for k, v in r.items()} for s, r in routes.items()})
        for hop, value in shm_hops(before, after).items():
            shm_moved[hop] = shm_moved.get(hop, 0.0) + value
        round_steps = split(client, {s: after[s].seconds - before[s].seconds for s in urls}, design.flow)
        for key, value in round_steps.items():
            steps[key] = steps.get(key, 0.0) + value
        walls.append(seconds / n * 1000)
        models.append({"model": round_steps["model"] / n * 1000,
                       "difference": difference_ms(frames) if design.flow.endswith("once") else 0.0})
        floors.append(sum(floor.time_hops(row.hop_transports[hop], [round(b)], reps)
                          for hop, b in hops_of(routes).items()))
        row.rounds, row.generated = row.rounds + 1, row.generated + n
        return seconds

    try:
        with recorder.installed(backend):
            warm = one_at_a_time(clip[:2], 1)  # connections, first-call costs: a round only if no other fits
            if warm * (1 + 1 / max(window, 1)) > share_s - (time.perf_counter() - started):
                row.first_pair_only, in_flight[:] = True, walls  # one pair: nothing to have in flight
            else:
                for kept in (walls, floors, models, moved):
                    kept.clear()
                steps.clear()
                shm_moved.clear()
                row.rounds = row.generated = 0
                row.frames_per_round = frames_per_round(warm, len(clip), window, share_s)
                frames = clip[:row.frames_per_round]
                while True:
                    round_started = time.perf_counter()
                    one_at_a_time(frames, FLOOR_REPS)
                    flight_seconds, _, flight_out = run_once(backend, frames, window)
                    in_flight.append(flight_seconds / len(flight_out) * 1000)
                    spent, last = time.perf_counter() - started, time.perf_counter() - round_started
                    if row.rounds >= MAX_ROUNDS or spent + last > share_s:
                        break
    except Exception as exc:  # a row that fails is reported as failed; the matrix goes on
        row.failed = f"{type(exc).__name__}: {exc}"
    finally:
        backend.close()
        metrics.close()
    row.frames_per_round = row.frames_per_round or 2
    if row.rounds and in_flight:
        row.ms_per_frame, row.floor_ms = statistics.median(walls), statistics.median(floors)
        row.ms_in_flight = statistics.median(in_flight)
        row.model_parts = {part: statistics.median(m[part] for m in models) for part in models[0]}
        row.model_ms = sum(row.model_parts.values())
        totals: dict[str, dict[str, float]] = {}
        for one in moved:
            for s, r in one.items():
                for k, v in r.items():
                    totals.setdefault(s, {})[k] = totals.get(s, {}).get(k, 0.0) + v
        row.hops = hops_of({s: {k: v / row.generated for k, v in r.items()} for s, r in totals.items()})
        row.shm_hops = {hop: v / row.generated for hop, v in shm_moved.items()}
        row.steps = {k: v / row.generated * 1000 for k, v in steps.items()}
        row.largest_step = largest(row.steps)
    row.seconds = time.perf_counter() - started
    return row


def stand_in_servers(log_dir: Path, shm_edge: bool = True) -> dict[str, ServerProcess]:
    """The matrix's servers, not started: a cloud, an edge and (`shm_edge`) an edge that asks the cloud for
    shared-memory handles (EDENSPLIT_SHM=1: flow B's shm rows), all with the stand-in model and ALLOW_SHM=1."""
    cloud = ServerProcess("edensplit.cloud:app", env=STAND_IN_ENV, log_path=log_dir / "overhead-cloud.log")
    kinds = (("edge", {}), ("edge_shm", {"EDENSPLIT_SHM": "1"}))[:2 if shm_edge else 1]
    edges = {name: ServerProcess("edensplit.edge:app", env={**STAND_IN_ENV, "CLOUD_SERVER_URL": cloud.url, **extra},
                                 log_path=log_dir / f"overhead-{name}.log") for name, extra in kinds}
    return {"cloud": cloud, **edges}


def run_matrix(sizes: Sequence[tuple[int, int]], paths: Sequence[str], dtypes: Sequence[str], flows: Sequence[str],
               *, frames: int, window: int, budget_s: float, log_dir: Path | None = None,
               on_row: Callable[[OverheadRow], None] | None = None, urls: dict[str, str] | None = None
               ) -> tuple[list[OverheadRow], float]:
    """Every row at every size through one cloud, one edge and one floor server; (rows in the table's order, the
    seconds it all took, start-up included). The budget is the rows' (from when the servers are ready): each row's
    share of it is what is left over the rows left, by their weights. `urls` ({"cloud": ..., "edge": ...}): servers
    already running to use instead of starting stand-in ones (and "edge_shm": the shm rows' edge, else "edge")."""
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="edensplit-overhead-"))
    log_dir = log_dir or folder
    plan = run_order(sizes, paths, dtypes, flows)
    done: dict[tuple[tuple[int, int], Design], OverheadRow] = {}
    floor = Floor(log_dir)
    with contextlib.ExitStack() as stack:
        if urls is None:
            processes = stand_in_servers(log_dir, any(d.payload == SHM and d.flow.startswith("b") for _, d in plan))
            start_together(stack, *processes.values(), floor.server)
            urls = {name: process.url for name, process in processes.items()}
        stack.enter_context(floor)
        clips: dict[tuple[int, int], list[np.ndarray]] = {}
        rows_started = time.perf_counter()
        for i, (size, design) in enumerate(plan):
            if size not in clips:
                clips.clear()
                clips[size] = _clip_frames(size, max(frames, 2), folder)
            left = budget_s - (time.perf_counter() - rows_started)
            share = left * weight(size, design) / sum(weight(*planned) for planned in plan[i:])
            row = run_row(design, size, clips[size], urls, floor, share, window)
            done[(size, design)] = row
            if on_row is not None:
                on_row(row)
    rows = [done[(size, d)] for size in sizes for d in designs(paths, dtypes, flows)]
    return rows, time.perf_counter() - started

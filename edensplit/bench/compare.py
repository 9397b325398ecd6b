"""Mode compare (the default): transports x wire dtypes x flows through real servers against `--local` in this
process: output frames/s, p50/p95 latency, bytes per generated frame per hop, frames vs local."""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from edensplit.bench.inputs import _clip_frames, _model_env
from edensplit.bench.output import HOP_COLUMNS, _mb, _table, _table_line, environment, publish
from edensplit.bench.systems import Design, run_design, servers
from edensplit.bench.timing import percentile, run_once
from edensplit.client.backends import LocalBackend
from edensplit.model import precision
from edensplit.model.eden import ALL_STAGES
from edensplit.model.loading import load_model_for
from edensplit.model.pipeline import LocalPipeline
from edensplit.settings import ModelSettings
from edensplit.wire import codecs

TRANSPORTS = ("http-json", "http-binary", "ws-json", "ws-binary")
FLOWS = ("a-pairs", "a-once", "b-pairs", "b-once")


@dataclass
class Row:
    """One row of the comparison: a transport, wire dtype and flow (or --local) and its figures."""

    transport: str
    dtype: str
    flow: str
    fps: float
    p50_ms: float
    p95_ms: float
    hops: dict[str, float]  # bytes per generated frame
    speed: float  # output frames/s relative to local
    error: float | None  # mean absolute difference from the local run's frames, in grey levels (0 = identical)


def run_bench(size: tuple[int, int] = (240, 428), n_frames: int = 6, transports: tuple[str, ...] = TRANSPORTS,
              dtypes: tuple[str, ...] = (codecs.FLOAT32.name, codecs.FLOAT16.name), flows: tuple[str, ...] = FLOWS,
              window: int = 2,
              output: Path | None = None, log_dir: Path | None = None, json_path: Path | None = None) -> list[Row]:
    """Mode compare: --local, then every flow x transport x wire dtype through one cloud and edge."""
    height, width = size
    started_env = environment()
    tmp = Path(tempfile.mkdtemp(prefix="edensplit-bench-"))
    log_dir = log_dir or tmp
    frames = _clip_frames(size, n_frames, tmp)
    env = _model_env()
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
    rows = [Row("local", precision.DEFAULT, "-", local_fps, percentile(local_lat, 50), percentile(local_lat, 95),
                {}, 1.0, None)]
    with servers(env, log_dir) as (cloud, edge):
        for flow in flows:
            for transport in transports:
                for dtype in dtypes if not flow.startswith("b") else (codecs.DEFAULT,):
                    kind, payload = transport.split("-")
                    run = run_design(cloud.url, edge.url, Design(kind, payload, flow, dtype), frames, window)
                    error = float(np.mean([np.abs(a.astype(float) - b).mean() for a, b in zip(run.frames, reference,
                                                                                               strict=True)]))
                    fps = out_frames / run.seconds
                    row = Row(transport, dtype, flow, fps, percentile(run.latencies, 50),
                              percentile(run.latencies, 95), run.hops(), fps / local_fps, error)
                    rows.append(row)
                    print(format_row(row), flush=True)
    text = report(rows, size, n_frames, window)
    publish(text, output, json_path, lambda: {
        "kind": "edensplit.bench.compare", "version": 1, "environment": started_env, "size": list(size),
        "frames": n_frames, "window": window, "rows": [asdict(r) for r in rows]})
    return rows


COLUMNS = ("transport", "wire dtype", "flow", "output frames/s", "p50 ms", "p95 ms",
           *(title for _, title in HOP_COLUMNS), "cloud→client→edge MB", "vs local", "frames vs local")


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
    """The comparison's Markdown: a heading line, what the columns mean, the table."""
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
        *_table(COLUMNS, [row_cells(r) for r in rows]),
    ]
    return "\n".join(lines) + "\n"

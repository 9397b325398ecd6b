"""Mode overhead's output: the Markdown tables (per generated frame beside the floor, the step split, WebSocket vs
HTTP), the acceptance line of issue #16, and the JSON document; `run_overhead` runs the matrix and writes them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from edensplit.bench.output import _env_line, _failure, _ms, _table, _table_line, environment, publish
from edensplit.bench.overhead import (
    ACCEPTANCE,
    FLOOR_REPS,
    FOCUS_WEIGHT,
    FULL_ROUNDS,
    MAX_ROUNDS,
    THIN_FRAMES,
    OverheadRow,
    run_matrix,
)
from edensplit.bench.steps import STEPS
from edensplit.errors import ConfigError
from edensplit.wire.shm import MAX_HANDLE_BYTES

HOP_KEYS = ("cloud_in", "cloud_out", "edge_in", "edge_out")
MAIN_COLUMNS = ("size", "path", "wire dtype", "flow", "rounds x frames", "generated frames/s (pairs in flight)",
                "ms per generated frame (one pair at a time)", "model (stand-in) ms", "serving overhead ms", "floor ms",
                "overhead / floor",
                "bytes over a socket per hop (cloud in / cloud out / edge in / edge out)",
                "bytes through shared memory per hop", "largest step")
STEP_COLUMNS = ("size", "path", "wire dtype", "flow", *(title for _, title in STEPS), "largest step")
WS_COLUMNS = ("size", "payload", "wire dtype", "flow", "HTTP overhead ms", "WS overhead ms", "WS / HTTP",
              "HTTP overhead / floor", "WS overhead / floor")


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _bytes(n: float) -> str:
    """A byte count as B, kB or MB (decimal)."""
    if n < 10_000:
        return f"{n:.0f} B"
    return f"{n / 1e3:.1f} kB" if n < 1e6 else f"{n / 1e6:.2f} MB"


def hop_cells(hops: dict[str, float]) -> str:
    """Bytes per generated frame of the four hops, in HOP_KEYS' order; "-" where none moved at all."""
    return " / ".join(_bytes(hops.get(k, 0)) for k in HOP_KEYS) if any(hops.values()) else "-"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _key(row: OverheadRow) -> list[str]:
    return [_size(row.size), row.path, row.wire_dtype + (" (edge→cloud)" if row.flow.startswith("b") else ""),
            row.flow]


def main_cells(row: OverheadRow) -> list[str]:
    """A row's cells under MAIN_COLUMNS."""
    if row.failed and not row.rounds:
        return [*_key(row), *["-"] * (len(MAIN_COLUMNS) - 5), _failure(row.failed)]
    rounds = f"{row.rounds} x {row.frames_per_round}" + (" (thin, first pair)" if row.first_pair_only else
                                                          " (thin)" if row.thin else "")
    fps = row.frames_per_s
    return [*_key(row), rounds, "-" if fps is None else f"{fps:.2f}", _ms(row.ms_per_frame), _ms(row.model_ms),
            _ms(row.overhead_ms), _ms(row.floor_ms), _ratio(row.vs_floor), hop_cells(row.hops),
            hop_cells(row.shm_hops), row.largest_step or "-"]


PATHS = (  # the README's "which path to use": (where the three run, path, what it is, flags)
    ("on one host", "http-shm", "shared memory, handles over HTTP", "`--shm`; `ALLOW_SHM=1`"),
    ("on one host", "ws-shm", "shared memory, handles over WebSocket", "`--shm --transport ws`; `ALLOW_SHM=1`"),
    ("on different hosts", "http-binary", "float16 binary over HTTP", "`--wire_dtype float16` (or `int8`)"),
    ("on different hosts", "ws-binary", "float16 binary over WebSocket",
     "`--transport ws --wire_dtype float16` (or `int8`)"),
    ("(the original API)", "http-json", "JSON over HTTP", "`--payload json`"),
)
PATHS_COLUMNS = ("client, cloud and edge", "path", "flags (client; servers)",
                 "serving overhead per generated frame, 1080×1920", "480×854",
                 "over the sockets per generated frame at 1080×1920 (cloud in / cloud out / edge in / edge out)",
                 "generated frames/s at 1080×1920, 2 pairs in flight")


def paths_table(rows: Sequence[OverheadRow]) -> list[str]:
    """The README's table of paths (flow A frame-once, float16), from a run's rows; empty where the run lacks
    them."""
    lines = []
    for where, path, what, flags in PATHS:
        big, small = _find(rows, path, (1080, 1920)), _find(rows, path, (480, 854))
        if big is None or small is None:
            return []
        fps = big.frames_per_s
        lines.append([where, f"{what} (`{path}`)", flags, f"{_ms(big.overhead_ms)} ms (floor {_ms(big.floor_ms)} ms)",
                      f"{_ms(small.overhead_ms)} ms (floor {_ms(small.floor_ms)} ms)", hop_cells(big.hops),
                      "-" if fps is None else f"{fps:.2f}"])
    return _table(PATHS_COLUMNS, lines)


def rows_from_json(doc: dict[str, Any]) -> list[OverheadRow]:
    """The rows of a committed overhead.json, as the run made them."""
    names = {f.name for f in fields(OverheadRow)}
    return [OverheadRow(**{**{k: v for k, v in row.items() if k in names}, "size": tuple(row["size"])})
            for row in doc["rows"]]


def step_cells(row: OverheadRow) -> list[str]:
    """A row's cells under STEP_COLUMNS."""
    return [*_key(row), *(_ms(row.steps.get(key)) if row.steps else "-" for key, _ in STEPS),
            row.largest_step or "-"]


def ws_vs_http(rows: Sequence[OverheadRow]) -> list[list[str]]:
    """Each WebSocket row beside the HTTP row of the same size, payload, wire dtype and flow."""
    http = {(r.size, r.payload, r.wire_dtype, r.flow): r for r in rows if r.transport == "http"}
    out = []
    for ws in (r for r in rows if r.transport == "ws"):
        other = http.get((ws.size, ws.payload, ws.wire_dtype, ws.flow))
        if other is None or ws.overhead_ms is None or other.overhead_ms is None:
            continue
        out.append([_size(ws.size), ws.payload, ws.wire_dtype, ws.flow, _ms(other.overhead_ms), _ms(ws.overhead_ms),
                    _ratio(ws.overhead_ms / other.overhead_ms), _ratio(other.vs_floor), _ratio(ws.vs_floor)])
    return out


def _find(rows: Sequence[OverheadRow], path: str, size: tuple[int, int] | None = None) -> OverheadRow | None:
    """The measured row of `path` at `size` (default ACCEPTANCE's) with ACCEPTANCE's wire dtype and flow."""
    accepted, dtype, flow, _ = ACCEPTANCE
    key = (size or accepted, path, dtype, flow)
    return next((r for r in rows if (r.size, r.path, r.wire_dtype, r.flow) == key and r.overhead_ms is not None),
                None)


def acceptance(rows: Sequence[OverheadRow]) -> list[tuple[str, bool]]:
    """Issue #16's criteria on the rows they name, those the run has: HTTP binary against its floor, then shared
    memory against HTTP binary, with no encoding's bytes over a socket (each hop at most a handle's bound,
    wire.shm.MAX_HANDLE_BYTES)."""
    size, dtype, flow, limits = ACCEPTANCE
    out = []
    binary, shared = _find(rows, "http-binary"), _find(rows, "http-shm")
    if binary is not None and binary.vs_floor is not None:
        out.append((f"{_size(size)} {binary.path} {dtype} {flow}: serving overhead {binary.overhead_ms:.1f} ms per "
                    f"generated frame, {binary.vs_floor:.2f}x the floor's {binary.floor_ms:.1f} ms (at most "
                    f"{limits[binary.path]:g}x asked)", binary.vs_floor <= limits[binary.path]))
    if binary is not None and shared is not None and binary.overhead_ms and shared.overhead_ms is not None:
        fraction, socket = shared.overhead_ms / binary.overhead_ms, max(shared.hops.values(), default=0.0)
        out.append((f"{_size(size)} {shared.path} {dtype} {flow}: serving overhead {shared.overhead_ms:.1f} ms per "
                    f"generated frame, {fraction:.2f} of {binary.path}'s {binary.overhead_ms:.1f} ms (at most "
                    f"{limits[shared.path]:.2f} asked); at most {_bytes(socket)} per hop over a socket (at most "
                    f"{MAX_HANDLE_BYTES} B, a handle, asked)",
                    fraction <= limits[shared.path] and socket <= MAX_HANDLE_BYTES))
    return out


def report(rows: Sequence[OverheadRow], env: dict[str, Any], settings: dict[str, Any], seconds: float,
           command: str | None = None) -> str:
    """The Markdown: a heading line, the command, what the figures are, the three tables, thin rows, acceptance."""
    sizes = ", ".join(_size(s) for s in settings["sizes"])
    lines = [f"edensplit bench --mode overhead: {sizes}, {len(rows)} rows, pairs in flight {settings['window']}, "
             f"rounds of {settings['frames']} frames (thin rows: {' or '.join(map(str, THIN_FRAMES))}), "
             f"budget {settings['budget_s']:.0f} s; "
             f"the matrix took {seconds:.0f} s; {_env_line(env)}."]
    if command:
        lines += ["", f"    {command}"]
    lines += [
        "",
        "Real servers on loopback with the stand-in model (EDENSPLIT_STAND_IN_MODEL=1: full-size shapes, nothing "
        "computed; TORCH_THREADS=1 in each server), the clip held in memory. Each round runs the clip twice: its "
        "pairs one at a time, then "
        f"{settings['window']} in flight (generated frames/s). Per generated frame, one pair at a time (nothing "
        "overlaps): the wall time; the model's own work (the servers' model step in that pass, and in frame-once "
        "sessions the pair's difference, the client's scene-detection work in flow A, the edge's in flow B, timed "
        "once per round in this process); serving overhead = the first less the second; the floor = each hop's "
        "bytes "
        "per generated frame through a bare uvicorn app (HTTP: POST read whole, 16 bytes back, httpx keep-alive; "
        f"WebSocket: the same bytes in, 16 bytes back), median of {FLOOR_REPS} per hop, summed, timed after each "
        f"round. Medians over the row's rounds ({MAX_ROUNDS} at most; fewer than {FULL_ROUNDS} is thin; the "
        f"acceptance rows get {FOCUS_WEIGHT:g}x a row's share of the budget). Flow B's edge→cloud hops are HTTP "
        "(the edge's client). The shm paths: the "
        "binary payload with --shm (the servers with ALLOW_SHM=1, flow B's edge with EDENSPLIT_SHM=1), frames and "
        "encodings through shared memory, handles over the sockets; bytes per hop, over a socket and through "
        "shared memory, are what the servers counted (edensplit_request_bytes, edensplit_response_bytes; "
        "edensplit_shm_bytes_moved: taken in, made out). docs/performance.md "
        "explains every column.",
        "",
        *_table(MAIN_COLUMNS, [main_cells(r) for r in rows]),
        "",
        "Steps, ms per generated frame, one pair at a time, summed over the requests (they add up to the client's "
        "request time): the client's pack, exchange and unpack, the servers' request time and "
        "edensplit_stage_seconds (both servers; flow B's edge prepare less the cloud's request time).",
        "",
        *_table(STEP_COLUMNS, [step_cells(r) for r in rows]),
    ]
    compared = ws_vs_http(rows)
    if compared:
        lines += ["", "WebSocket vs HTTP, the same payload, wire dtype and flow:", "", *_table(WS_COLUMNS, compared)]
    table = paths_table(rows)
    if table:
        lines += ["", "Which path to use (the README's table: flow A frame-once, float16 on the wire):", "", *table]
    thin = [f"{_size(r.size)} {r.path} {r.wire_dtype} {r.flow} ({r.rounds} x {r.frames_per_round}"
            f"{', first pair' if r.first_pair_only else ''})" for r in rows if r.thin]
    lines += ["", f"Thin rows (fewer than {FULL_ROUNDS} rounds; \"first pair\": no round fitted the row's share, so "
              "its warm-up pair, first calls included, is its one round and its floor one send per hop): "
              + ("; ".join(thin) if thin else "none") + "."]
    failed = [f"{_size(r.size)} {r.path} {r.wire_dtype} {r.flow}: {r.failed}" for r in rows if r.failed]
    if failed:
        lines += ["", "Failed: " + "; ".join(failed) + "."]
    for text, met in acceptance(rows):
        lines += ["", f"Issue #16: {'met' if met else 'NOT met'}: {text}."]
    return "\n".join(lines) + "\n"


def row_json(row: OverheadRow) -> dict[str, Any]:
    d = asdict(row)
    d["size"] = list(row.size)
    d.update(path=row.path, thin=row.thin, frames_per_s=row.frames_per_s, overhead_ms=row.overhead_ms,
             overhead_vs_floor=row.vs_floor)
    return d


def run_overhead(sizes: Sequence[tuple[int, int]], paths: Sequence[str], dtypes: Sequence[str], flows: Sequence[str],
                 *, frames: int, window: int, budget_s: float, output: Path | None = None,
                 json_path: Path | None = None, log_dir: Path | None = None, command: str | None = None,
                 urls: dict[str, str] | None = None) -> list[OverheadRow]:
    """`edensplit bench --mode overhead`: the matrix, each row printed as it ends, then the report written."""
    if os.environ.get("MODEL_PATH"):
        raise ConfigError("edensplit bench --mode overhead runs the stand-in model (EDENSPLIT_STAND_IN_MODEL=1), "
                          "which is refused beside MODEL_PATH: unset it")
    env = environment()  # at the start: its time and load average are the run's
    config = os.environ.get("EDEN_CONFIG")
    env["model"] = ("servers given by URL, their own model" if urls else "the stand-in model "
                    "(EDENSPLIT_STAND_IN_MODEL=1) of " + (f"config {config}" if config else "the released config "
                                                             "(full size)"))
    settings = {"sizes": [list(s) for s in sizes], "paths": list(paths), "dtypes": list(dtypes), "flows": list(flows),
                "frames": frames, "window": window, "budget_s": budget_s}
    print(_table_line(MAIN_COLUMNS), flush=True)
    rows, seconds = run_matrix(sizes, paths, dtypes, flows, frames=frames, window=window, budget_s=budget_s,
                               log_dir=log_dir, on_row=lambda r: print(_table_line(main_cells(r)), flush=True),
                               urls=urls)
    text = report(rows, env, {**settings, "sizes": sizes}, seconds, command)
    publish(text, output, json_path, lambda: {
        "kind": "edensplit.bench.overhead", "version": 1, "environment": env, "command": command,
        **settings, "seconds": seconds, "steps": dict(STEPS),
        "acceptance": [{"criterion": text, "met": met} for text, met in acceptance(rows)],
        "rows": [row_json(r) for r in rows]})
    return rows

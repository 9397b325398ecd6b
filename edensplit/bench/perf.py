"""Mode perf: the stages (edensplit.bench.stages) and the system, pairs/s and bytes per hop through real servers per
size and compute precision, the user's design as the baseline; one report and JSON for both."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edensplit.bench.inputs import _clip_frames, _model_env
from edensplit.bench.output import (
    HOP_COLUMNS,
    _env_line,
    _failure,
    _mb,
    _table,
    _table_line,
    environment,
    publish,
)
from edensplit.bench.stages import REFERENCE_H200, SKIPPED, STAGE_COLUMNS, StageRow, run_stages, stage_cells
from edensplit.bench.systems import USER_DESIGN, Design, SystemRow, run_design, servers, system_row
from edensplit.bench.timing import CLOCK_WORDS
from edensplit.model.precision import DEFAULT as DEFAULT_PRECISION
from edensplit.settings import ModelSettings
from edensplit.wire import codecs

GPU_SIZES = ((256, 448), (480, 854), (1080, 1920))
CPU_SIZES = ((256, 448),)
GPU_BATCHES = (1, 2, 4, 8, 16)
CPU_BATCHES = (1, 2)


def run_system(sizes: Sequence[tuple[int, int]], precisions: Sequence[str], designs: Sequence[Design], device: str,
               *, n_frames: int = 6, window: int = 2, log_dir: Path | None = None,
               on_row: Callable[[SystemRow], None] | None = None, deadline: float = math.inf,
               edge_device: str | None = None) -> list[SystemRow]:
    """For each precision, a cloud and an edge in it (the edge on `edge_device`, else `device`; both take
    shared-memory handles: ALLOW_SHM=1); at each size, the user's design (float32 only: it is the bytes baseline
    and the frames' reference) and each design, on an n_frames clip held in memory."""
    folder = Path(tempfile.mkdtemp(prefix="edensplit-system-"))
    log_dir = log_dir or folder
    clips = {size: _clip_frames(size, n_frames, folder) for size in sizes}
    references: dict[tuple[int, int], list[np.ndarray]] = {}
    rows: list[SystemRow] = []

    def add(row: SystemRow) -> None:
        rows.append(row)
        print(_table_line(system_cells(row, rows)), flush=True)
        if on_row:
            on_row(row)

    # float32 first: its user's-design run is the bytes baseline and the other precisions' frames' reference.
    for precision in sorted(precisions, key=lambda p: p != DEFAULT_PRECISION):
        env = {**_model_env(), "DEVICE": device, "EDEN_DTYPE": precision, "ALLOW_SHM": "1"}
        baseline = (USER_DESIGN,) if precision == DEFAULT_PRECISION else ()
        todo = [(size, d) for size in sizes for d in (*baseline, *designs)]
        if time.monotonic() > deadline:
            for size, design in todo:
                add(SystemRow(size, precision, design.name, design.transport, design.payload, design.flow,
                              design.wire_dtype, failed=SKIPPED))
            continue
        try:
            with servers(env, log_dir, f"system-{precision}", {"DEVICE": edge_device or device}) as (cloud, edge):
                for size, design in todo:
                    if time.monotonic() > deadline:
                        add(SystemRow(size, precision, design.name, design.transport, design.payload, design.flow,
                                      design.wire_dtype, failed=SKIPPED))
                        continue
                    try:
                        run = run_design(cloud.url, edge.url, design, clips[size], window)
                    except Exception as exc:
                        add(SystemRow(size, precision, design.name, design.transport, design.payload, design.flow,
                                      design.wire_dtype, failed=f"{type(exc).__name__}: {exc}"))
                        continue
                    if design == USER_DESIGN:
                        references[size] = run.frames
                    add(system_row(size, precision, design, run, references.get(size)))
        except Exception as exc:  # the servers did not start in this precision: say so, go on with the next
            for size, design in todo:
                if not any(r.size == size and r.precision == precision and r.design == design.name
                           and r.wire_dtype == design.wire_dtype for r in rows):
                    add(SystemRow(size, precision, design.name, design.transport, design.payload, design.flow,
                                  design.wire_dtype, failed=f"{type(exc).__name__}: {exc}"))
    return rows


SYSTEM_COLUMNS = ("size", "compute precision", "design", "transport", "wire dtype", "pairs/s end to end",
                  "p50 ms", *(title for _, title in HOP_COLUMNS), "encodings MB (cloud out + edge in)",
                  "total MB", "encodings vs user's design", "frames vs user's float32: mean / max grey levels, PSNR")


def _error_text(error: dict[str, float | None] | None) -> str:
    if error is None:
        return "-"
    if error["max_abs"] == 0:
        return "identical"
    psnr = "-" if error["psnr_db"] is None else f"{error['psnr_db']:.1f} dB"
    return f"{error['mean_abs']:.3f} / {error['max_abs']:.0f}, {psnr}"


def _baseline(row: SystemRow, rows: Sequence[SystemRow]) -> SystemRow | None:
    return next((r for r in rows if r.size == row.size and r.design == USER_DESIGN.name and not r.failed), None)


def system_cells(row: SystemRow, rows: Sequence[SystemRow]) -> list[str]:
    """A system row's cells, one per entry of SYSTEM_COLUMNS (encodings vs the size's user's design)."""
    h, w = row.size
    head = [f"{h}x{w}", row.precision, row.design + ("" if row.design == USER_DESIGN.name else f" ({row.flow})"),
            f"{row.transport}-{row.payload}", row.wire_dtype]
    if row.failed:
        return [*head, _failure(row.failed), *["-"] * (len(SYSTEM_COLUMNS) - 6)]
    base = _baseline(row, rows)
    ratio = ("baseline" if row.design == USER_DESIGN.name else
             f"{base.encodings / row.encodings:.2f}x fewer" if base is not None and row.encodings else "-")
    return [*head, f"{row.pairs_per_s:.2f}", f"{row.p50_ms:.0f}", *(_mb(row.hops.get(k)) for k, _ in HOP_COLUMNS),
            _mb(row.encodings), _mb(row.total), ratio, _error_text(row.error)]


def perf_report(stages: Sequence[StageRow], system: Sequence[SystemRow], env: dict[str, Any], *, n_frames: int,
                window: int, command: str | None = None, clock: str = "wall") -> str:
    """The perf mode's Markdown: a heading line, the command, the stages and system tables."""
    lines = [f"edensplit bench --mode perf: {_env_line(env)}."]
    if command:
        lines += ["", f"    {command}"]
    if stages:
        lines += [
            "",
            f"Stages (the model layer in one process, no servers): median {CLOCK_WORDS[clock]} ms after a warm-up "
            "call; on CUDA synchronised around every timed call. Encoder: one frame. Edge: one pair, pair at a time "
            "(both frames' temporal keys/values computed) and in a session (one generated frame, the other frame's "
            "keys/values kept), timed in turns; 'session saving' is the session's saving over pair at a time; by "
            "batch: edge ms "
            "per pair with B identical pairs per call (larger batches are tried until one is not 3% faster). "
            "'pair ms' = 2 x encoder + edge at batch 1, the unit of the H200 reference figures (the reference "
            "code on one NVIDIA H200, from issue #9; another machine's figures compare only in shape).",
            "",
            *_table(STAGE_COLUMNS, [stage_cells(r) for r in stages]),
        ]
    if system:
        lines += [
            "",
            f"System (a cloud and an edge server on loopback, one pair of servers per compute precision): a "
            f"{n_frames}-frame clip held in memory, frames in to frames out through both servers, pairs in flight "
            f"{window}, after a warm-up pair. Bytes per generated frame (MB) as the servers counted them "
            "(/metrics, by route), one column per hop as in the comparison table; 'encodings' are the cloud's "
            "responses + the edge's requests (flow A's two hops of encodings). The user's design (pair at a time, "
            "float32, JSON/base64) is the bytes baseline and, in float32, the frames' reference.",
            "",
            *_table(SYSTEM_COLUMNS, [system_cells(r, system) for r in system]),
        ]
    return "\n".join(lines) + "\n"


def _stage_json(row: StageRow) -> dict[str, Any]:
    d = asdict(row)
    d["size"] = list(row.size)
    d["edge_ms_per_pair_by_batch"] = {str(b): ms for b, ms in row.edge_ms_per_pair_by_batch.items()}
    ref = REFERENCE_H200.get(row.size)
    d.update(best_ms_per_pair=row.best_ms_per_pair, pair_ms=row.pair_ms, session_frame_ms=row.session_frame_ms,
             reference_h200={"pair_ms": ref[0], "encoder_ms_per_pair": ref[1]} if ref else None)
    return d


def _system_json(row: SystemRow, rows: Sequence[SystemRow]) -> dict[str, Any]:
    d = asdict(row)
    d["size"] = list(row.size)
    base = _baseline(row, rows)
    d.update(encodings=row.encodings, total=row.total,
             encodings_ratio_vs_user=base.encodings / row.encodings if base and row.encodings else None)
    return d


def run_perf(sizes: Sequence[tuple[int, int]], precisions: Sequence[str], batches: Sequence[int], *,
             device: str | None = None, parts: Sequence[str] = ("stages", "system"),
             designs: Sequence[Design] | None = None, n_frames: int = 6, window: int = 2, iters: int = 3,
             min_seconds: float = 0.5, batch_budget_s: float = 30.0, output: Path | None = None,
             json_path: Path | None = None, log_dir: Path | None = None, command: str | None = None,
             budget_s: float | None = None, clock: str = "wall", edge_device: str | None = None
             ) -> tuple[list[StageRow], list[SystemRow]]:
    """Stage and system measurements (the system part's edge on `edge_device`, else `device`); the Markdown and
    JSON are rewritten after every row, so a run cut short still leaves what it measured. With `budget_s`, the
    stages start nothing after 55% of it has gone (when the system part follows) and the system part nothing after
    all of it: what did not start is listed as skipped."""
    device = device or ModelSettings().device
    designs = tuple(designs or (Design("ws", "binary", "a-once", codecs.FLOAT16.name),
                                 Design("ws", "binary", "a-once", codecs.INT8.name)))
    env = environment(device)
    stages: list[StageRow] = []
    system: list[SystemRow] = []
    started = time.perf_counter()

    def save(_: Any = None) -> str:
        text = perf_report(stages, system, env, n_frames=n_frames, window=window, command=command,
                           clock="wall" if device.startswith("cuda") else clock)
        publish(text, output, json_path, lambda: {
            "kind": "edensplit.bench.perf", "version": 1, "environment": env, "command": command,
            "clock": "wall" if device.startswith("cuda") else clock, "edge_device": edge_device or device,
            "seconds": time.perf_counter() - started, "frames": n_frames, "window": window,
            "reference_h200": [{"size": list(s), "pair_ms": p, "encoder_ms_per_pair": e}
                               for s, (p, e) in REFERENCE_H200.items()],
            "stages": [_stage_json(r) for r in stages], "system": [_system_json(r, system) for r in system]},
            echo=False)
        return text

    def keep(rows: list[Any]) -> Callable[[Any], None]:
        def add(row: Any) -> None:
            if row not in rows:
                rows.append(row)
            save()
        return add

    now = time.monotonic()
    end = now + budget_s if budget_s else math.inf
    stages_end = now + 0.55 * budget_s if budget_s and "system" in parts else end
    if "stages" in parts:
        run_stages(sizes, precisions, batches, device, iters=iters, min_seconds=min_seconds,
                   batch_budget_s=batch_budget_s, on_row=keep(stages), deadline=stages_end, clock=clock)
        print(f"stages done after {time.perf_counter() - started:.0f} s", flush=True)
    if "system" in parts:
        run_system(sizes, precisions, designs, device, n_frames=n_frames, window=window, log_dir=log_dir,
                   on_row=keep(system), deadline=end, edge_device=edge_device)
        print(f"system done after {time.perf_counter() - started:.0f} s", flush=True)
    print(save())
    return stages, system

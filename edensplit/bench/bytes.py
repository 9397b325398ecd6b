"""Mode bytes: the user's design vs frame-once sessions on one clip through real servers (bytes of encodings per
generated frame, frames vs float32), and issue #9's acceptance criteria on its rows."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edensplit.bench.inputs import _clip_frames, _model_env
from edensplit.bench.output import _env_line, _mb, _table, _table_line, environment, publish
from edensplit.bench.systems import USER_DESIGN, Design, SystemRow, frame_error, run_design, servers, system_row
from edensplit.model.precision import DEFAULT as DEFAULT_PRECISION
from edensplit.video.sample import sample_middle_frame
from edensplit.wire import codecs

BYTES_DESIGNS = (USER_DESIGN, Design("http", "binary", "a-once", codecs.FLOAT16.name),
                 Design("http", "binary", "a-once", codecs.INT8.name))


def run_bytes(size: tuple[int, int], n_frames: int, designs: Sequence[Design] = BYTES_DESIGNS, *, window: int = 2,
              output: Path | None = None, json_path: Path | None = None, log_dir: Path | None = None,
              env: dict[str, str] | None = None, command: str | None = None) -> list[SystemRow]:
    """Each design on the same clip through one cloud and one edge (float32 compute, as the servers' settings
    say); the first design is the bytes baseline and the frames' reference."""
    environment_ = environment()  # at the start: its time and load average are the run's
    folder = Path(tempfile.mkdtemp(prefix="edensplit-bytes-"))
    log_dir = log_dir or folder
    frames = _clip_frames(size, n_frames, folder)
    env = {**_model_env(), **(env or {})}
    precision = env.get("EDEN_DTYPE", os.environ.get("EDEN_DTYPE", DEFAULT_PRECISION))
    rows: list[SystemRow] = []
    reference = None
    truth = [sample_middle_frame(k, size[1], size[0]) for k in range(n_frames - 1)]  # the lossless clip's
    with servers(env, log_dir, tag="bytes") as (cloud, edge):
        for design in designs:
            run = run_design(cloud.url, edge.url, design, frames, window)
            reference = reference if reference is not None else run.frames
            row = system_row(size, precision, design, run, reference)
            row.truth = frame_error(run.frames, truth) if len(run.frames) == len(truth) else None
            row.design = design.name if design == USER_DESIGN else f"{design.name} {design.wire_dtype}"
            rows.append(row)
            print(_table_line(bytes_cells(row, rows)), flush=True)
    text = bytes_report(rows, size, n_frames, window, environment_, command)
    publish(text, output, json_path, lambda: {
        "kind": "edensplit.bench.bytes", "version": 1, "environment": environment_, "command": command,
        "size": list(size), "frames": n_frames, "window": window, "rows": [_bytes_json(r, rows) for r in rows]})
    return rows


BYTES_COLUMNS = ("design", "transport", "wire dtype", "flow", "generated frames", "pairs/s",
                 "cloud responses MB/frame", "edge requests MB/frame", "encodings MB/frame (both hops)",
                 "vs user's design", "mean abs diff vs float32 (grey levels)", "max abs diff", "PSNR vs float32 dB",
                 "PSNR vs true middle dB")


def ratio_to_first(row: SystemRow, rows: Sequence[SystemRow]) -> float:
    """How many times fewer bytes of encodings than the first row (the baseline) this row moves."""
    return rows[0].encodings / row.encodings


def bytes_cells(row: SystemRow, rows: Sequence[SystemRow]) -> list[str]:
    """A bytes row's cells, one per entry of BYTES_COLUMNS (the first row is the baseline)."""
    err = row.error or {}
    same = row is rows[0] or err.get("max_abs") == 0
    return [row.design, f"{row.transport}-{row.payload}", row.wire_dtype, row.flow, str(row.generated),
            f"{row.pairs_per_s:.2f}", _mb(row.hops["cloud_out"]), _mb(row.hops["edge_in"]), _mb(row.encodings),
            "1.00x (baseline)" if row is rows[0] else f"{ratio_to_first(row, rows):.2f}x fewer",
            "reference" if row is rows[0] else ("0 (identical)" if same else f"{err['mean_abs']:.3f}"),
            "-" if row is rows[0] else f"{err.get('max_abs', 0):.0f}",
            "-" if row is rows[0] or err.get("psnr_db") is None else f"{err['psnr_db']:.1f}",
            "-" if not row.truth or row.truth.get("psnr_db") is None else f"{row.truth['psnr_db']:.2f}"]


def bytes_report(rows: Sequence[SystemRow], size: tuple[int, int], n_frames: int, window: int, env: dict[str, Any],
                 command: str | None = None) -> str:
    """The bytes mode's Markdown: a heading line, the command, the table."""
    lines = [f"edensplit bench --mode bytes: {size[0]}x{size[1]} (HxW), {n_frames} input frames "
             f"({n_frames - 1} generated), flow A, pairs in flight {window}; {_env_line(env)}."]
    if command:
        lines += ["", f"    {command}"]
    lines += [
        "",
        "Bytes of encodings per generated frame on both hops (the cloud's responses + the edge's requests), as "
        "the servers counted them on their routes (/metrics edensplit_response_bytes_total, "
        "edensplit_request_bytes_total), after a warm-up pair. Frames are compared with the first row's "
        "(float32 on the wire), all generated frames' pixels pooled; and with the true middle frames (the sample "
        "clip drawn at time k + 1/2), which only trained weights can come near.",
        "",
        *_table(BYTES_COLUMNS, [bytes_cells(r, rows) for r in rows]),
    ]
    return "\n".join(lines) + "\n"


def _bytes_json(row: SystemRow, rows: Sequence[SystemRow]) -> dict[str, Any]:
    d = asdict(row)
    d["size"] = list(row.size)
    d.update(encodings=row.encodings, total=row.total, encodings_ratio_vs_first=ratio_to_first(row, rows))
    return d


# Issue #9's acceptance: at 176x144 (WxH), the full-size model, a 40-frame clip, flow A: frame-once int8 moves at
# least 10x fewer bytes of encodings than the user's design, frame-once float16 at least 5x, and int8's frames are
# within 3 grey levels (mean absolute difference) of float32's.
ACCEPTANCE_SIZE, ACCEPTANCE_FRAMES = (144, 176), 40
ACCEPTANCE_RATIOS = {codecs.FLOAT16.name: 5.0, codecs.INT8.name: 10.0}
ACCEPTANCE_MAX_MEAN_ABS = {codecs.INT8.name: 3.0}


def acceptance(rows: Sequence[SystemRow]) -> list[tuple[str, bool]]:
    """Each criterion as (what was measured against what is asked, met), for `run_bytes` rows whose first row is
    the user's design and whose other rows are frame-once designs."""
    if not rows or rows[0].design != USER_DESIGN.name:
        raise ValueError("the first row must be the user's design")
    verdicts = []
    for row in rows[1:]:
        need = ACCEPTANCE_RATIOS.get(row.wire_dtype)
        if need is not None:
            ratio = ratio_to_first(row, rows)
            verdicts.append((f"{row.design}: {ratio:.2f}x fewer bytes of encodings than the user's design "
                             f"(at least {need:g}x asked)", ratio >= need))
        limit = ACCEPTANCE_MAX_MEAN_ABS.get(row.wire_dtype)
        if limit is not None:
            mean_abs = row.error["mean_abs"] if row.error else math.inf
            verdicts.append((f"{row.design}: frames {mean_abs:.3f} grey levels (mean absolute difference) from "
                             f"float32's (at most {limit:g} asked)", mean_abs <= limit))
    return verdicts

"""Mode perf, stages: the model layer in this process (encoder, edge pair at a time, in a session and by batch), per
size and compute precision, beside the reference's H200 figures."""

from __future__ import annotations

import gc
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edensplit.bench.inputs import _clip_frames, _model_env
from edensplit.bench.output import _failure, _ms, _table_line
from edensplit.bench.timing import time_interleaved, time_ms
from edensplit.model import precision as precisions
from edensplit.model.eden import ALL_STAGES
from edensplit.model.encoding import FrameEncoding
from edensplit.model.loading import load_model_for
from edensplit.model.seeds import make_noise
from edensplit.model.stages import encode_frames, frame_context, frame_difference, geometry_for, interpolate
from edensplit.settings import ModelSettings

SKIPPED = "skipped: the run's time budget was spent"

# The reference code on one NVIDIA H200, per pair (both frames encoded, then the edge): (H, W) -> (pair ms,
# of which the encoder ms). From issue #9.
REFERENCE_H200 = {(256, 448): (38.7, 4.3), (480, 854): (105.9, 21.0), (720, 1280): (203.2, 59.9),
                  (1080, 1920): (403.0, 93.7)}


def supported_precisions(device: str) -> tuple[str, ...]:
    """The compute precisions worth measuring on a device: all three on CUDA (bfloat16 where the GPU has it);
    float32 and bfloat16 on a CPU (float16 matrix products on CPUs are emulated, slower than float32)."""
    if device.startswith("cuda"):
        bf16 = torch.cuda.is_bf16_supported()
        return tuple(p for p in precisions.names() if bf16 or p != precisions.BFLOAT16)
    return tuple(p for p in precisions.names() if p != precisions.FLOAT16)


@dataclass
class StageRow:
    """One size at one compute precision: the model layer's figures (None where not measured)."""

    size: tuple[int, int]
    precision: str
    encoder_ms_per_frame: float | None = None
    edge_ms_per_pair: float | None = None  # batch 1, pair at a time: both frames' keys/values computed
    edge_ms_per_frame_session: float | None = None  # batch 1, in a session: one new frame's keys/values
    edge_ms_per_pair_by_batch: dict[int, float] = field(default_factory=dict)
    best_batch: int | None = None
    peak_mib_batch1: float | None = None  # torch.cuda.max_memory_allocated; None on a CPU
    peak_mib: float | None = None  # over every batch tried
    stopped: str | None = None  # why larger batches were not tried
    failed: str | None = None

    @property
    def best_ms_per_pair(self) -> float | None:
        return self.edge_ms_per_pair_by_batch.get(self.best_batch) if self.best_batch else None

    @property
    def pair_ms(self) -> float | None:
        """One pair at a time, both stages: two frames encoded, then the edge at batch 1 (the reference's unit)."""
        if self.encoder_ms_per_frame is None or self.edge_ms_per_pair is None:
            return None
        return 2 * self.encoder_ms_per_frame + self.edge_ms_per_pair

    @property
    def session_frame_ms(self) -> float | None:
        """One generated frame in a session, both stages: one frame encoded, the edge with kept keys/values."""
        if self.encoder_ms_per_frame is None or self.edge_ms_per_frame_session is None:
            return None
        return self.encoder_ms_per_frame + self.edge_ms_per_frame_session


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def measure_stages(model: Any, size: tuple[int, int], precision: str, batches: Sequence[int], frames: list[np.ndarray],
                   *, iters: int = 3, min_seconds: float = 0.5, batch_budget_s: float = 30.0,
                   min_gain: float = 0.03, clock: str = "wall") -> StageRow:
    """One size on one loaded model. Batches are tried in order until one is not `min_gain` faster per pair
    than the best so far, memory runs out, or `batch_budget_s` has gone on the batches."""
    device = model.device
    row = StageRow(size, precision)
    x0, x1 = frames[0], frames[1]
    timing = {"iters": iters, "min_seconds": min_seconds, "clock": clock}
    _reset_peak(device)
    row.encoder_ms_per_frame = time_ms(lambda: encode_frames(model, x0), device, **timing)
    enc0, enc1 = encode_frames(model, x0), encode_frames(model, x1)
    difference = frame_difference(x0, x1)
    noise = make_noise(0, geometry_for(model, *size).latent_tokens, model.args.latent_dim)
    ctx0 = frame_context(model, enc0)

    def pair() -> Any:  # both frames' keys/values computed
        return interpolate(model, enc0, enc1, difference, noise)

    def session() -> Any:  # frame 0's kept, frame 1's computed once (and kept for its next pair)
        return interpolate(model, enc0, enc1, difference, noise, contexts=(ctx0, frame_context(model, enc1)))

    edge = time_interleaved({"pair": pair, "session": session}, device, **timing)  # in turns: compared
    row.edge_ms_per_pair, row.edge_ms_per_frame_session = edge["pair"], edge["session"]
    row.edge_ms_per_pair_by_batch[1] = row.edge_ms_per_pair
    row.best_batch = 1
    row.peak_mib_batch1 = row.peak_mib = _peak_mib(device)
    started = time.perf_counter()
    for batch in batches:
        if batch <= 1:
            continue
        if time.perf_counter() - started > batch_budget_s:
            row.stopped = f"batch {batch} not tried: the batches' {batch_budget_s:.0f} s were spent"
            break
        e0, e1 = FrameEncoding.cat([enc0] * batch), FrameEncoding.cat([enc1] * batch)
        d, z = difference.repeat(batch), noise.repeat(batch, 1, 1)
        try:
            ms = time_ms(lambda e0=e0, e1=e1, d=d, z=z: interpolate(model, e0, e1, d, z), device, **timing) / batch
        except RuntimeError as exc:
            if not _is_oom(exc):
                raise
            del e0, e1, d, z
            _reset_peak(device)
            row.stopped = f"batch {batch}: out of memory"
            break
        row.edge_ms_per_pair_by_batch[batch] = ms
        row.peak_mib = _peak_mib(device)
        best = row.edge_ms_per_pair_by_batch[row.best_batch]
        if ms < best:
            row.best_batch = batch
        if ms > (1 - min_gain) * best:
            row.stopped = f"batch {batch} not {min_gain:.0%} faster per pair than batch {row.best_batch}"
            break
    return row


def run_stages(sizes: Sequence[tuple[int, int]], precisions: Sequence[str], batches: Sequence[int], device: str,
               *, iters: int = 3, min_seconds: float = 0.5, batch_budget_s: float = 30.0,
               on_row: Callable[[StageRow], None] | None = None, folder: Path | None = None,
               deadline: float = math.inf, clock: str = "wall") -> list[StageRow]:
    """Every size at every precision (one model per precision, the weights as the servers load them); what
    would start after `deadline` (time.monotonic()) is reported as skipped."""
    folder = folder or Path(tempfile.mkdtemp(prefix="edensplit-stages-"))
    clips = {size: _clip_frames(size, 2, folder) for size in sizes}
    rows = []
    for precision in precisions:
        if time.monotonic() > deadline:
            for size in sizes:
                rows.append(StageRow(size, precision, failed=SKIPPED))
                if on_row:
                    on_row(rows[-1])
            continue
        try:
            settings = ModelSettings(**({"eden_random_weights": True} if _model_env() else {}), device=device,
                                     eden_dtype=precision)
            model = load_model_for(ALL_STAGES, settings)
        except Exception as exc:  # one precision failing to load is reported, the others still run
            for size in sizes:
                rows.append(StageRow(size, precision, failed=f"{type(exc).__name__}: {exc}"))
                if on_row:
                    on_row(rows[-1])
            continue
        for size in sizes:
            if time.monotonic() > deadline:
                rows.append(StageRow(size, precision, failed=SKIPPED))
                if on_row:
                    on_row(rows[-1])
                continue
            try:
                row = measure_stages(model, size, precision, batches, clips[size], iters=iters,
                                     min_seconds=min_seconds, batch_budget_s=batch_budget_s, clock=clock)
            except Exception as exc:
                row = StageRow(size, precision, failed=f"{type(exc).__name__}: {exc}")
            rows.append(row)
            print(_table_line(stage_cells(row)), flush=True)
            if on_row:
                on_row(row)
        del model
        _reset_peak(torch.device(device))
    return rows


STAGE_COLUMNS = ("size", "precision", "encoder ms/frame", "edge ms/pair (batch 1)",
                 "edge ms/generated frame in a session", "session saving", "edge ms/pair by batch", "best batch",
                 "pair ms (2 encodes + edge, batch 1)", "H200 reference pair ms", "H200 reference encoder ms/pair",
                 "peak GPU MiB (batch 1 / all)")


def stage_cells(row: StageRow) -> list[str]:
    """A stage row's cells, one per entry of STAGE_COLUMNS, the H200 reference beside them."""
    h, w = row.size
    if row.failed:
        return [f"{h}x{w}", row.precision, _failure(row.failed),
                *["-"] * (len(STAGE_COLUMNS) - 3)]
    ref = REFERENCE_H200.get(row.size)
    saving = (1 - row.edge_ms_per_frame_session / row.edge_ms_per_pair
              if row.edge_ms_per_pair and row.edge_ms_per_frame_session is not None else None)
    by_batch = ", ".join(f"{b}: {ms:.1f}" for b, ms in row.edge_ms_per_pair_by_batch.items())
    peak = ("-" if row.peak_mib is None else f"{row.peak_mib_batch1:.0f} / {row.peak_mib:.0f}")
    return [f"{h}x{w}", row.precision, _ms(row.encoder_ms_per_frame), _ms(row.edge_ms_per_pair),
            _ms(row.edge_ms_per_frame_session), "-" if saving is None else f"{saving:.0%}", by_batch or "-",
            str(row.best_batch or "-"), _ms(row.pair_ms), _ms(ref[0] if ref else None), _ms(ref[1] if ref else None),
            peak]

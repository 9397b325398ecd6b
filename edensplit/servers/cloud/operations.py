"""The cloud's operation: decode frames (JSON, multipart or a frames container), run the encoder, answer with
the enc_out blob (JSON envelope with base64, or the blob itself)."""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edensplit.errors import EdenError, ErrorCode
from edensplit.model.eden import Eden
from edensplit.model.encoding import FrameEncoding
from edensplit.model.stages import encode_frames, frame_difference
from edensplit.model.transfers import HostCopy, to_host
from edensplit.servers.contract import JSON, Cancellation, OperationInput, Reply
from edensplit.servers.inputs import FRAME_ERRORS, FRAME_TYPES, read_frames
from edensplit.wire import codecs
from edensplit.wire.blob import BLOB_MEDIA_TYPE, encoding_view
from edensplit.wire.frames import FRAMES_MEDIA_TYPE
from edensplit.wire.images import b64encode
from edensplit.wire.options import OPTION_ERRORS, Options


@dataclass
class EncodeJob:
    frames: np.ndarray  # [F, H, W, 3] uint8: a pair (F = 2) or one video frame (F = 1)
    wire_dtype: str
    request_id: str
    answer: str = JSON  # JSON or BLOB_MEDIA_TYPE
    cancellation: Cancellation = field(default_factory=Cancellation)
    started: float = field(default_factory=time.perf_counter)


@dataclass
class EncodeResult:
    host: HostCopy[FrameEncoding]  # the job's frames' encoding on its way to the CPU, packed into its blob by `encode`
    difference: float | None  # for a pair only

    @property
    def encoding(self) -> FrameEncoding:
        """The encoding on the CPU: from a GPU, once its copy is done (waited for off the model thread)."""
        return self.host.wait()


def encode_jobs(model: Eden, jobs: Sequence[EncodeJob]) -> list[EncodeResult]:
    """The cloud's model work: each job's F frames encoded (and a pair's difference), on their way to the CPU (from a
    GPU: cast to the wire's float dtype there and copied while the next call computes, `transfers`). One job is
    the exact mode (frames encoded one at a time); several are one batched encoder call (MAX_BATCH > 1)."""
    for job in jobs:
        job.cancellation.check()
    try:
        if len(jobs) == 1:
            enc = encode_frames(model, jobs[0].frames)
        else:
            enc = encode_frames(model, np.concatenate([job.frames for job in jobs]), batched=True)
    except EdenError:
        raise
    except Exception as exc:
        raise EdenError(f"the encoder failed: {type(exc).__name__}: {exc}", code=ErrorCode.ENCODE_ERROR) from exc
    results, start = [], 0
    for job in jobs:
        part = enc[start:start + len(job.frames)]
        start += len(job.frames)
        difference = float(frame_difference(job.frames[0], job.frames[1])[0]) if len(job.frames) == 2 else None
        results.append(EncodeResult(to_host(part, codecs.get(job.wire_dtype).casts_to), difference))
    return results


def warm_up(model: Eden) -> None:
    """One small encoding (first-call costs paid before the server reports ready)."""
    encode_frames(model, np.zeros((64, 64, 3), np.uint8))


class EncodeOperation:
    """Encode the frames `names` (a pair: /encode; one video frame: /encode_frame) into one blob."""

    inputs = FRAME_TYPES
    binary_inputs = (FRAMES_MEDIA_TYPE,)
    answers = (BLOB_MEDIA_TYPE,)
    errors = (*FRAME_ERRORS, *OPTION_ERRORS, ErrorCode.ENCODE_ERROR)

    def __init__(self, names: tuple[str, ...], max_pixels: int | None = None):
        self.names, self.max_pixels = names, max_pixels

    def decode(self, inp: OperationInput, model: Eden) -> EncodeJob:
        wire_dtype = Options.from_flat(inp.options).wire_dtype or codecs.DEFAULT
        frames = read_frames(inp, self.names, self.max_pixels).frames
        stacked = frames[0][np.newaxis] if len(frames) == 1 else np.stack(frames)  # one frame: a view, not a copy
        return EncodeJob(stacked, wire_dtype, inp.request_id, inp.answer, inp.cancellation)

    async def prepare(self, job: EncodeJob, model: Eden) -> EncodeJob:
        return job

    def predict(self, model: Eden, jobs: Sequence[EncodeJob]) -> list[EncodeResult]:
        return encode_jobs(model, jobs)

    def batch_key(self, job: EncodeJob) -> Hashable:
        """Requests whose frames may share one encoder call (only when MAX_BATCH > 1, e.g. on a GPU)."""
        return job.frames.shape[1:], job.wire_dtype

    def encode(self, result: EncodeResult, job: EncodeJob) -> Reply:
        blob = encoding_view(result.encoding, result.difference, job.wire_dtype, extra={"request_id": job.request_id})
        grid = result.encoding.geometry.grid
        height, width = job.frames.shape[1:3]
        meta: dict[str, Any] = {
            "ph": grid[0], "pw": grid[1], "height": height, "width": width,
            "wire_dtype": job.wire_dtype, "enc_out_size": len(blob),
            "processing_time": round(time.perf_counter() - job.started, 6), "request_id": job.request_id}
        if result.difference is not None:
            meta["difference"] = result.difference
        if job.answer == BLOB_MEDIA_TYPE:
            return Reply({}, meta, blob, BLOB_MEDIA_TYPE)
        return Reply({"enc_out": b64encode(blob), "enc_out_size": len(blob)}, meta)

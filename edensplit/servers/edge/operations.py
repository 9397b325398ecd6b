"""The edge's operations, each of the operation contract over both transports:

- `InterpolateOperation`: a pair's enc_out blob (the user's JSON, or the blob with flat options) -> the frame.
- `SessionFrameOperation`: frame-once video sessions: one frame's encoding (flow A) or the frame itself
  (flow B, encoded at the cloud) in; the edge keeps it and interpolates (k-1, k) from its cache.
- `FramesOperation`: flow B, the edge as proxy: raw frames in, the cloud encodes them, only the frame goes back.

They share the model work (`generate`, batchable) and the answer (the frame as PNG, frames container
or the JSON envelope with a base64 PNG).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from edensplit.errors import EdenError, ErrorCode
from edensplit.model.eden import Eden, FrameContext
from edensplit.model.encoding import FrameEncoding
from edensplit.model.seeds import make_noise
from edensplit.model.stages import (
    cat_contexts,
    frame_context,
    frame_difference,
    geometry_for,
    interpolate,
    to_uint8,
    uint8_on_device,
)
from edensplit.model.transfers import DeviceCopy, HostCopy, tensor_to_host, to_device
from edensplit.servers.contract import JSON, PNG, Cancellation, OperationInput, Reply
from edensplit.servers.edge.validation import (
    JOB_ERRORS,
    InterpolateJob,
    check_encoding,
    check_grid,
    check_model_args,
    make_job,
    pair_job,
)
from edensplit.servers.inputs import FRAME_ERRORS, FRAME_TYPES, PAIR, SINGLE, parse_document, read_frames
from edensplit.servers.schemas import InterpolateFramesRequest, InterpolateRequest, SessionFrameRequest
from edensplit.servers.sessions import SESSION_ERRORS, SessionStore, check_session_id, client_session
from edensplit.wire.blob import BLOB_MEDIA_TYPE, EncodedFrames, unpack_encoding
from edensplit.wire.frames import FRAMES_MEDIA_TYPE, frames_answer, unpack_frames
from edensplit.wire.images import b64decode_field, b64encode, decode_image, encode_png
from edensplit.wire.options import Options

SESSION_WAIT_S = 60.0  # how long a request waits for its predecessor frame while another request brings it
CloudEncoder = Callable[[list[np.ndarray], str], Awaitable[bytes]]  # frames, request id -> the cloud's blob


def contexts_of(model: Eden, job: InterpolateJob) -> tuple[FrameContext, FrameContext]:
    """The pair's two frames' temporal keys/values: a session frame's kept one, else computed (and kept) from the
    encoding's copy on the device where the decode step started one."""
    contexts = []
    for held, enc, staged in zip(job.held, (job.enc0, job.enc1), job.staged, strict=True):
        context = job.contexts.lookup(held) if held is not None and job.contexts is not None else None
        if context is None:
            context = frame_context(model, staged.use() if staged is not None else enc)
            if held is not None and job.contexts is not None:
                job.contexts.keep(held, context)
        contexts.append(context)
    job.staged = (None, None)  # the device's copies are let go as soon as the contexts are made
    return contexts[0], contexts[1]


@dataclass(frozen=True)
class GeneratedFrame:
    """One pair's middle frame of a batch's uint8 frames [B, H, W, 3], on their way to the host (from a GPU, the copy
    is waited for by the encode step, off the model thread)."""

    frames: HostCopy[Tensor]
    index: int

    def array(self) -> np.ndarray:
        """The frame [H, W, 3] uint8 on the host (a view of the batch's, not a copy)."""
        return self.frames.wait()[self.index].numpy()


def generate(model: Eden, jobs: Sequence[InterpolateJob]) -> list[GeneratedFrame]:
    """The edge's model work for B pairs of one batch key: noise from each seed, sample, decode -> uint8 frames (on
    a GPU, queued: the model thread does not wait for them)."""
    first = jobs[0]
    noise = torch.cat([make_noise(j.seed, j.enc0.geometry.latent_tokens, model.args.latent_dim) for j in jobs])
    try:
        pairs = [contexts_of(model, j) for j in jobs]
        contexts = cat_contexts([p[0] for p in pairs]), cat_contexts([p[1] for p in pairs])
        out = interpolate(model, FrameEncoding.cat([j.enc0 for j in jobs]), FrameEncoding.cat([j.enc1 for j in jobs]),
                          torch.tensor([j.difference for j in jobs]), noise, first.sampler,
                          vae_scaler=first.vae_scaler, vae_shift=first.vae_shift, check=lambda: stop_if_all(jobs),
                          contexts=contexts)
    except EdenError:
        raise
    except Exception as exc:
        raise EdenError(f"sampling failed: {type(exc).__name__}: {exc}", code=ErrorCode.MODEL_ERROR) from exc
    frames = tensor_to_host(uint8_on_device(out)) if out.device.type == "cuda" else \
        HostCopy(torch.from_numpy(to_uint8(out)))
    return [GeneratedFrame(frames, i) for i in range(len(jobs))]


def warm_up(model: Eden) -> None:
    """One small sampling and decoding, from zero encodings (the edge holds no encoder to make real ones)."""
    geo = geometry_for(model, 64, 64)
    zeros = torch.zeros(1, geo.tokens, model.args.hidden_dim)
    enc = FrameEncoding(zeros, zeros, torch.zeros(1), torch.ones(1), geo)
    interpolate(model, enc, enc, torch.ones(1), make_noise(0, geo.latent_tokens, model.args.latent_dim))


def stop_if_all(jobs: Sequence[InterpolateJob]) -> None:
    """Stop a batch's sampling once none of its callers can use the answer."""
    if all(j.cancellation.stopped() for j in jobs):
        jobs[0].cancellation.check()


class EdgeOperation:
    """What every edge operation shares: predict = generate (batchable), encode = the frame."""

    answers = (FRAMES_MEDIA_TYPE, PNG)
    errors: tuple[ErrorCode, ...] = (*JOB_ERRORS, ErrorCode.MODEL_ERROR)

    def predict(self, model: Eden, jobs: Sequence[InterpolateJob]) -> list[GeneratedFrame]:
        return generate(model, jobs)

    def batch_key(self, job: InterpolateJob) -> Hashable:
        """Pairs that may share a model call: same size, sampler, VAE constants and wire precision."""
        return job.enc0.geometry, job.sampler, job.vae_scaler, job.vae_shift, job.enc0.cond_dit.dtype

    def encode(self, generated: GeneratedFrame, job: InterpolateJob) -> Reply:
        frame = generated.array()
        meta = {"processing_time": round(time.perf_counter() - job.started, 6), "request_id": job.request_id,
                "seed": job.seed, "height": frame.shape[0], "width": frame.shape[1]}
        if job.answer == PNG:
            return Reply({}, meta, encode_png(frame), PNG)
        if job.answer == FRAMES_MEDIA_TYPE:
            container = frames_answer({"frame": frame}, {"request_id": job.request_id, "seed": str(job.seed)})
            return Reply({}, meta, container, FRAMES_MEDIA_TYPE)
        return Reply({"generated_frame": b64encode(encode_png(frame))}, meta)


class InterpolateOperation(EdgeOperation):
    """A pair's blob in, the middle frame out."""

    inputs = (JSON, BLOB_MEDIA_TYPE)
    binary_inputs = (BLOB_MEDIA_TYPE,)

    def __init__(self, max_pixels: int | None = None):
        self.max_pixels = max_pixels

    def decode(self, inp: OperationInput, model: Eden) -> InterpolateJob:
        if inp.content_type == JSON:
            req = parse_document(InterpolateRequest, inp)
            opts, blob = Options.from_json(req), b64decode_field(req.enc_out, "enc_out")
            model_args, meta = req.model_args, req.metadata or {}
        else:
            opts, blob, model_args, meta = Options.from_flat(inp.options), inp.body, None, {}
        encoded = unpack_encoding(blob, frames=2, max_pixels=self.max_pixels)  # the blob first: what it is
        check_model_args(model, model_args)
        job = pair_job(model, encoded, opts, inp.request_id, inp.answer, inp.cancellation)
        check_grid(job.enc0, meta.get("ph"), meta.get("pw"))
        job.staged = to_device(job.enc0, model.device), to_device(job.enc1, model.device)
        return job

    async def prepare(self, job: InterpolateJob, model: Eden) -> InterpolateJob:
        return job


@dataclass
class SessionFrame:
    """A decoded session frame: which one, what it carries (an encoding, or pixels for the cloud), options."""

    session_id: str
    index: int
    options: Options
    encoding: FrameEncoding | None
    pixels: np.ndarray | None
    request_id: str
    answer: str
    cancellation: Cancellation
    client: str  # whose session it is
    staged: DeviceCopy | None = None  # on a GPU: the encoding's copy to it, started here (for its context)


def session_key(params: Mapping[str, Any]) -> tuple[str, int]:
    """(session id, frame index) from path parameters or message fields."""
    session_id, index = params.get("session_id"), params.get("index")
    if session_id is None or index is None:
        raise EdenError("a session frame needs session_id and index", code=ErrorCode.INVALID_REQUEST)
    try:
        index = int(index)
    except (TypeError, ValueError, OverflowError):
        raise EdenError(f"index={index!r} is not a valid int", code=ErrorCode.INVALID_PARAMETER) from None
    session_id = check_session_id(str(session_id))
    if index < 0:
        raise EdenError("a session id of 1-128 characters and a frame index >= 0 are required",
                        code=ErrorCode.INVALID_PARAMETER)
    return session_id, index


def interpolates(index: int, opts: Options) -> bool:
    """Whether a session frame's request interpolates (k-1, k): as asked, else every frame but the first."""
    return index > 0 if opts.interpolate is None else opts.interpolate


class SessionFrameOperation(EdgeOperation):
    """Store frame k (its encoding, or flow B: its pixels, encoded at the cloud); interpolate (k-1, k) unless
    asked only to store it."""

    inputs = (JSON, BLOB_MEDIA_TYPE, FRAMES_MEDIA_TYPE)
    binary_inputs = (BLOB_MEDIA_TYPE, FRAMES_MEDIA_TYPE)
    errors = (*EdgeOperation.errors, *FRAME_ERRORS, *SESSION_ERRORS, ErrorCode.UPSTREAM_ERROR)

    def __init__(self, sessions: SessionStore, cloud: CloudEncoder, max_pixels: int | None = None):
        self.sessions, self.cloud, self.max_pixels = sessions, cloud, max_pixels

    def decode(self, inp: OperationInput, model: Eden) -> SessionFrame:
        session_id, index = session_key(inp.params)
        blob = pixels = None
        if inp.content_type == JSON:
            req = parse_document(SessionFrameRequest, inp)
            if (req.enc_out is None) == (req.frame is None):
                raise EdenError("a session frame carries exactly one of 'enc_out' (flow A) and 'frame' (flow B)",
                                code=ErrorCode.INVALID_REQUEST)
            opts = Options.from_json(req)
            if req.enc_out is not None:
                blob = b64decode_field(req.enc_out, "enc_out")
            else:
                pixels = decode_image(b64decode_field(req.frame or "", "frame"), "frame", self.max_pixels)
        else:
            opts = Options.from_flat(inp.options)
            if inp.content_type == BLOB_MEDIA_TYPE:
                blob = inp.body
            else:
                pixels = unpack_frames(inp.body, SINGLE, self.max_pixels)[0]["frame"]
        encoding = staged = None
        if blob is not None:
            encoding = unpack_encoding(blob, frames=1, max_pixels=self.max_pixels).encoding
            check_encoding(model, encoding)
            if interpolates(index, opts):  # (a frame only stored has no context made now: nothing to stage)
                staged = to_device(encoding, model.device)
        return SessionFrame(session_id, index, opts, encoding, pixels, inp.request_id, inp.answer, inp.cancellation,
                            inp.client, staged)

    async def prepare(self, frame: SessionFrame, model: Eden) -> InterpolateJob | Reply:
        index, opts = frame.index, frame.options
        sid = client_session(frame.client, frame.session_id)  # the client's own: another's is as one that is not
        async with self.sessions.incoming(sid, index):
            encoding = frame.encoding
            if encoding is None:
                assert frame.pixels is not None
                encoding = (await encode_at_cloud(self.cloud, [frame.pixels], frame.request_id)).encoding
            current = await self.sessions.put(sid, index, encoding, frame.pixels)
        if not interpolates(index, opts):
            return Reply({"session_id": frame.session_id, "stored": index})
        if index == 0:
            raise EdenError("frame 0 has no predecessor to interpolate from", code=ErrorCode.INVALID_PARAMETER)
        needs_difference = EdenError("a session frame needs the pair's raw 'difference' (flow A: the client holds "
                                     "both frames' pixels; flow B sends the frames themselves)",
                                     code=ErrorCode.INVALID_PARAMETER)
        if opts.difference is None and frame.pixels is None:
            raise needs_difference
        previous = await self.sessions.get(sid, index - 1, SESSION_WAIT_S)
        difference = opts.difference
        if difference is None:
            if previous.pixels is None:
                raise needs_difference
            difference = float((await run_in_threadpool(frame_difference, previous.pixels, frame.pixels))[0])
        job = make_job(model, previous.encoding, current.encoding, opts, difference, frame.request_id, frame.answer,
                       frame.cancellation)
        job.held, job.contexts = (previous, current), self.sessions.contexts
        job.staged = (None, frame.staged)
        return job


@dataclass
class FramesPair:
    """Flow B: a decoded pair of raw frames and the options."""

    frames: list[np.ndarray]
    options: Options
    request_id: str
    answer: str
    cancellation: Cancellation


class FramesOperation(EdgeOperation):
    """Flow B: raw frames in (the cloud's /encode inputs); the edge has the cloud encode them."""

    inputs = FRAME_TYPES
    binary_inputs = (FRAMES_MEDIA_TYPE,)
    errors = (*EdgeOperation.errors, *FRAME_ERRORS, ErrorCode.UPSTREAM_ERROR)

    def __init__(self, cloud: CloudEncoder, max_pixels: int | None = None):
        self.cloud, self.max_pixels = cloud, max_pixels

    def decode(self, inp: OperationInput, model: Eden) -> FramesPair:
        if inp.content_type == JSON:
            opts = Options.from_json(parse_document(InterpolateFramesRequest, inp))
        else:
            opts = Options.from_flat(inp.options)
        return FramesPair(read_frames(inp, PAIR, self.max_pixels).frames, opts, inp.request_id, inp.answer,
                          inp.cancellation)

    async def prepare(self, pair: FramesPair, model: Eden) -> InterpolateJob:
        encoded = await encode_at_cloud(self.cloud, pair.frames, pair.request_id)
        return pair_job(model, encoded, pair.options, pair.request_id, pair.answer, pair.cancellation)


async def encode_at_cloud(cloud: CloudEncoder, frames: list[np.ndarray], request_id: str) -> EncodedFrames:
    """Flow B: the cloud's encoding of a pair or one frame; its failure is this request's UPSTREAM_ERROR."""
    try:
        blob = await cloud(frames, request_id)
    except EdenError as exc:
        raise EdenError(f"the cloud failed to encode: {exc.message}", code=ErrorCode.UPSTREAM_ERROR,
                        details={"cloud_code": str(exc.code)}) from None
    return await run_in_threadpool(unpack_encoding, blob, frames=len(frames))

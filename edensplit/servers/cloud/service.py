"""The cloud, declared: POST /api/v1/encode (a pair), POST /api/v1/encode_frame (one video frame), and the
WebSocket /ws/encode carrying the same two operations."""

from __future__ import annotations

from fastapi import FastAPI

from edensplit.model import ENCODE, Eden
from edensplit.servers.app import create_app
from edensplit.servers.cloud.operations import EncodeOperation, warm_up
from edensplit.servers.inputs import PAIR, SINGLE
from edensplit.servers.openapi import frames_body
from edensplit.servers.schemas import EncodeData, EncodeFrameRequest, EncodeRequest, Envelope
from edensplit.servers.service import Endpoint, Service
from edensplit.settings import ServerSettings
from edensplit.wire.blob import BLOB_MEDIA_TYPE

ANSWERS = (f"Query `wire_dtype` = float32 (exact, default), float16 or bfloat16. `Accept: {BLOB_MEDIA_TYPE}` "
           "(or a binary request) answers with the raw blob.")


def cloud_service(settings: ServerSettings) -> Service:
    """The cloud's two operations (both encode frames; they share the encoder's batches)."""
    budget = settings.max_pixels
    return Service("cloud", ENCODE, "edensplit cloud (EDEN encoder)", "/ws/encode", (
        Endpoint("encode", "/api/v1/encode", EncodeOperation(PAIR, budget),
                 summary="Encode a frame pair into the enc_out blob", description=ANSWERS,
                 request_body=frames_body(EncodeRequest, PAIR), response_model=Envelope[EncodeData],
                 batcher="encoder"),
        Endpoint("encode_frame", "/api/v1/encode_frame", EncodeOperation(SINGLE, budget),
                 summary="Encode one video frame (frame-once sessions)",
                 description="Each frame of a video is encoded once; the blob holds one frame and no difference "
                             "(the client, which holds both frames, computes it). " + ANSWERS,
                 request_body=frames_body(EncodeFrameRequest, SINGLE), response_model=Envelope[EncodeData],
                 batcher="encoder"),
    ), warm_up=warm_up)


def create_cloud_app(settings: ServerSettings | None = None, model: Eden | None = None) -> FastAPI:
    """The cloud app; settings from the environment unless given; with `model`, that model is used instead
    of loading one at start-up."""
    settings = settings or ServerSettings()
    return create_app(cloud_service(settings), settings, model)

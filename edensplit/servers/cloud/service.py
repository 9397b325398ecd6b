"""The cloud, declared: POST /api/v1/encode (a pair), POST /api/v1/encode_frame (one video frame), and the
WebSocket /ws/encode carrying the same two operations."""

from __future__ import annotations

from fastapi import FastAPI

from edensplit.model.eden import ENCODE, Eden
from edensplit.servers.app import create_app
from edensplit.servers.cloud.operations import EncodeOperation, warm_up
from edensplit.servers.inputs import PAIR, SINGLE
from edensplit.servers.openapi import frames_body, wire_dtype_query, wire_dtypes_text
from edensplit.servers.schemas import EncodeData, EncodeFrameRequest, EncodeRequest, Envelope
from edensplit.servers.service import Endpoint, Service
from edensplit.settings import ServerSettings
from edensplit.wire.blob import BLOB_MEDIA_TYPE


def cloud_service(settings: ServerSettings) -> Service:
    """The cloud's two operations (both encode frames; they share the encoder's batches), documented with the
    wire dtypes registered when it is made."""
    budget = settings.max_pixels
    answers = (f"Query `wire_dtype`: {wire_dtypes_text()}. `Accept: {BLOB_MEDIA_TYPE}` (or a binary request) "
               "answers with the raw blob.")
    wire_dtype = tuple(wire_dtype_query()["parameters"])
    return Service("cloud", ENCODE, "edensplit cloud (EDEN encoder)", "/ws/encode", (
        Endpoint("encode", "/api/v1/encode", EncodeOperation(PAIR, budget),
                 summary="Encode a frame pair into the enc_out blob", description=answers,
                 request_body=frames_body(EncodeRequest, PAIR), parameters=wire_dtype,
                 response_model=Envelope[EncodeData], batcher="encoder"),
        Endpoint("encode_frame", "/api/v1/encode_frame", EncodeOperation(SINGLE, budget),
                 summary="Encode one video frame (frame-once sessions)",
                 description="Each frame of a video is encoded once; the blob holds one frame and no difference "
                             "(the client, which holds both frames, computes it). " + answers,
                 request_body=frames_body(EncodeFrameRequest, SINGLE), parameters=wire_dtype,
                 response_model=Envelope[EncodeData], batcher="encoder"),
    ), warm_up=warm_up)


def create_cloud_app(settings: ServerSettings | None = None, model: Eden | None = None) -> FastAPI:
    """The cloud app; settings from the environment unless given; with `model`, that model is used instead
    of loading one at start-up."""
    settings = settings or ServerSettings()
    return create_app(cloud_service(settings), settings, model)

"""The per-stage serving contract (after LitServe's LitAPI): decode a request, predict, encode a response.

`serve` runs the three in order for one HTTP request: decoding and encoding on the thread pool
(base64, PNG and JSON of tens of MB must not stall the event loop), prediction on the model thread
(batched with other requests when the runtime batches), the whole inside one admission place.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Protocol, TypeVar

from fastapi import Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from edensplit.errors import EdenError, ErrorCode
from edensplit.model import Eden
from edensplit.servers.runtime import ModelRuntime

JSON = "application/json"
MULTIPART = "multipart/form-data"
J = TypeVar("J")
R = TypeVar("R")


class StageAPI(Protocol[J, R]):
    async def decode_request(self, request: Request, model: Eden) -> J:
        """Parse and validate everything from the request; no model compute here."""

    def predict(self, model: Eden, jobs: Sequence[J]) -> list[R]:
        """The model work for a batch of jobs, on the model thread (a batch of one unless batching is on)."""

    def batch_key(self, job: J) -> Hashable | None:
        """Jobs with equal keys may share a model call; None: this job is never batched."""

    def encode_response(self, result: R, job: J) -> Response:
        """Turn the result into the response the caller asked for (JSON envelope or binary)."""


async def serve(api: StageAPI[Any, Any], request: Request, runtime: ModelRuntime) -> Response:
    async with runtime.admission():
        job = await api.decode_request(request, runtime.require_model())
        result = await runtime.predict(api, job)
        return await run_in_threadpool(api.encode_response, result, job)


def media_type(request: Request) -> str:
    """The request's content type without parameters, lower-cased ('' when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def response_format(request: Request, binary_types: tuple[str, ...], binary_request: bool) -> str:
    """JSON, or one of `binary_types`, from the Accept header; a binary request defaults to binary."""
    accepted = [part.split(";")[0].strip().lower() for part in request.headers.get("accept", "").split(",")]
    accepted = [a for a in accepted if a]
    for candidate in accepted:
        if candidate in binary_types:
            return candidate
        if candidate == JSON:
            return JSON
    if accepted and not any(a in ("*/*", "application/*") for a in accepted) and not binary_request:
        raise EdenError(f"cannot answer in {', '.join(accepted)}; use {JSON} or {', '.join(binary_types)}",
                        code=ErrorCode.NOT_ACCEPTABLE)
    return binary_types[0] if binary_request else JSON


def unsupported(request: Request, supported: tuple[str, ...]) -> EdenError:
    return EdenError(f"unsupported content type {media_type(request) or '(none)'!r}; send one of "
                     f"{', '.join(supported)}", code=ErrorCode.UNSUPPORTED_MEDIA_TYPE)


def query_value(request: Request, name: str, cast: type, default: Any = None) -> Any:
    """A query parameter cast to `cast`, or INVALID_PARAMETER naming it."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return cast(raw)
    except ValueError:
        raise EdenError(f"query parameter {name}={raw!r} is not a valid {cast.__name__}",
                        code=ErrorCode.INVALID_PARAMETER) from None

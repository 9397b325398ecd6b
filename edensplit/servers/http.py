"""The HTTP adapter of the stage contract: a request becomes a `StageInput` (body, Content-Type, query
options, path parameters, the answer negotiated from Accept), a `StageReply` becomes a response."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from edensplit.errors import EdenError, ErrorCode
from edensplit.servers.contract import (
    JSON,
    Cancellation,
    Stage,
    StageInput,
    StageReply,
    check_content_type,
    request_timeout,
    run_stage,
)
from edensplit.servers.envelope import success_body


def media_type(request: Request) -> str:
    """The request's content type without parameters, lower-cased ('' when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def response_format(accept: str, binary_types: tuple[str, ...], binary_request: bool) -> str:
    """JSON, or one of `binary_types`, from the Accept header; a binary request defaults to binary. An Accept
    that names only types this endpoint cannot answer in is NOT_ACCEPTABLE."""
    accepted = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    accepted = [a for a in accepted if a]
    for candidate in accepted:
        if candidate in binary_types:
            return candidate
        if candidate == JSON:
            return JSON
    if accepted and not any(a in ("*/*", "application/*") for a in accepted):
        raise EdenError(f"cannot answer in {', '.join(accepted)}; use {JSON} or {', '.join(binary_types)}",
                        code=ErrorCode.NOT_ACCEPTABLE)
    return binary_types[0] if binary_request else JSON


def render(reply: StageReply) -> Response:
    """The reply as an HTTP response: the binary body as is, or the JSON envelope (serialized here, off the
    event loop, since `run_stage` calls this on the thread pool)."""
    headers = {"X-Processing-Time": str(reply.metadata["processing_time"])} if "processing_time" in reply.metadata \
        else None
    if reply.body is not None:
        return Response(reply.body, media_type=reply.media_type, headers=headers)
    data = {**reply.data, "metadata": reply.metadata} if reply.metadata else reply.data
    return JSONResponse(success_body(data), headers=headers)


async def serve(stage: Stage[Any, Any], request: Request) -> Response:
    """Run one HTTP request through `stage`: the body is read whole before a model place is taken, and a
    caller that disconnects meanwhile has its work dropped (CANCELLED, logged, never sent)."""
    kind = media_type(request)
    check_content_type(stage, kind)
    answer = response_format(request.headers.get("accept", ""), stage.answers, kind in stage.binary_inputs)
    timeout = request_timeout(request.headers.get("x-request-timeout"), request.app.state.settings.request_timeout_s)
    cancellation = Cancellation(timeout)
    inp = StageInput(kind, await request.body(), None, request.query_params, request.path_params, answer,
                     request.state.request_id, request.headers.get("content-type", ""), cancellation,
                     request.scope.get("state", {}).get("received", time.perf_counter()))
    timings: dict[str, float] = {}
    work = asyncio.ensure_future(run_stage(stage, inp, request.app.state.runtime, render, timings))
    work.add_done_callback(lambda _: request.app.state.metrics.observe_stages(request.scope["route"].path, timings))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if work.done():
        return work.result()
    cancellation.caller_gone()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError, EdenError):
        await work  # until the model thread lets go of it
    raise EdenError("the caller went away; the work was dropped", code=ErrorCode.CANCELLED)


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects (the body is read: the next message can only be a disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass

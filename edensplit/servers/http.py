"""The HTTP adapter of the stage contract: a request becomes a `StageInput` (body, Content-Type, query
options, path parameters, the answer negotiated from Accept), a `StageReply` becomes a response."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from edensplit.errors import EdenError, ErrorCode
from edensplit.servers.contract import JSON, Stage, StageInput, StageReply, check_content_type, run_stage
from edensplit.servers.envelope import success_body


def media_type(request: Request) -> str:
    """The request's content type without parameters, lower-cased ('' when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def response_format(accept: str, binary_types: tuple[str, ...], binary_request: bool) -> str:
    """JSON, or one of `binary_types`, from the Accept header; a binary request defaults to binary."""
    accepted = [part.split(";")[0].strip().lower() for part in accept.split(",")]
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
    """Run one HTTP request through `stage`: the body is read whole before a model place is taken."""
    kind = media_type(request)
    check_content_type(stage, kind)
    answer = response_format(request.headers.get("accept", ""), stage.answers, kind in stage.binary_inputs)
    inp = StageInput(kind, await request.body(), None, request.query_params, request.path_params, answer,
                     request.state.request_id, request.headers.get("content-type", ""))
    return await run_stage(stage, inp, request.app.state.runtime, render)

"""The OpenAPI document's parts FastAPI cannot derive on its own: request bodies of several media types (the JSON
schema inlined, the binary kinds described), query options, and every route's responses.

Responses are derived from what can answer a request: its operation's own error codes (`Operation.errors`, and
INVALID_REQUEST for path parameters of the wrong type: `Endpoint.errors`), the HTTP framing's (`http.BODY_ERRORS`,
`http.SERVE_ERRORS`), the pipeline's (`pipeline.PIPELINE_ERRORS`), UNAUTHORIZED where a key guards the route
(`auth.access_errors`) and INTERNAL_ERROR everywhere; grouped by HTTP status, each status answered with the error
envelope whose `code` is an enum of that status's codes. CANCELLED is never sent, so never documented."""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel

from edensplit.errors import ErrorCode
from edensplit.servers import http
from edensplit.servers.auth import access_errors
from edensplit.servers.contract import JSON, MULTIPART
from edensplit.servers.pipeline import PIPELINE_ERRORS
from edensplit.servers.schemas import EncodeRequest, ErrorEnvelope, inline_schema, option_schema
from edensplit.servers.service import Endpoint
from edensplit.wire import codecs
from edensplit.wire.frames import FRAMES_MEDIA_TYPE
from edensplit.wire.shm import SHM_MEDIA_TYPE

OPTIONS = ("seed", "num_steps", "method", "difference", "vae_scaler", "vae_shift")  # the edge's sampling options
OPTIONS_DOC = f"options as query parameters: {', '.join(OPTIONS)}"
HANDLE_SCHEMA = {
    "type": "object", "required": ["segment", "size", "media_type"],
    "description": "a shared-memory handle (servers with ALLOW_SHM=1; docs/protocol.md, Shared memory): the segment "
                   "holds a body of `media_type`, taken once",
    "properties": {"segment": {"type": "string", "pattern": r"^edensplit-shm-\d+-\d+-\d+-[0-9a-f]{32}$"},
                   "size": {"type": "integer", "minimum": 0}, "media_type": {"type": "string"},
                   "metadata": {"type": "object"}}}
RETRY_AFTER = (ErrorCode.OVERLOADED, ErrorCode.NOT_READY)  # answered with Retry-After (envelope.error_response)
REQUEST_ID = {"X-Request-ID": {"required": True, "schema": {"type": "string"},
                               "description": "the request's id (the caller's, or made): its idempotency key"}}


def binary(description: str) -> dict[str, Any]:
    return {"schema": {"type": "string", "format": "binary", "description": description}}


def request_body(schema: type[BaseModel], **binaries: dict[str, Any]) -> dict[str, Any]:
    """A request body of JSON `schema` or the binary media types given (media type -> content)."""
    return {"required": True, "content": {JSON: {"schema": inline_schema(schema)}, **binaries}}


def with_handles(body: dict[str, Any]) -> dict[str, Any]:
    """A request body that may also be a shared-memory handle to one of its binary kinds (ALLOW_SHM=1)."""
    return {**body, "content": {**body["content"], SHM_MEDIA_TYPE: {"schema": HANDLE_SCHEMA}}}


def frames_body(schema: type[BaseModel], names: tuple[str, ...]) -> dict[str, Any]:
    """The body of a frames operation: JSON, multipart or a frames container."""
    files = {n: {"type": "string", "format": "binary", "description": "a PNG or JPEG image"} for n in names}
    image_size = {k: v for k, v in inline_schema(EncodeRequest)["properties"]["image_size"].items() if k != "title"}
    metadata = {"type": "object", "properties": {"image_size": image_size},
                "description": "free-form; image_size [H, W], when sent, is checked against the frames"}
    multipart = {"schema": {"type": "object", "required": list(names), "properties": {**files, "metadata": metadata}},
                 "encoding": {"metadata": {"contentType": JSON}}}
    container = binary(f"frames container with uint8 tensors {', '.join(names)}")
    return request_body(schema, **{MULTIPART: multipart, FRAMES_MEDIA_TYPE: container})


def query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def options_query(names: Iterable[str], applies: str) -> tuple[dict[str, Any], ...]:
    """Query parameters for options `names`, each with the schema `Options` validates it with; `applies` says to
    which requests (e.g. binary bodies only: a JSON body carries its options itself)."""
    params = []
    for name in names:
        schema = option_schema(name)
        params.append(query(name, schema, f"{schema.pop('description', name)}; {applies}"))
    return tuple(params)


def wire_dtype_query() -> dict[str, Any]:
    """`openapi_extra` for the cloud's `wire_dtype` query parameter: the wire dtypes registered now (a codec
    registered later shows in apps created after it), each with the error bound it guarantees."""
    bounds = "; ".join(f"{name}: {codecs.get(name).bound}" for name in codecs.names())
    schema = {"type": "string", "enum": list(codecs.names()), "default": codecs.DEFAULT}
    return {"parameters": [query("wire_dtype", schema, f"enc_out precision on the wire ({bounds})")]}


def wire_dtypes_text() -> str:
    """The wire dtypes in words, for endpoint descriptions."""
    return f"one of {', '.join(codecs.names())} (default {codecs.DEFAULT})"


# -- responses -------------------------------------------------------------------------------------------------

def error_schema(codes: Iterable[ErrorCode]) -> dict[str, Any]:
    """The error envelope, its `code` one of `codes`."""
    schema = inline_schema(ErrorEnvelope)
    code = schema["properties"]["error"]["properties"]["code"]
    code.update(enum=[str(c) for c in codes], description="see docs/protocol.md, Errors")
    return schema


def error_responses(codes: Iterable[ErrorCode]) -> dict[int, dict[str, Any]]:
    """One response per HTTP status of `codes`: the error envelope of that status's codes, named in its
    description, with the headers they come with."""
    by_status: dict[int, list[ErrorCode]] = {}
    for code in dict.fromkeys(codes):
        if code is not ErrorCode.CANCELLED:
            by_status.setdefault(code.status, []).append(code)
    responses = {}
    for status, group in sorted(by_status.items()):
        headers = dict(REQUEST_ID)
        if all(c in RETRY_AFTER for c in group):
            headers["Retry-After"] = {"required": True, "schema": {"type": "string"},
                                      "description": "seconds after which a retry may find room"}
        if group == [ErrorCode.UNAUTHORIZED]:
            headers["WWW-Authenticate"] = {"required": True, "schema": {"type": "string", "const": "Bearer"}}
        responses[status] = {"description": f"{HTTPStatus(status).phrase}: {', '.join(group)}", "headers": headers,
                             "content": {JSON: {"schema": error_schema(group)}}}
    return responses


def route_responses(path: str, keyed: bool, codes: Iterable[ErrorCode] = (),
                    success: dict[str, Any] | None = None) -> dict[int | str, dict[str, Any]]:
    """A route's responses: `codes`, UNAUTHORIZED where `key` guards `path`, INTERNAL_ERROR; `success` merged
    into its 200 (FastAPI adds the response model's JSON there)."""
    responses: dict[int | str, dict[str, Any]] = dict(
        error_responses((*codes, *access_errors(path, keyed), ErrorCode.INTERNAL_ERROR)))
    responses[200] = {"headers": dict(REQUEST_ID), **(success or {})}
    return responses


def endpoint_codes(endpoint: Endpoint) -> tuple[ErrorCode, ...]:
    """Every code an HTTP request to `endpoint` can get but UNAUTHORIZED: its own, the framing's, the pipeline's."""
    return (*endpoint.errors, *http.BODY_ERRORS, *http.SERVE_ERRORS, *PIPELINE_ERRORS)


def endpoint_responses(endpoint: Endpoint, keyed: bool, shm: bool = False) -> dict[int | str, dict[str, Any]]:
    """An operation's responses: its codes, and its answer as JSON or in the binary media types it answers in (and,
    `shm`, as a shared-memory handle)."""
    headers = {**REQUEST_ID, "X-Processing-Time": {"schema": {"type": "string"}, "description": "seconds spent"}}
    answers = {kind: binary(f"the answer itself ({kind})") for kind in endpoint.operation.answers}
    if shm:
        answers[SHM_MEDIA_TYPE] = {"schema": {**HANDLE_SCHEMA, "description": "a handle to the answer in shared "
                                              "memory, when Accept asks for it"}}
    return route_responses(endpoint.path, keyed, endpoint_codes(endpoint),
                           {"description": "the JSON envelope, or the answer itself when a binary type is asked for "
                                           "(Accept) or the request was binary", "headers": headers,
                            "content": answers})

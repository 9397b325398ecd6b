"""OpenAPI request bodies for operations that read several media types (FastAPI documents only JSON on its
own): the JSON schema inlined, and the binary kinds described."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from edensplit.servers.contract import JSON, MULTIPART
from edensplit.servers.schemas import inline_schema
from edensplit.wire import codecs
from edensplit.wire.frames import FRAMES_MEDIA_TYPE

OPTIONS_DOC = "options as query parameters: seed, num_steps, method, difference, vae_scaler, vae_shift"


def binary(description: str) -> dict[str, Any]:
    return {"schema": {"type": "string", "format": "binary", "description": description}}


def request_body(schema: type[BaseModel], **binaries: dict[str, Any]) -> dict[str, Any]:
    """A request body of JSON `schema` or the binary media types given (media type -> content)."""
    return {"required": True, "content": {JSON: {"schema": inline_schema(schema)}, **binaries}}


def frames_body(schema: type[BaseModel], names: tuple[str, ...]) -> dict[str, Any]:
    """The body of a frames operation: JSON, multipart or a frames container."""
    files = {n: {"type": "string", "format": "binary"} for n in names}
    multipart = {"schema": {"type": "object", "required": list(names), "properties": {
        **files, "metadata": {"type": "string", "description": "JSON object; may carry image_size [H, W]"}}}}
    container = binary(f"frames container with uint8 tensors {', '.join(names)}")
    return request_body(schema, **{MULTIPART: multipart, FRAMES_MEDIA_TYPE: container})


def wire_dtype_query() -> dict[str, Any]:
    """`openapi_extra` for the cloud's `wire_dtype` query parameter: the wire dtypes registered now (a codec
    registered later shows in apps created after it), each with the error bound it guarantees."""
    bounds = "; ".join(f"{name}: {codecs.get(name).bound}" for name in codecs.names())
    return {"parameters": [{"name": "wire_dtype", "in": "query", "required": False,
                            "description": f"enc_out precision on the wire ({bounds})",
                            "schema": {"type": "string", "enum": list(codecs.names()), "default": codecs.DEFAULT}}]}


def wire_dtypes_text() -> str:
    """The wire dtypes in words, for endpoint descriptions."""
    return f"one of {', '.join(codecs.names())} (default {codecs.DEFAULT})"

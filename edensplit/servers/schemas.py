"""The HTTP API contract: pydantic models for requests, responses and the envelope (and the /docs)."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edensplit.errors import EdenError, ErrorCode

T = TypeVar("T")


class ErrorBody(BaseModel):
    code: str = Field(description="one of the documented error codes, e.g. INVALID_IMAGE")
    message: str = Field(description="what is wrong, in words")
    details: dict[str, Any] = Field(default_factory=dict)


class Envelope(BaseModel, Generic[T]):
    """Every JSON response: `status` success with `data`, or error with `error`."""

    status: Literal["success", "error"]
    data: T | None = None
    error: ErrorBody | None = None


class EncodeRequest(BaseModel):
    frame0: str = Field(description="base64 PNG or JPEG (a data: URL is accepted too)")
    frame1: str = Field(description="base64 PNG or JPEG, the same size as frame0")
    image_size: tuple[int, int] | None = Field(None, description="[H, W]; when sent, checked against the frames")
    metadata: dict[str, Any] | None = Field(None, description="free-form (fps, frame_id, ...); echoed in logs")


class EncodeFrameRequest(BaseModel):
    frame: str = Field(description="base64 PNG or JPEG of one video frame")
    image_size: tuple[int, int] | None = Field(None, description="[H, W]; when sent, checked against the frame")
    metadata: dict[str, Any] | None = None


class EncodeMetadata(BaseModel):
    ph: int = Field(description="token grid rows of the padded frame")
    pw: int = Field(description="token grid columns")
    height: int
    width: int
    wire_dtype: str
    enc_out_size: int
    difference: float | None = Field(None, description="raw mean cosine similarity of a pair's two frames")
    processing_time: float = Field(description="seconds spent on the server")
    request_id: str


class EncodeData(BaseModel):
    enc_out: str = Field(description="base64 of the enc_out blob (a safetensors container, see docs/protocol.md)")
    enc_out_size: int = Field(description="bytes of the blob before base64")
    metadata: EncodeMetadata


class SamplingConfig(BaseModel):
    num_steps: int = Field(2, description="2 = the reference grid (0, 0.75, 1); others a uniform grid")
    method: str = Field("euler", description="euler or heun")


class OptionsBody(BaseModel):
    """The sampling options in the user's JSON shape (all optional). Their types are checked here; their
    ranges by `edensplit.wire.options.Options`, which every transport's options go through."""

    difference: float | None = Field(None, description="raw mean cosine similarity; defaults to the blob's")
    vae_scaler: float | None = Field(None, description="defaults to the loaded config (EDEN: 0.179437). Note: "
                                     "0.18215 / 0.0 are Stable Diffusion's VAE constants, not EDEN's")
    vae_shift: float | None = Field(None, description="defaults to the loaded config (EDEN: 0.770202)")
    sampling_config: SamplingConfig | None = None
    seed: int | None = Field(None, description="the noise seed of this frame (default 0)")
    metadata: dict[str, Any] | None = Field(None, description="ph/pw, when sent, must match the blob")


class InterpolateRequest(OptionsBody):
    enc_out: str = Field(description="base64 of the enc_out blob from /api/v1/encode")
    model_args: dict[str, Any] | None = Field(None, description="when sent, must match the loaded model")


class SessionFrameRequest(OptionsBody):
    enc_out: str | None = Field(None, description="flow A: base64 of one frame's enc_out blob (/api/v1/encode_frame)")
    frame: str | None = Field(None, description="flow B: base64 PNG/JPEG of the frame; the edge has the cloud "
                                                "encode it and computes the difference itself")
    interpolate: bool | None = Field(None, description="default: true for k > 0; false only stores the frame")


class InterpolateFramesRequest(EncodeRequest, OptionsBody):
    """Flow B: the cloud's /encode body plus the sampling options."""


class InterpolateMetadata(BaseModel):
    processing_time: float
    request_id: str
    seed: int
    height: int
    width: int


class InterpolateData(BaseModel):
    generated_frame: str = Field(description="base64 PNG of the middle frame")
    metadata: InterpolateMetadata


class HealthResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    status: Literal["ok", "loading", "error", "draining"]
    stage: str
    model_loaded: bool
    ready: bool = Field(False, description="loaded, warmed up and admitting requests")
    device: str | None = None
    dtype: str | None = None
    weights_source: str | None = Field(None, description="checkpoint path, or 'random (seed N)'")
    random_weights: bool = False
    model_args: dict[str, Any] | None = None
    version: str
    uptime_s: float
    inflight: int = 0
    max_batch: int = 1
    error: str | None = None


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema with its nested models inlined, for request bodies declared in openapi_extra
    (pydantic's `#/$defs/...` references would not resolve inside the OpenAPI document)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        return [resolve(v) for v in node] if isinstance(node, list) else node

    return resolve(schema)


def schema_error(errors: list[dict[str, Any]]) -> EdenError:
    """INVALID_REQUEST naming where a body breaks the schema (the first three places), all of them in details."""
    found = [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in errors]
    where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in found[:3])
    return EdenError(f"the request does not match the schema: {where}", code=ErrorCode.INVALID_REQUEST,
                     details={"errors": found})


def parse_body(model: type[BaseModel], body: bytes | str | dict[str, Any]) -> Any:
    """Validate a JSON body (or an already parsed WebSocket message) against a request model."""
    try:
        return model.model_validate(body) if isinstance(body, dict) else model.model_validate_json(body)
    except ValidationError as exc:
        raise schema_error(exc.errors()) from None

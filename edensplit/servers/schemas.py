"""The HTTP API contract: pydantic models for requests, responses and the envelope (and the /docs).

The request models check each field's JSON type (an integer is a JSON integer, not a string or a bool: a mistyped
field is INVALID_REQUEST). What a value must be (a base64 PNG, a seed in range, a size of at least 1) is checked
later, by the code that reads it, with that rule's own error code (INVALID_BASE64, INVALID_IMAGE, INVALID_PARAMETER,
FRAME_SIZE_MISMATCH...); the JSON Schema states those rules all the same (`documented`), the options' taken from
`edensplit.wire.options.Options`, which checks them, so /openapi.json tells what a request must be.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictFloat,
    ValidationError,
    WithJsonSchema,
)

from edensplit.errors import EdenError, ErrorCode
from edensplit.wire.options import Options

T = TypeVar("T")
# Strict base64 (what `b64decode_field` decodes), not empty, optionally as a data URL.
BASE64_PATTERN = r"^(data:[^,]*;base64,)?([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{2}==)$"


def documented(schema: dict[str, Any]) -> WithJsonSchema:
    """A field's JSON Schema: the rule its value is held to where it is read (not by the model, which checks only
    its type, so that breaking the rule gets that rule's own error code)."""
    return WithJsonSchema(schema)


def option_schema(name: str) -> dict[str, Any]:
    """Option `name`'s JSON Schema as `Options` validates it (range, enum), without the null of 'not sent'."""
    prop = Options.model_json_schema()["properties"][name]
    branch = next(b for b in prop.get("anyOf", [prop]) if b.get("type") != "null")
    return {**({"description": prop["description"]} if "description" in prop else {}), **branch}


def whole_number(value: Any) -> int:
    """JSON Schema's integer: an int, or a float without a fraction (1.0); not a bool, not a string."""
    if isinstance(value, bool) or not isinstance(value, int | float) or (isinstance(value, float)
                                                                         and not value.is_integer()):
        raise ValueError("Input should be an integer")
    return int(value)


WholeNumber = Annotated[int, PlainValidator(whole_number), documented({"type": "integer"})]


def base64_of(what: str) -> WithJsonSchema:
    return documented({"type": "string", "minLength": 1, "pattern": BASE64_PATTERN, "contentEncoding": "base64",
                       "description": f"base64 of {what}"})


Image = Annotated[str, base64_of("a PNG or JPEG image (a data: URL is accepted too)")]
Blob = Annotated[str, base64_of("an enc_out blob (a safetensors container, see docs/protocol.md)")]
ImageSize = Annotated[tuple[WholeNumber, WholeNumber], documented({
    "type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2})]
# The options in the JSON shape: a JSON integer, number or boolean each (not a string, a number not a bool), their
# ranges and names documented here and checked by `Options` (INVALID_PARAMETER).
Seed = Annotated[WholeNumber, documented(option_schema("seed"))]
NumSteps = Annotated[WholeNumber, documented(option_schema("num_steps"))]
Method = Annotated[str, documented(option_schema("method"))]
Difference = Annotated[StrictFloat, documented(option_schema("difference"))]
VaeScaler = Annotated[StrictFloat, documented(option_schema("vae_scaler"))]
VaeShift = Annotated[StrictFloat, documented(option_schema("vae_shift"))]
GridMetadata = Annotated[dict[str, Any], documented({
    "type": "object", "properties": {"ph": {"type": "integer", "minimum": 1}, "pw": {"type": "integer", "minimum": 1}},
    "description": "ph/pw, when sent, must be the blob's token grid; anything else is free-form"})]


class ErrorBody(BaseModel):
    code: str = Field(description="one of the documented error codes, e.g. INVALID_IMAGE")
    message: str = Field(description="what is wrong, in words")
    details: dict[str, Any] = Field(default_factory=dict)


class Envelope(BaseModel, Generic[T]):
    """Every JSON response: `status` success with `data`, or error with `error`."""

    status: Literal["success", "error"]
    data: T | None = None
    error: ErrorBody | None = None


class ErrorEnvelope(BaseModel):
    """An error answer (every status but 2xx)."""

    status: Literal["error"]
    data: None = None
    error: ErrorBody


class EncodeRequest(BaseModel):
    frame0: Image = Field(description="base64 PNG or JPEG (a data: URL is accepted too)")
    frame1: Image = Field(description="base64 PNG or JPEG, the same size as frame0")
    image_size: ImageSize | None = Field(None, description="[H, W]; when sent, checked against the frames")
    metadata: dict[str, Any] | None = Field(None, description="free-form (fps, frame_id, ...); echoed in logs")


class EncodeFrameRequest(BaseModel):
    frame: Image = Field(description="base64 PNG or JPEG of one video frame")
    image_size: ImageSize | None = Field(None, description="[H, W]; when sent, checked against the frame")
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
    num_steps: NumSteps = Field(2, description="2 = the reference grid (0, 0.75, 1); others a uniform grid")
    method: Method = Field("euler", description="the sampler's integration method")


class OptionsBody(BaseModel):
    """The sampling options in the user's JSON shape (all optional). Their types are checked here; their
    ranges by `edensplit.wire.options.Options`, which every transport's options go through."""

    difference: Difference | None = Field(None, description="raw mean cosine similarity; defaults to the blob's")
    vae_scaler: VaeScaler | None = Field(None, description="defaults to the loaded config (EDEN: 0.179437). Note: "
                                         "0.18215 / 0.0 are Stable Diffusion's VAE constants, not EDEN's")
    vae_shift: VaeShift | None = Field(None, description="defaults to the loaded config (EDEN: 0.770202)")
    sampling_config: SamplingConfig | None = None
    seed: Seed | None = Field(None, description="the noise seed of this frame (default 0)")
    metadata: dict[str, Any] | None = Field(None, description="free-form")


class InterpolateRequest(OptionsBody):
    enc_out: Blob = Field(description="base64 of the enc_out blob from /api/v1/encode")
    model_args: dict[str, Any] | None = Field(None, description="when sent, must match the loaded model")
    metadata: GridMetadata | None = None


class SessionFrameRequest(OptionsBody):
    """Exactly one of `enc_out` (flow A) and `frame` (flow B)."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": [name], "properties": {name: {"type": "string"}}} for name in ("enc_out", "frame")]})

    enc_out: Blob | None = Field(None, description="flow A: base64 of one frame's enc_out blob (/api/v1/encode_frame)")
    frame: Image | None = Field(None, description="flow B: base64 PNG/JPEG of the frame; the edge has the cloud "
                                                  "encode it and computes the difference itself")
    interpolate: StrictBool | None = Field(None, description="default: true for k > 0; false only stores the frame")


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


class StoredData(BaseModel):
    """A session frame stored, not interpolated (interpolate=false, or frame 0)."""

    session_id: str
    stored: int = Field(description="the frame index stored")


class HealthResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    status: Literal["ok", "loading", "error", "draining"]
    stage: str
    model_loaded: bool
    ready: bool = Field(False, description="loaded, warmed up and admitting requests")
    device: str | None = None
    dtype: str | None = None
    stand_in: bool = Field(False, description="the stand-in of EDENSPLIT_STAND_IN_MODEL=1 (benchmarks of the "
                           "serving path): no model, checkerboard frames")
    weights: str | None = Field(None, description="which weights run, never a path: an hf:// URI, \"tiny EDEN trained "
                                "on synthetic motion\", \"local checkpoint\", \"random (seed N)\" or \"stand-in\"")
    weights_repository: str | None = Field(None, description="weights from the Hugging Face Hub: the repository")
    weights_revision: str | None = Field(None, description="weights from the Hugging Face Hub: the commit they came "
                                         "from")
    weights_digest: str | None = Field(None, description="a short SHA-256 of the checkpoint file, or of the random "
                                       "weights' configuration and seed: equal on a cloud and an edge that run "
                                       "the same model (never a path)")
    random_weights: bool = False
    shared_memory: bool = Field(False, description="ALLOW_SHM=1: takes and gives encodings as shared-memory handles "
                                "(callers on its host)")
    model_args: dict[str, Any] | None = None
    version: str
    uptime_s: float
    inflight: int = 0
    max_batch: int = 1
    gpus: int = Field(0, description="CUDA devices this server's process sees (its model runs on `device`)")
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

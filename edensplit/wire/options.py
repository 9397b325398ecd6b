"""A request's options: one pydantic model for JSON bodies, HTTP query parameters and WebSocket headers,
used by the servers to validate and by the client to build requests.

The flat form (query parameters, binary message headers) carries strings or JSON scalars; the user's
JSON shape nests `num_steps`/`method` under `sampling_config`. Both go through `Options`, whose fields
declare their constraints, so HTTP and WebSocket cannot read one option two ways.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler, ValidationError
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from edensplit.errors import EdenError, ErrorCode
from edensplit.model.encoding import DIFFERENCE_LIMIT
from edensplit.model.sampler import MAX_STEPS, METHODS
from edensplit.model.seeds import MAX_SEED
from edensplit.wire import codecs

Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="the noise seed of this frame (default 0)")]
NumSteps = Annotated[int, Field(ge=1, le=MAX_STEPS, description="2 = the reference grid (0, 0.75, 1)")]
Method = Annotated[Literal["euler", "heun"], Field(description="the sampler's integration method")]
Difference = Annotated[float, Field(ge=-DIFFERENCE_LIMIT, le=DIFFERENCE_LIMIT, allow_inf_nan=False,
                                    description="the raw mean cosine similarity of the pair's frames")]
VaeScaler = Annotated[float, Field(gt=0, allow_inf_nan=False, description="EDEN: 0.179437")]
VaeShift = Annotated[float, Field(allow_inf_nan=False, description="EDEN: 0.770202")]
NOT_A_NAME = "not_a_registered_name"  # the error type of a name a registry does not hold
OPTION_ERRORS = (ErrorCode.INVALID_PARAMETER, ErrorCode.INVALID_REQUEST)  # what `option_error` refuses with


class OneOf:
    """A str annotation: one of the names a registry holds when validating (`names()`, read each time, so a
    name registered later is accepted), and a JSON Schema string `enum` of them when a schema is generated."""

    def __init__(self, names: Callable[[], tuple[str, ...]]):
        self.names = names

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(self.validate)

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
                                     ) -> JsonSchemaValue:
        return {"type": "string", "enum": list(self.names())}

    def validate(self, value: Any) -> str:
        if isinstance(value, str) and value in self.names():
            return value
        raise PydanticCustomError(NOT_A_NAME, "Input should be one of {names}", {"names": ", ".join(self.names())})


WireDtype = Annotated[str, OneOf(codecs.names)]

# What each constraint means, for messages that name the option and the rule it breaks (`rule`).
RULES = {
    "seed": "an integer in [0, 2**64)",
    "num_steps": f"an integer from 1 to {MAX_STEPS}",
    "method": f"one of {', '.join(METHODS)}",
    "difference": "the raw mean cosine similarity in [-1, 1]",
    "vae_scaler": "> 0",
}
_CONSTRAINT_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def rule(name: str) -> str | None:
    """What option `name` must be, in words; the wire dtypes as registered now."""
    if name == "wire_dtype":
        return f"one of {', '.join(codecs.names())}"
    return RULES.get(name)


class Options(BaseModel):
    """Every option a request may carry (all optional; the servers fill in defaults)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    seed: Seed | None = None
    num_steps: NumSteps | None = None
    method: Method | None = None
    difference: Difference | None = None
    vae_scaler: VaeScaler | None = None
    vae_shift: VaeShift | None = None
    interpolate: bool | None = Field(None, description="sessions: false only stores the frame")
    wire_dtype: WireDtype | None = Field(None, description="cloud: enc_out precision on the wire")

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> Options:
        """From query parameters or a binary message header: strings or JSON scalars."""
        picked = {k: values[k] for k in cls.model_fields if values.get(k) is not None}
        try:
            return cls.model_validate(picked)
        except ValidationError as exc:
            raise option_error(exc, picked, flat=True) from None

    @classmethod
    def from_json(cls, body: Any) -> Options:
        """From the user's JSON shape (`sampling_config` nested; top-level fields as they are), already
        parsed by a request model, so a mistyped field is that model's INVALID_REQUEST."""
        sampling = getattr(body, "sampling_config", None)
        values = {k: getattr(body, k, None) for k in cls.model_fields}
        if sampling is not None:
            values.update(num_steps=sampling.num_steps, method=sampling.method)
        picked = {k: v for k, v in values.items() if v is not None}
        try:
            return cls.model_validate(picked)
        except ValidationError as exc:
            raise option_error(exc, picked, flat=False) from None

    def flat(self) -> dict[str, Any]:
        """For query parameters and binary message headers (unset options left out)."""
        return self.model_dump(exclude_none=True)

    def json_fields(self) -> dict[str, Any]:
        """For the user's JSON shape: `sampling_config` nested, the rest at the top level."""
        flat = self.flat()
        sampling = {k: flat.pop(k) for k in ("num_steps", "method") if k in flat}
        return {**flat, **({"sampling_config": sampling} if sampling else {})}


def option_error(exc: ValidationError, values: Mapping[str, Any], *, flat: bool) -> EdenError:
    """INVALID_PARAMETER naming the option and its rule; a value of the wrong type is INVALID_PARAMETER in
    the flat form (a query string) and INVALID_REQUEST in a JSON body (it breaks the schema)."""
    error = exc.errors()[0]
    name = str(error["loc"][0]) if error["loc"] else "option"
    value = values.get(name)
    if error["type"] == "finite_number":
        return EdenError(f"{name} must be finite, got {value!r}", code=ErrorCode.INVALID_PARAMETER)
    if error["type"] in ("literal_error", NOT_A_NAME):
        return EdenError(f"{name} {value!r} is not {rule(name) or error['msg']}", code=ErrorCode.INVALID_PARAMETER)
    if error["type"] in _CONSTRAINT_ERRORS:
        return EdenError(f"{name} must be {rule(name) or error['msg']}, got {value!r}",
                         code=ErrorCode.INVALID_PARAMETER)
    wanted = {"seed": "int", "num_steps": "int", "interpolate": "bool", "difference": "float", "vae_scaler": "float",
              "vae_shift": "float"}.get(name, "string")
    if flat:
        return EdenError(f"{name}={value!r} is not a valid {wanted}", code=ErrorCode.INVALID_PARAMETER)
    return EdenError(f"the request does not match the schema: {name}: {error['msg']}",
                     code=ErrorCode.INVALID_REQUEST, details={"errors": [{"loc": [name], "msg": error["msg"]}]})

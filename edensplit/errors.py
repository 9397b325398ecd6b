"""The exceptions edensplit raises for problems a user can fix, and the protocol's error codes.

Every error carries a code from `ErrorCode` (the documented list in docs/protocol.md) and a message
that names the problem; servers turn them into the error envelope with the code's HTTP status.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """The protocol's error codes. `status` is the HTTP status each is answered with."""

    INVALID_REQUEST = "INVALID_REQUEST"  # body does not match the request schema
    INVALID_BASE64 = "INVALID_BASE64"  # a base64 field does not decode
    INVALID_IMAGE = "INVALID_IMAGE"  # bytes that are not a PNG/JPEG image
    FRAME_SIZE_MISMATCH = "FRAME_SIZE_MISMATCH"  # frames differ in size, or differ from image_size
    INVALID_BLOB = "INVALID_BLOB"  # enc_out / frames container unreadable, wrong format or version
    SHAPE_MISMATCH = "SHAPE_MISMATCH"  # tensors that do not fit the grid, or ph/pw that do not match
    MODEL_MISMATCH = "MODEL_MISMATCH"  # model_args or hidden size differ from the loaded model
    INVALID_PARAMETER = "INVALID_PARAMETER"  # an out-of-range override (seed, num_steps, vae_scaler, ...)
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"  # a body over MAX_REQUEST_MB, or frames over MAX_PIXELS
    BODY_TIMEOUT = "BODY_TIMEOUT"  # the request body did not arrive within BODY_TIMEOUT_S
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    NOT_ACCEPTABLE = "NOT_ACCEPTABLE"  # the Accept header names no format this endpoint can answer in
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"  # a route that exists, asked with a method it does not take (Allow)
    UNAUTHORIZED = "UNAUTHORIZED"  # a server with keys (EDENSPLIT_API_KEY, _KEYS_FILE), and no known bearer key
    FORBIDDEN_ORIGIN = "FORBIDDEN_ORIGIN"  # a WebSocket handshake from a web page whose origin is not allowed
    INVALID_HOST = "INVALID_HOST"  # a server without a key asked under a name (DNS rebinding), not its address
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"  # a request id reused with another body, or a session frame
    # resent with other content
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"  # a session cache the server no longer has: resend
    SHM_DISABLED = "SHM_DISABLED"  # a shared-memory handle (sent or asked for) at a server without ALLOW_SHM=1
    SHM_NOT_FOUND = "SHM_NOT_FOUND"  # a handle's segment is gone (unknown, already taken, or expired): encode again
    SHM_FORBIDDEN = "SHM_FORBIDDEN"  # a segment not this user's and private, or made for another client
    SHM_INVALID = "SHM_INVALID"  # not a handle, not an edensplit segment, or one holding other than it says
    OVERLOADED = "OVERLOADED"  # too much work in flight: retry after a moment
    NOT_READY = "NOT_READY"  # the model is not loaded (yet), or the server is shutting down
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"  # the request's deadline passed before its answer was ready
    CANCELLED = "CANCELLED"  # the caller went away; the work was dropped (logged, never sent)
    UPSTREAM_ERROR = "UPSTREAM_ERROR"  # a server this one called failed (flow B)
    ENCODE_ERROR = "ENCODE_ERROR"  # the encoder failed on valid input (a server fault)
    MODEL_ERROR = "MODEL_ERROR"  # sampling or decoding failed on valid input (a server fault)
    INTERNAL_ERROR = "INTERNAL_ERROR"

    @property
    def status(self) -> int:
        return _STATUS[self]


_STATUS = {
    ErrorCode.INVALID_REQUEST: 422, ErrorCode.INVALID_BASE64: 400, ErrorCode.INVALID_IMAGE: 400,
    ErrorCode.FRAME_SIZE_MISMATCH: 400, ErrorCode.INVALID_BLOB: 400, ErrorCode.SHAPE_MISMATCH: 422,
    ErrorCode.MODEL_MISMATCH: 422, ErrorCode.INVALID_PARAMETER: 422, ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.BODY_TIMEOUT: 408,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415, ErrorCode.NOT_ACCEPTABLE: 406, ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.SESSION_NOT_FOUND: 409, ErrorCode.OVERLOADED: 503, ErrorCode.NOT_READY: 503,
    ErrorCode.UNAUTHORIZED: 401, ErrorCode.FORBIDDEN_ORIGIN: 403, ErrorCode.INVALID_HOST: 400,
    ErrorCode.IDEMPOTENCY_CONFLICT: 409, ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.SHM_DISABLED: 415, ErrorCode.SHM_NOT_FOUND: 410, ErrorCode.SHM_FORBIDDEN: 403, ErrorCode.SHM_INVALID: 400,
    ErrorCode.CANCELLED: 499,
    ErrorCode.UPSTREAM_ERROR: 502, ErrorCode.ENCODE_ERROR: 500, ErrorCode.MODEL_ERROR: 500,
    ErrorCode.INTERNAL_ERROR: 500,
}


class EdenError(Exception):
    """Base class: a user-facing error whose message is shown as is, without a traceback."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, *, code: ErrorCode | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details or {}


class ConfigError(EdenError):
    """The config file or a model argument is missing or invalid."""

    code = ErrorCode.INVALID_PARAMETER


class CheckpointError(EdenError):
    """The checkpoint is missing, unreadable, or does not match the config."""

    code = ErrorCode.NOT_READY


class InputError(EdenError):
    """Frames, tensors or parameters handed to a stage do not fit (size, dtype, shape, range)."""

    code = ErrorCode.INVALID_PARAMETER


class WireError(InputError):
    """Bytes from the network that do not decode: base64, images, enc_out blobs, frame containers."""

    code = ErrorCode.INVALID_BLOB

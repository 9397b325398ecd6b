"""Ids a caller names things by: request ids (X-Request-ID, a WebSocket message's request_id) and session ids.
1-128 characters of A-Z a-z 0-9 . _ : -, so that no id can forge a log line, break a path or fill memory."""

from __future__ import annotations

import re
from typing import Any

from edensplit.errors import EdenError, ErrorCode

ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
ID_RULE = "1-128 characters of A-Z a-z 0-9 . _ : -"
ID_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}


def is_id(value: Any) -> bool:
    return isinstance(value, str) and ID.fullmatch(value) is not None


def check_id(value: Any, field: str) -> str:
    """`value` if it is an id, else INVALID_PARAMETER naming `field` (and not echoing more than its start)."""
    if not is_id(value):
        shown = repr(value)[:40] if isinstance(value, str) else type(value).__name__
        raise EdenError(f"{field} must be {ID_RULE}, got {shown}", code=ErrorCode.INVALID_PARAMETER)
    return value

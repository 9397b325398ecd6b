"""A bound on JSON nesting, checked before parsing: a document nested 100,000 deep would otherwise end in
a RecursionError (a 500 and a reset connection) instead of a clear refusal.

The scan looks only at the characters that matter (brackets, quotes, backslashes), so it costs little
on our documents, whose bulk is base64 text in which none of them occur.
"""

from __future__ import annotations

import re

from edensplit.errors import ErrorCode, WireError

MAX_DEPTH = 32  # our documents nest 3 deep; the safetensors spec's headers 2
_SIGNIFICANT = re.compile(rb'[\[\]{}"\\]')


def json_depth(data: bytes | bytearray | str) -> int:
    """The deepest nesting of arrays and objects in a JSON text (strings skipped; no other validation)."""
    raw = data.encode() if isinstance(data, str) else data
    depth = deepest = 0
    in_string = False
    skip_until = -1
    for match in _SIGNIFICANT.finditer(raw):
        pos, char = match.start(), match.group()
        if pos < skip_until:
            continue
        if in_string:
            if char == b"\\":
                skip_until = pos + 2  # the escaped character is not significant
            elif char == b'"':
                in_string = False
        elif char == b'"':
            in_string = True
        elif char in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif char in (b"]", b"}"):
            depth -= 1
    return deepest


def check_depth(data: bytes | bytearray | str, what: str, code: ErrorCode = ErrorCode.INVALID_REQUEST,
                limit: int = MAX_DEPTH) -> None:
    """Refuse a JSON text nested deeper than `limit`, naming it."""
    depth = json_depth(data)
    if depth > limit:
        raise WireError(f"{what} is nested {depth} levels deep, more than the limit of {limit}", code=code)

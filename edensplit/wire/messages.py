"""WebSocket message framing: binary messages that name their own request, and chunking.

A binary message is `b"EDS1"`, a little-endian uint32 header length, a JSON object header (which
always holds `type` and `request_id`), then the payload bytes. A JSON text message is a JSON object
with the same `type` and `request_id`. Either kind larger than the chunk size travels as several
messages: binary chunks repeat the header with `chunk` (0-based) and `chunks`; text chunks are
`{"type": "chunk", "request_id", "chunk", "chunks", "data": <slice of the message text>}`. So no
single WebSocket message exceeds the chunk size (default 8 MiB, under uvicorn's 16 MiB default),
and chunks of different requests may interleave on one connection.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from edensplit.errors import ErrorCode, WireError
from edensplit.wire.nesting import check_depth

MAGIC = b"EDS1"
CHUNK_BYTES = 8 * 2**20
MAX_HEADER_BYTES = 64 * 2**10
_LEN = struct.Struct("<I")


def _bad(message: str, code: ErrorCode = ErrorCode.INVALID_REQUEST, request_id: Any = None) -> WireError:
    return WireError(message, code=code, details={"request_id": request_id} if request_id is not None else None)


Payload = bytes | bytearray | memoryview


def pack_binary(header: dict[str, Any], payload: Payload = b"") -> bytes:
    """One binary message: the header, then the payload (copied once, into the message)."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join((MAGIC, _LEN.pack(len(head)), head, payload))


def unpack_binary(data: bytes) -> tuple[dict[str, Any], bytes]:
    """Split a binary message into its header and payload, or raise INVALID_REQUEST saying why."""
    header, payload = unpack_binary_view(data)
    return header, bytes(payload)


def unpack_binary_view(data: bytes) -> tuple[dict[str, Any], memoryview]:
    """`unpack_binary` with the payload a view of the message, not a copy."""
    if len(data) < 8 or data[:4] != MAGIC:
        raise _bad("binary message does not start with the EDS1 header")
    (size,) = _LEN.unpack_from(data, 4)
    if size > MAX_HEADER_BYTES or 8 + size > len(data):
        raise _bad(f"binary message header length {size} does not fit the message of {len(data)} bytes")
    check_depth(data[8: 8 + size], "binary message header")
    try:
        header = json.loads(data[8: 8 + size])
    except ValueError:  # not JSON, not UTF-8, or an integer too long to convert
        raise _bad("binary message header is not JSON") from None
    if not isinstance(header, dict):
        raise _bad("binary message header must be a JSON object")
    return header, memoryview(data)[8 + size:]


def parse_text(text: str) -> dict[str, Any]:
    check_depth(text, "text message")
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(f"text message is not JSON: {exc.msg} at position {exc.pos}") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise _bad(f"text message is not usable JSON: {exc}") from None
    if not isinstance(message, dict):
        raise _bad("a message must be a JSON object")
    return message


def split_binary(header: dict[str, Any], payload: Payload, chunk_bytes: int = CHUNK_BYTES) -> list[bytes]:
    """One binary message, or several chunks each carrying the header plus `chunk`/`chunks` (the payload copied
    once, into the messages)."""
    if len(payload) <= chunk_bytes:
        return [pack_binary(header, payload)]
    n = -(-len(payload) // chunk_bytes)
    view = memoryview(payload)
    return [pack_binary({**header, "chunk": i, "chunks": n}, view[i * chunk_bytes: (i + 1) * chunk_bytes])
            for i in range(n)]


def split_text(message: dict[str, Any], chunk_bytes: int = CHUNK_BYTES) -> list[str]:
    """One JSON text message, or `chunk` messages carrying slices of its text."""
    text = json.dumps(message, separators=(",", ":"))
    if len(text) <= chunk_bytes:
        return [text]
    n = -(-len(text) // chunk_bytes)
    rid = message.get("request_id")
    return [json.dumps({"type": "chunk", "request_id": rid, "chunk": i, "chunks": n,
                        "data": text[i * chunk_bytes: (i + 1) * chunk_bytes]}, separators=(",", ":"))
            for i in range(n)]


@dataclass
class _Partial:
    chunks: int
    parts: list[Any] = field(default_factory=list)
    size: int = 0
    header: dict[str, Any] | None = None


class Reassembler:
    """Collects chunks per request id; returns whole messages. Bounded by `max_bytes` per message
    and `max_pending` partial messages, so a peer cannot make it hold unbounded memory. A whole binary payload is
    copied once out of its messages: bytes, or (`writable`, the servers') a bytearray, whose tensors and frames
    can be views of it (wire.container.views)."""

    def __init__(self, max_bytes: int, max_pending: int = 16, writable: bool = False):
        self.max_bytes, self.max_pending, self.writable = max_bytes, max_pending, writable
        self._partial: dict[tuple[str, Any], _Partial] = {}

    def _slot(self, kind: str, rid: Any, index: Any, total: Any, size: int) -> _Partial:
        if not isinstance(rid, str) or not rid:
            raise _bad("a chunk must carry its request_id, a non-empty string")
        if not (isinstance(index, int) and isinstance(total, int) and 0 <= index < total):
            raise _bad(f"chunk {index!r} of {total!r} is not a valid chunk index", request_id=rid)
        key = (kind, rid)
        slot = self._partial.get(key)
        if slot is None:
            if index != 0:
                raise _bad(f"chunk {index} arrived before chunk 0", request_id=rid)
            if len(self._partial) >= self.max_pending:
                raise _bad(f"more than {self.max_pending} chunked messages in progress",
                           code=ErrorCode.OVERLOADED, request_id=rid)
            slot = self._partial[key] = _Partial(total)
        if total != slot.chunks or index != len(slot.parts):
            del self._partial[key]
            raise _bad(f"chunk {index} of {total} is out of order", request_id=rid)
        slot.size += size
        if slot.size > self.max_bytes:
            del self._partial[key]
            raise _bad(f"message over the server's limit of {self.max_bytes} bytes",
                       code=ErrorCode.PAYLOAD_TOO_LARGE, request_id=rid)
        return slot

    def drop(self, key: tuple[str, Any]) -> None:
        """Forget a chunked message in progress (kind "b" or "t", request_id)."""
        self._partial.pop(key, None)

    def pending(self) -> set[tuple[str, Any]]:
        """The (kind, request_id) of the chunked messages in progress."""
        return set(self._partial)

    def feed_binary(self, data: bytes) -> tuple[dict[str, Any], bytes | bytearray] | None:
        """A whole (header, payload), or None while chunks are still missing."""
        return self.feed_parts(*unpack_binary_view(data))

    def _whole(self, parts: list[Payload]) -> bytes | bytearray:
        return bytearray().join(parts) if self.writable else b"".join(parts)

    def feed_parts(self, header: dict[str, Any], payload: Payload) -> tuple[dict[str, Any], bytes | bytearray] | None:
        """`feed_binary` for a message whose header was already split off (`unpack_binary_view`)."""
        if "chunks" not in header:
            if len(payload) > self.max_bytes:
                raise _bad(f"message over the server's limit of {self.max_bytes} bytes",
                           code=ErrorCode.PAYLOAD_TOO_LARGE, request_id=header.get("request_id"))
            return header, self._whole([payload])
        rid = header.get("request_id")
        slot = self._slot("b", rid, header.get("chunk"), header.get("chunks"), len(payload))
        slot.parts.append(payload)
        slot.header = slot.header or header
        if len(slot.parts) < slot.chunks:
            return None
        del self._partial[("b", rid)]
        whole = {k: v for k, v in slot.header.items() if k not in ("chunk", "chunks")}
        return whole, self._whole(slot.parts)

    def feed_text(self, text: str) -> dict[str, Any] | None:
        """A whole JSON message, or None while chunks are still missing. A message is bounded by `max_bytes`
        whether it came in one piece or in chunks (as `feed_binary` bounds a binary one)."""
        if len(text) > self.max_bytes:
            raise _bad(f"message over the limit of {self.max_bytes} bytes", code=ErrorCode.PAYLOAD_TOO_LARGE)
        message = parse_text(text)
        if message.get("type") != "chunk":
            return message
        joined = self.feed_chunk(message)
        return None if joined is None else parse_text(joined)

    def feed_chunk(self, message: dict[str, Any]) -> str | None:
        """A parsed text chunk in; the whole message's text (not parsed: that may be tens of MB, the caller
        chooses where to parse it) once its last chunk is in, else None."""
        rid = message.get("request_id")
        data = message.get("data")
        if not isinstance(data, str):
            raise _bad("a text chunk needs a string 'data'", request_id=rid)
        slot = self._slot("t", rid, message.get("chunk"), message.get("chunks"), len(data))
        slot.parts.append(data)
        if len(slot.parts) < slot.chunks:
            return None
        del self._partial[("t", rid)]
        return "".join(slot.parts)

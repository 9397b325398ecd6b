"""WebSocket framing: binary messages name their request; large messages travel as chunks."""

from __future__ import annotations

import json

import pytest

from edensplit.errors import EdenError
from edensplit.wire.messages import Reassembler, pack_binary, split_binary, split_text, unpack_binary


def test_binary_message_round_trip():
    header, payload = unpack_binary(pack_binary({"type": "encode", "request_id": "r"}, b"\x00\x01"))
    assert header == {"type": "encode", "request_id": "r"} and payload == b"\x00\x01"


def test_large_binary_and_text_messages_are_chunked_and_reassembled_interleaved():
    data_a, data_b = bytes(range(256)) * 40, b"\xff" * 5000
    chunks_a = split_binary({"type": "t", "request_id": "a"}, data_a, chunk_bytes=1000)
    chunks_b = split_binary({"type": "t", "request_id": "b"}, data_b, chunk_bytes=1000)
    assert len(chunks_a) == 11 and all(len(unpack_binary(c)[1]) <= 1000 for c in chunks_a)
    r = Reassembler(max_bytes=1 << 20)
    whole = []
    for pair in zip(chunks_a, chunks_b, strict=False):  # interleaved requests
        whole += [m for m in (r.feed_binary(c) for c in pair) if m]
    whole += [m for m in (r.feed_binary(c) for c in chunks_a[len(chunks_b):]) if m]
    assert {h["request_id"]: p for h, p in whole} == {"a": data_a, "b": data_b}
    assert all("chunk" not in h for h, _ in whole)
    message = {"type": "encode", "request_id": "t", "payload": {"frame0": "x" * 3000}}
    texts = split_text(message, chunk_bytes=700)
    assert len(texts) > 3 and all(json.loads(t)["type"] == "chunk" for t in texts)
    assert [m for m in (r.feed_text(t) for t in texts) if m] == [message]


@pytest.mark.parametrize("chunks,phrase", [
    ([pack_binary({"request_id": "x", "chunk": 1, "chunks": 2}, b"")], "before chunk 0"),
    ([pack_binary({"request_id": "x", "chunk": 0, "chunks": 3}, b""),
      pack_binary({"request_id": "x", "chunk": 2, "chunks": 3}, b"")], "out of order"),
    ([pack_binary({"request_id": "x", "chunk": 0, "chunks": 2}, b"1" * 600),
      pack_binary({"request_id": "x", "chunk": 1, "chunks": 2}, b"1" * 600)], "over the server's limit"),
    ([pack_binary({"chunk": 0, "chunks": 2}, b"")], "request_id"),
    ([b"EDS1\xff\xff\xff\xff"], "header length"),
    ([b"EDS1\x02\x00\x00\x00[]"], "JSON object"),
])
def test_bad_chunks_are_refused_naming_the_problem(chunks, phrase):
    r = Reassembler(max_bytes=1000)
    with pytest.raises(EdenError, match=phrase):
        for c in chunks:
            r.feed_binary(c)

"""The client's side of shared memory (`--shm`, servers on this machine with ALLOW_SHM=1): a request's binary body
goes into a segment of the client's own and only its handle is sent; an answer that comes as a handle is taken
here, except an encoding, which the client passes on to the edge as the handle it is.

A segment of the client's is made for no particular client of the server (its unguessable name is what lets a
server take it); it comes back to the client for the next body once the request is answered, whether the server
took it or not, and a client killed before that leaves it to the servers' sweep of dead makers' segments.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import replace

from edensplit.client.policy import Client
from edensplit.client.requests import Answer, Call
from edensplit.errors import EdenError, ErrorCode
from edensplit.processes import maker_of
from edensplit.wire.blob import BLOB_MEDIA_TYPE
from edensplit.wire.shm import SHM_MEDIA_TYPE, Handle, Spares, take_segment


def asking_handles(call: Call) -> Call:
    """`call`, accepting a handle to its answer before the answer itself."""
    return call if call.accept.startswith(SHM_MEDIA_TYPE) else replace(call, accept=f"{SHM_MEDIA_TYPE}, {call.accept}")


def spares() -> Spares:
    """Spare segments for this process's request bodies (close them when done with the servers)."""
    return Spares(maker_of(os.getpid()))


def send(client: Client, call: Call, segments: Spares) -> Answer:
    """`call` through `client` with its binary body in a segment of this process's, written into one of
    `segments` (a body that is a handle already goes as it is). A retried request may find its segment gone (the
    server took it, then refused: 503 while its own segments were full): it is written again, and sent again, as
    long as the retry policy's `retry_for` and `retries` last, as a request with the bytes would be retried."""
    if call.body is None or call.content_type == SHM_MEDIA_TYPE:
        return client.send(call)
    policy = client.config.retry
    deadline = time.monotonic() + policy.retry_for
    for attempt in itertools.count():
        handle = segments.write(call.body, None, call.content_type)
        try:
            return client.send(replace(call, content_type=SHM_MEDIA_TYPE, body=handle.dumps()))
        except EdenError as exc:
            if exc.code != ErrorCode.SHM_NOT_FOUND or attempt >= policy.retries or time.monotonic() > deadline:
                raise
        finally:
            segments.give_back(handle.segment)
    raise AssertionError("unreachable")


def taken(answer: Answer) -> Answer:
    """The answer with a handle's data in place of the handle (an encoding's handle is kept, to pass on)."""
    if answer.content_type != SHM_MEDIA_TYPE:
        return answer
    handle = Handle.loads(answer.body)
    if handle.media_type == BLOB_MEDIA_TYPE:
        return answer
    data = take_segment(handle, None, handle.media_type)
    return Answer({**handle.metadata, **answer.metadata}, answer.data, data, handle.media_type)

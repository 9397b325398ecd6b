"""Where a binary answer's bytes are laid out: a fresh buffer, or one a caller provides for the duration of an
encode (the shared-memory adapter's segment, so that an encoding is cast straight into shared memory instead of
into a buffer that is then copied there)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import numpy as np

# (nbytes, media type) -> a writable uint8 array of nbytes
Allocator = Callable[[int, str], np.ndarray]
_allocator: ContextVar[Allocator | None] = ContextVar("edensplit_answer_allocator", default=None)


def answer_buffer(nbytes: int, media_type: str) -> np.ndarray:
    """A writable uint8 [nbytes] for an answer of `media_type`: the current `answers_into` allocator's, else new."""
    allocate = _allocator.get()
    return np.empty(nbytes, np.uint8) if allocate is None else allocate(nbytes, media_type)


@contextlib.contextmanager
def answers_into(allocate: Allocator) -> Iterator[None]:
    """Within the block (this thread's context), `answer_buffer` asks `allocate`."""
    token = _allocator.set(allocate)
    try:
        yield
    finally:
        _allocator.reset(token)

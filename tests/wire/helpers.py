"""Shared assertions for the wire tests: an error of the right class, code and wording."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from edensplit.errors import ErrorCode, WireError


@contextmanager
def wire_error(code: ErrorCode, phrase: str) -> Iterator[None]:
    """Expect a WireError with `code` whose message contains `phrase`."""
    with pytest.raises(WireError) as info:
        yield
    assert info.value.code == code, info.value.message
    assert phrase in info.value.message, info.value.message

"""Timing: the median of calls after warm-ups, compared calls timed in turns, the wall clock or CPU time."""

from __future__ import annotations

import pytest
import torch

from edensplit.bench.timing import time_interleaved, time_ms


def test_time_ms_and_time_interleaved():
    calls = []
    ms = time_ms(lambda: calls.append(1), torch.device("cpu"), warmup=2, iters=3)
    assert len(calls) == 5 and ms >= 0
    # Compared figures are timed in turns (warm-ups first), on the wall clock or this process's CPU time.
    order = []
    medians = time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                               torch.device("cpu"), warmup=1, iters=2, clock="cpu")
    assert order == ["a", "b", "a", "b", "a", "b"] and set(medians) == {"a", "b"}
    with pytest.raises(ValueError):
        time_interleaved({"a": lambda: None}, torch.device("cpu"), clock="sundial")

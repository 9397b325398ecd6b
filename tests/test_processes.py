"""A process named by its pid and start time: it runs while that process does, and a pid reused by another process
does not make it run again."""

from __future__ import annotations

import os
import subprocess
import sys

from edensplit.processes import maker_of, runs


def test_a_maker_runs_while_its_process_does_and_not_after():
    assert runs(maker_of(os.getpid()))
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    maker = maker_of(child.pid)
    assert runs(maker)
    child.communicate(b"")
    assert not runs(maker)
    start = int(maker.split("-")[1])
    assert not runs(f"{os.getpid()}-{start + 1}")  # this pid, a later start: another process

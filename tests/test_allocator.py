"""A process that has called keep_freed_memory reuses a freed request-sized buffer without faulting its pages in
again; the user's own malloc settings (or EDENSPLIT_KEEP_FREED_MEMORY=0) leave glibc's defaults alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import importlib.util, json, resource, sys, threading
spec = importlib.util.spec_from_file_location("allocator", sys.argv[1])  # the module alone: no torch to import
allocator = importlib.util.module_from_spec(spec); spec.loader.exec_module(allocator)
tuned = allocator.keep_freed_memory()
faults = []
def second_allocation():  # on a thread, as a server's request work is
    first = bytearray(48 << 20); first[::4096] = b"1" * len(first[::4096]); del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    again = bytearray(48 << 20); again[::4096] = b"1" * len(again[::4096])
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=second_allocation); thread.start(); thread.join()
print(json.dumps({"tuned": tuned, "faults": faults[0]}))
"""


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "EDENSPLIT_KEEP"))}
    module = Path(__file__).resolve().parents[1] / "edensplit" / "allocator.py"
    out = subprocess.run([sys.executable, "-c", PROBE, str(module)], env={**clean, **env}, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def test_a_freed_48_mb_buffer_is_reused_without_faulting_its_pages_in_again():
    tuned, default = probe(), probe(EDENSPLIT_KEEP_FREED_MEMORY="0")
    pages = (48 << 20) // 4096  # 12288
    assert tuned["tuned"] and tuned["faults"] < pages // 10, tuned
    assert not default["tuned"] and default["faults"] > pages // 2, default  # glibc's default: mmap, fault, unmap


def test_the_users_own_malloc_settings_win():
    assert probe(MALLOC_ARENA_MAX="4")["tuned"] is False


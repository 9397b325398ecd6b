"""Large buffers without page faults: glibc's malloc told to keep freed memory for the next request.

Every request here allocates tens of megabytes (a body read, an encoding rendered, a frame). By default glibc
serves an allocation over 32 MB (in a thread's arena, over 64 MB) with a fresh `mmap` and unmaps it when it is
freed, so each request faults in and zeroes its pages again: 25 to 50 ms for a 38 MB buffer on the 2-core machine
the benchmarks run on, against 1.5 to 2 ms to fill one that stays mapped. `keep_freed_memory` sets, once per
process, one arena, no `mmap` below 1 GiB and no trimming below 2 GiB, so freed buffers are reused as they are
(what PyTorch's serving guides get from jemalloc or tcmalloc). The cost: a process keeps the memory of its peak,
which the byte budget (`BODY_MEMORY_MB`) bounds. Nothing is changed where the user set one of glibc's own
`MALLOC_*` variables (theirs win), off glibc, or with EDENSPLIT_KEEP_FREED_MEMORY=0.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("edensplit")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, 1 << 30), (M_TRIM_THRESHOLD, 1 << 31))
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above (once; later calls return the first's answer); whether it was tuned."""
    global _done
    if _done is None:
        _done = _tune()
    return _done


def _tune() -> bool:
    if os.environ.get("EDENSPLIT_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if any(name.startswith(("MALLOC_", "GLIBC_TUNABLES")) for name in os.environ):
        return False  # the user tuned malloc themselves
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    tuned = all(mallopt(param, value) == 1 for param, value in SETTINGS)
    log.debug("malloc tuned to keep freed memory: %s", tuned)
    return tuned

"""Processes by identity: a pid with its start time, so that a pid the system reused names another process (for
what a process leaves behind to be swept when it is gone: metrics directories, shared-memory segments)."""

from __future__ import annotations

import os


def process_identity(pid: int) -> str | None:
    """`PID-STARTTIME` of a running process (from /proc/PID/stat), so that a reused pid names another process;
    `PID` alone where there is no /proc; None if no such process runs."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f"{pid}-{f.read().rsplit(')', 1)[1].split()[19]}"  # field 22: counted after the command's ')'
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None  # Linux, and the process is gone
    except (OSError, IndexError):
        pass
    return str(pid) if running(pid) else None


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process, but running
    return True


def maker_of(pid: int) -> str:
    """`<pid>-<start time>` (`<pid>-0` where there is no /proc), for names that say which process made them."""
    identity = process_identity(pid) or str(pid)
    return identity if "-" in identity else f"{identity}-0"


def runs(maker: str) -> bool:
    """Whether the process a `maker_of` string names still runs (not another that got its pid since)."""
    return maker_of(int(maker.split("-")[0])) == maker

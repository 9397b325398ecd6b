"""Prometheus metrics of one app (its own registry, so several apps can share a process): requests by route,
method and status, latency, bytes on the wire, in flight; per-stage latency, errors by code, batch sizes,
the model queue, and the edge's session cache.

Under gunicorn (`gunicorn cloud_server.main:app -w 4 -k uvicorn.workers.UvicornWorker`) every worker is a
process of its own; a scrape of /metrics lands on one of them, and must still count all of them. So each
worker of a gunicorn master writes its metrics to files in a directory they share (prometheus_client's
multiprocess mode), derived from the master's pid and start time: nothing to set beyond the model's own
variables. `PROMETHEUS_MULTIPROC_DIR`, when set, names that directory instead (and turns the mode on outside
gunicorn too, e.g. `uvicorn --workers N`; an empty directory, cleaned by whoever sets it). A scrape merges
the files: counters and histograms add up over every worker that ever ran (a dead worker's counts stay),
the gauges are set as their values change (multiprocess mode has no `set_function`) and add up over the
live workers only (`livesum`); a dead worker's gauges are dropped at the next scrape
(`mark_process_dead`, for each pid with files that no longer runs: gunicorn's `child_exit` hook would need
a config file the user's command does not name).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from edensplit.version import __version__

log = logging.getLogger("edensplit.server")

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DIR_PREFIX = "edensplit-metrics-"


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


def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def gunicorn_master() -> int | None:
    """The gunicorn master's pid when this process is one of its workers (or the master itself, building the
    app before it forks them: --preload), else None. The master sets SERVER_SOFTWARE=gunicorn/..., which its
    workers (forked, gunicorn's modules already imported) inherit; a program that a worker starts inherits the
    variable, not the modules."""
    if not os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn") or "gunicorn.arbiter" not in sys.modules:
        return None
    parent = os.getppid()
    own = _command_line(os.getpid())
    if own and "gunicorn" not in _command_line(parent):
        return os.getpid()  # the master (--preload): its parent is a shell, a supervisor...
    return parent


def _remove_stale_dirs(root: str) -> None:
    """Remove the directories of gunicorn masters that no longer run (the counts of a server that stopped)."""
    for path in glob.glob(os.path.join(root, DIR_PREFIX + "*")):
        match = re.fullmatch(re.escape(DIR_PREFIX) + r"(\d+)(-\d+)?", os.path.basename(path))
        if match and process_identity(int(match.group(1))) != match.group(1) + (match.group(2) or ""):
            shutil.rmtree(path, ignore_errors=True)


def multiprocess_dir() -> str | None:
    """Where this process's metrics go when it is one of several processes serving one app:
    PROMETHEUS_MULTIPROC_DIR if set, else (a gunicorn worker) a directory of the master's; None when alone."""
    if os.environ.get(MULTIPROC_ENV):
        return os.environ[MULTIPROC_ENV]
    master = gunicorn_master()
    identity = process_identity(master) if master is not None else None
    if identity is None:
        return None
    root = tempfile.gettempdir()
    _remove_stale_dirs(root)
    path = os.path.join(root, DIR_PREFIX + identity)
    os.makedirs(path, mode=0o700, exist_ok=True)
    if os.stat(path).st_uid != os.getuid():
        log.warning("%s belongs to another user: this worker's /metrics shows this worker only", path)
        return None
    return path


def enable_multiprocess() -> str | None:
    """Turn prometheus_client's multiprocess mode on for the metrics created from now on, if this process is
    one of several (see multiprocess_dir); returns the directory, or None (one process, nothing changes).
    prometheus_client picks its value class when it is imported, from PROMETHEUS_MULTIPROC_DIR, and reads the
    variable again when each metric's file is opened: both are set here, before the first metric exists."""
    path = multiprocess_dir()
    if path is None:
        return None
    os.makedirs(path, exist_ok=True)
    os.environ[MULTIPROC_ENV] = path
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()
    return path


def forget_dead_processes(path: str) -> None:
    """mark_process_dead for every process with files in `path` that no longer runs: its live gauges go."""
    pids = {int(m.group(1)) for f in os.listdir(path) if (m := re.fullmatch(r"gauge_live\w+?_(\d+)\.db", f))}
    for pid in pids - {os.getpid()}:
        if not running(pid):
            with contextlib.suppress(FileNotFoundError):  # a scrape on another worker got there first
                mark_process_dead(pid, path)


class Metrics:
    """The app's metrics; the names and labels of the first five are an interface (dashboards use them).
    Gauges are set as their values change and add up over a gunicorn master's live workers."""

    def __init__(self, stage: str):
        self.multiprocess_dir = enable_multiprocess()
        self.registry = r = CollectorRegistry()
        self.requests = Counter("edensplit_requests", "requests answered, by client (the keys file's names, or "
                                "default, or anonymous: as many values as the file has clients)",
                                ("route", "method", "status", "client_name"), registry=r)
        self.latency = Histogram("edensplit_request_seconds", "request wall time", ("route",), buckets=BUCKETS,
                                 registry=r)
        self.bytes_in = Counter("edensplit_request_bytes", "request body bytes", ("route",), registry=r)
        self.bytes_out = Counter("edensplit_response_bytes", "response body bytes", ("route",), registry=r)
        self.inflight = Gauge("edensplit_inflight", "requests admitted and not yet answered", registry=r,
                              multiprocess_mode="livesum")
        self.stage_seconds = Histogram("edensplit_stage_seconds", "seconds per step of a request: read (the body "
                                       "or message read whole), idempotency (digest, replay lookup), "
                                       "admission_wait (to a model place), decode, prepare, model, encode",
                                       ("route", "stage"), buckets=BUCKETS, registry=r)
        self.errors = Counter("edensplit_errors", "requests refused or failed, by error code", ("route", "code"),
                              registry=r)
        self.batch_size = Histogram("edensplit_batch_size", "requests per model call", buckets=(1, 2, 4, 8, 16, 32, 64),
                                    registry=r)
        self.queue_depth = Gauge("edensplit_queue_depth", "model calls waiting for the model thread", registry=r,
                                 multiprocess_mode="livesum")
        self.sessions = Gauge("edensplit_session_cache_sessions", "edge: video sessions held (each worker holds "
                              "its own)", registry=r, multiprocess_mode="livesum")
        self.session_lookups = Counter("edensplit_session_lookups", "edge: a pair's previous frame looked up in "
                                       "the session cache", ("result",), registry=r)
        self.context_lookups = Counter("edensplit_context_lookups", "edge: a session frame's temporal keys/values "
                                       "found kept (hit) or computed (miss)", ("result",), registry=r)
        self.workers_ready = Gauge("edensplit_workers_ready", "processes serving this app with their model loaded "
                                   "and warmed up (gunicorn workers; 1 for a single process)", registry=r,
                                   multiprocess_mode="livesum")
        self.info = Gauge("edensplit_info", "server identity", ("stage", "version"), registry=r,
                          multiprocess_mode="livemax")
        self.info.labels(stage, __version__).set(1)

    def observe_steps(self, route: str, steps: Mapping[str, float]) -> None:
        """A request's seconds per step (edensplit_stage_seconds: the metric's name and label predate the word)."""
        for name, seconds in steps.items():
            self.stage_seconds.labels(route, name).observe(seconds)

    def render(self) -> bytes:
        """The text a scrape gets: this registry, or every worker's files merged."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        forget_dead_processes(self.multiprocess_dir)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess_dir)
        return generate_latest(merged)

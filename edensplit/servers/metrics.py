"""Prometheus metrics of one app (its own registry, so several apps can share a process): requests by route,
method and status, latency, bytes on the wire, in flight; per-stage latency, errors by code, batch sizes,
the model queue, and the edge's session cache.

Under gunicorn (`gunicorn cloud_server.main:app -w 4 -k uvicorn.workers.UvicornWorker`) every worker is a
process of its own; a scrape of /metrics lands on one of them, and must still count all of them. So each
worker of a gunicorn master writes its metrics to files in a directory they share (prometheus_client's
multiprocess mode), named after the master's pid and start time, inside this user's `<tmp>/edensplit-<uid>/`
(mode 0700, checked with lstat to be a directory of this user's that nobody else can open: the user's command
runs no project code in the master, so the workers make it): nothing to set beyond the model's own variables.
`PROMETHEUS_MULTIPROC_DIR`, when set, names that directory instead (and turns the mode on outside gunicorn too,
e.g. `uvicorn --workers N`; an empty directory, cleaned by whoever sets it; it must be this user's and not
writable by others). A directory that fails a check is one warning and this process's metrics alone, never a
worker that cannot start. A scrape merges the files: counters and histograms add up over every worker that
ever ran (a dead worker's counts stay), the gauges are set as their values change (multiprocess mode has no
`set_function`) and add up over the live workers only (`livesum`); a dead worker's gauges are dropped at the
next scrape (`mark_process_dead`, for each pid with files that no longer runs: gunicorn's `child_exit` hook
would need a config file the user's command does not name).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from edensplit.processes import process_identity, running
from edensplit.version import __version__

log = logging.getLogger("edensplit.server")

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DIR_PREFIX = "edensplit-metrics-"


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


class UnusableDir(Exception):
    """A metrics directory that another user could read, replace or fill: never used."""


def _check_private(path: str, forbidden: int) -> None:
    """UnusableDir unless `path` itself (not a link's target) is a directory of this process's user with none of
    the permission bits `forbidden` (0o077: other users have no access; 0o022: they cannot write)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnusableDir(f"{path} is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        raise UnusableDir(f"{path} is not a directory")
    uid = getattr(os, "getuid", lambda: st.st_uid)()
    if st.st_uid != uid:
        raise UnusableDir(f"{path} belongs to uid {st.st_uid}, not to this process's user (uid {uid})")
    if st.st_mode & forbidden:
        raise UnusableDir(f"{path} is open to other users (mode {stat.S_IMODE(st.st_mode):o})")


def _private_dir(path: str) -> str:
    """`path`, made mode 0700 if it does not exist, checked (lstat) to be this user's alone."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    _check_private(path, 0o077)
    return path


def user_root() -> str:
    """The parent of this user's per-master directories: `<tmp>/edensplit-<uid>`, mode 0700."""
    return os.path.join(tempfile.gettempdir(), f"edensplit-{getattr(os, 'getuid', lambda: 0)()}")


def master_dir(identity: str) -> str:
    """The directory of the gunicorn master `PID-STARTTIME` (see process_identity)."""
    return os.path.join(user_root(), DIR_PREFIX + identity)


def _remove_stale_dirs(root: str) -> None:
    """Remove the directories of gunicorn masters that no longer run (the counts of a server that stopped)."""
    for path in glob.glob(os.path.join(root, DIR_PREFIX + "*")):
        match = re.fullmatch(re.escape(DIR_PREFIX) + r"(\d+)(-\d+)?", os.path.basename(path))
        if match and process_identity(int(match.group(1))) != match.group(1) + (match.group(2) or ""):
            shutil.rmtree(path, ignore_errors=True)


def multiprocess_dir() -> str | None:
    """Where this process's metrics go when it is one of several processes serving one app:
    PROMETHEUS_MULTIPROC_DIR if set, else (a gunicorn worker) its master's directory in this user's
    `<tmp>/edensplit-<uid>/` (whose dead masters' directories it removes); None when alone, and None (this
    process's metrics only, one warning) when the directory could be another user's: a link, not a directory,
    someone else's, or writable by others."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        try:
            os.makedirs(given, mode=0o700, exist_ok=True)
            _check_private(given, 0o022)
        except (OSError, UnusableDir) as exc:
            return _unusable(f"{MULTIPROC_ENV}: {exc}")
        return given
    master = gunicorn_master()
    identity = process_identity(master) if master is not None else None
    if identity is None:
        return None
    try:
        root = _private_dir(user_root())
        _remove_stale_dirs(root)
        return _private_dir(master_dir(identity))
    except (OSError, UnusableDir) as exc:
        return _unusable(str(exc))


def _unusable(reason: str) -> None:
    log.warning("metrics directory not used (%s): this process's /metrics shows this process only", reason)
    return None


def enable_multiprocess() -> str | None:
    """Turn prometheus_client's multiprocess mode on for the metrics created from now on, if this process is
    one of several (see multiprocess_dir); returns the directory, or None (one process, or a directory refused:
    per-process metrics). prometheus_client picks its value class when it is imported, from
    PROMETHEUS_MULTIPROC_DIR, and reads the variable again when each metric's file is opened: both are set here,
    before the first metric exists (and the class put back when a given directory is refused)."""
    path = multiprocess_dir()
    if path is None:
        if os.environ.get(MULTIPROC_ENV) and getattr(values.ValueClass, "_multiprocess", False):
            values.ValueClass = values.MutexValue
        return None
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
        self.shm_bytes = Gauge("edensplit_shm_bytes", "shared memory (ALLOW_SHM): bytes in segments this server made "
                               "that are not yet taken (held against BODY_MEMORY_MB)", registry=r,
                               multiprocess_mode="livesum")
        self.shm_segments = Gauge("edensplit_shm_segments", "shared memory: segments this server made that are not "
                                  "yet taken (at most SHM_MAX_SEGMENTS)", registry=r, multiprocess_mode="livesum")
        self.shm_spare_bytes = Gauge("edensplit_shm_spare_bytes", "shared memory: bytes in spare segments this "
                                     "server allocated ahead for its next answers (a few per answer length, none "
                                     "when idle for SHM_TTL_S)", registry=r, multiprocess_mode="livesum")
        self.shm_bytes_moved = Counter("edensplit_shm_bytes_moved", "shared memory: data bytes put in segments "
                                       "(made), read from them (taken) and removed unread (expired)", ("event",),
                                       registry=r)
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
        WorkersCollector(merged, path=self.multiprocess_dir)
        return generate_latest(merged)


MIN_FILE_BYTES = 8  # a metrics file's header: the bytes in use, written once the file has its size


class WorkersCollector(MultiProcessCollector):
    """Every worker's metrics files merged, less those a booting worker has created and not yet laid out (empty:
    prometheus_client's reader fails on them, and a scrape at that moment was a 500): they count from the next
    scrape."""

    def collect(self):  # type: ignore[no-untyped-def]
        return self.merge([f for f in glob.glob(os.path.join(self._path, "*.db")) if laid_out(f)], accumulate=True)


def laid_out(path: str) -> bool:
    """Whether a metrics file is past its creation (a file gone meanwhile: no)."""
    try:
        return os.path.getsize(path) >= MIN_FILE_BYTES
    except FileNotFoundError:
        return False

"""`edensplit serve-ray` as a subprocess on a free loopback port, for the tests and benchmarks/ray_replicas.py;
and what Ray's own per-replica logs say about which replica served what."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

from edensplit.errors import EdenError, ErrorCode
from edensplit.servers.launch import free_port

READY_LINE = re.compile(r"serving the cloud at (\S+) and the edge at (\S+) .*?; Ray session (\S+)\)")
ACCESS_LINE = re.compile(r" -- (POST|GET|DELETE|WS|CALL) (\S+) (\S+)")


class RayServeProcess:
    """`python -m edensplit serve-ray --port P --config CONFIG` with extra environment; waits for its ready line.
    Stopped with SIGINT (it takes its local Ray cluster down), killed after `stop_timeout`."""

    def __init__(self, config: str | Path | None, *, env: dict[str, str] | None = None, log_path: Path,
                 port: int | None = None, stop_timeout: float = 60.0):
        self.config, self.log_path = config, log_path
        self.port = port or free_port()
        self.env = {**os.environ, **(env or {})}
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.cloud_url = self.edge_url = self.session_dir = ""
        self.ready_s = 0.0

    def start(self, timeout: float = 240.0) -> RayServeProcess:
        cmd = [sys.executable, "-m", "edensplit", "serve-ray", "--port", str(self.port)]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = started + timeout
        while time.monotonic() < deadline:
            match = READY_LINE.search(self.log_path.read_text(errors="replace"))
            if match:
                self.cloud_url, self.edge_url, self.session_dir = match.groups()
                self.ready_s = time.monotonic() - started
                return self
            if self.proc.poll() is not None:
                raise EdenError(f"serve-ray exited with code {self.proc.returncode}; see {self.log_path}",
                                code=ErrorCode.NOT_READY)
            time.sleep(0.5)  # polling a process that is starting: no event to wait on
        self.stop()
        raise EdenError(f"serve-ray not ready within {timeout:.0f} s; see {self.log_path}", code=ErrorCode.NOT_READY)

    def stop(self) -> float:
        """SIGINT, wait for it to take its cluster down; kill it if it does not. Returns the seconds it took."""
        started = time.monotonic()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return time.monotonic() - started

    def __enter__(self) -> RayServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def ready(self, api_key: str | None = None) -> bool:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        with httpx.Client(timeout=5.0, headers=headers) as http:
            return all(http.get(f"{url}/health/ready").status_code == 200 for url in (self.cloud_url, self.edge_url))


def replica_requests(session_dir: str | Path, app: str, deployment: str) -> dict[str, Counter[str]]:
    """Per replica of `app`'s `deployment`, its requests as Ray's replica log counts them: 'POST /edge/api/...'
    (the route pattern), 'WS /edge', 'CALL ...' (a handle call, named by the route of the request that made it)."""
    out: dict[str, Counter[str]] = {}
    for path in sorted(Path(session_dir, "logs", "serve").glob(f"replica_{app}_{deployment}_*.log")):
        replica = path.stem.rsplit("_", 1)[1]
        out[replica] = Counter(f"{m.group(1)} {m.group(2)}" for line in path.read_text(errors="replace").splitlines()
                               if (m := ACCESS_LINE.search(line)))
    return out


def replica_pids(app: str, deployment: str) -> dict[str, int]:
    """The replica id -> pid of `app`'s `deployment` running on this machine (each replica's process holds its
    own log file open; Linux /proc)."""
    pids = {}
    name = re.compile(rf"replica_{re.escape(app)}_{re.escape(deployment)}_([a-z0-9]+)\.log$")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "cmdline").read_bytes().startswith(b"ray::ServeReplica"):
                continue
            for fd in (entry / "fd").iterdir():
                match = name.search(os.readlink(fd))
                if match:
                    pids[match.group(1)] = int(entry.name)
                    break
        except OSError:
            continue
    return pids

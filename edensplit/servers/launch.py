"""Start a server as a real uvicorn subprocess on a free loopback port and stop it: for the demo,
the benchmark and the end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from edensplit.errors import EdenError, ErrorCode


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m uvicorn APP --host 127.0.0.1 --port P` with extra environment; waits for /health/ready."""

    def __init__(self, app: str, *, env: dict[str, str] | None = None, host: str = "127.0.0.1",
                 port: int | None = None, log_path: Path | None = None, cwd: str | Path | None = None,
                 extra_args: tuple[str, ...] = ()):
        self.app, self.host, self.port = app, host, port or free_port(host)
        self.env = {**os.environ, **(env or {})}
        self.log_path, self.cwd, self.extra_args = log_path, cwd, extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 120.0) -> ServerProcess:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        cmd = [sys.executable, "-m", "uvicorn", self.app, "--host", self.host, "--port", str(self.port),
               *self.extra_args]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd)
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise EdenError(f"{self.app} exited with code {self.proc.returncode} while starting"
                                    + (f"; see {self.log_path}" if self.log_path else ""),
                                    code=ErrorCode.NOT_READY)
                try:
                    ready = http.get(f"{self.url}/health/ready")
                except httpx.TransportError:
                    ready = None
                if ready is not None and ready.status_code == 200:
                    return self
                if ready is not None and ready.json().get("status") == "error":
                    self.stop()
                    raise EdenError(f"{self.app} cannot serve: {ready.json().get('error')}", code=ErrorCode.NOT_READY)
                time.sleep(0.1)  # polling a process that is starting: no event to wait on
        self.stop()
        raise EdenError(f"{self.app} did not become ready within {timeout:.0f} s", code=ErrorCode.NOT_READY)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

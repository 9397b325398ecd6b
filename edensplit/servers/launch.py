"""Start a server as a real uvicorn subprocess (or gunicorn with uvicorn workers) on a free loopback port and
stop it: for the demo, the benchmarks and the end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
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

    process_group = False  # started in a session of its own (a master and its workers), killed as a group

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

    def command(self) -> list[str]:
        return [sys.executable, "-m", "uvicorn", self.app, "--host", self.host, "--port", str(self.port),
                *self.extra_args]

    def all_ready(self, http: httpx.Client) -> bool:
        """Every process serving the port is ready (one, here: /health/ready said 200)."""
        return True

    def start(self, timeout: float = 120.0) -> ServerProcess:
        return self.launch().wait_ready(timeout)

    def launch(self) -> ServerProcess:
        """Start the process without waiting for it (`wait_ready` waits): several start at once this way."""
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.command(), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.cwd, start_new_session=self.process_group)
        return self

    def wait_ready(self, timeout: float = 120.0) -> ServerProcess:
        """Until /health/ready says 200 (EdenError NOT_READY if the process exits, cannot serve or takes longer
        than `timeout`; it is stopped then)."""
        assert self.proc is not None, "launch() first"
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
                if ready is not None and ready.status_code == 200 and self.all_ready(http):
                    return self
                if ready is not None and ready.json().get("status") == "error":
                    self.stop()
                    raise EdenError(f"{self.app} cannot serve: {self.why()}", code=ErrorCode.NOT_READY)
                time.sleep(0.1)  # polling a process that is starting: no event to wait on
        self.stop()
        raise EdenError(f"{self.app} did not become ready within {timeout:.0f} s", code=ErrorCode.NOT_READY)

    def why(self) -> str:
        """What the server logged about its model not loading (/health does not say: no paths or errors there)."""
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path else []
        said = [line for line in lines if "cannot load its model" in line]
        return said[-1].split("cannot load its model", 1)[1].removeprefix(" (not ready; see /health): ") if said \
            else "its model failed to load (see its log)"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a graceful stop), then SIGKILL after `timeout` (to its process group, if it has its own)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                if self.process_group:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its workers, nothing else
                else:
                    self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def gunicorn_command() -> list[str]:
    """`gunicorn`: the script installed beside this interpreter, else `python -m gunicorn`."""
    script = Path(sys.executable).with_name("gunicorn")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "gunicorn"]


class GunicornProcess(ServerProcess):
    """`gunicorn APP -w N -k uvicorn.workers.UvicornWorker --bind HOST:PORT`, the production command of
    docs/scaling.md; ready once /metrics (every worker's) counts N workers ready: each loads its own model."""

    process_group = True

    def __init__(self, app: str, *, workers: int = 2, **kwargs: object):
        super().__init__(app, **kwargs)  # type: ignore[arg-type]
        self.workers = workers

    def command(self) -> list[str]:
        return [*gunicorn_command(), self.app, "-w", str(self.workers), "-k", "uvicorn.workers.UvicornWorker",
                "--bind", f"{self.host}:{self.port}", *self.extra_args]

    def all_ready(self, http: httpx.Client) -> bool:
        text = http.get(f"{self.url}/metrics").text
        ready = re.search(r"^edensplit_workers_ready (\S+)$", text, re.MULTILINE)
        return ready is not None and float(ready.group(1)) >= self.workers

    def stop(self, timeout: float = 30.0) -> None:
        """The master stops its workers gracefully (gunicorn's graceful timeout is 30 s)."""
        super().stop(timeout)

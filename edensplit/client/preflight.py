"""Before a job sends a frame: each server it needs answers `/health/ready`, and the cloud and the edge run the
same model.

- A server that never answered (a refused connection, an unreachable host, a timeout on every probe for
  `PROBE_S`, 1.0 s in all, the servers probed side by side: the job ends within 1.5 s) is a set-up mistake: one
  line naming the URL, what was tried, and the commands that start it (`edensplit cloud` / `edensplit edge`, or
  `--local`).
- A server that answers 503 while it loads (or warms up) its model is waited for, with a progress line every
  `SAY_EVERY_S`, up to the start-up budget (`--startup_wait`, EDENSPLIT_STARTUP_WAIT, default 300 s); one whose
  model failed to load is said at once. Another 503 (overloaded: a full Ray Serve queue), a 502 or a 504 is a
  server that is there: the job starts, and its retries ride the overload out. So is one that takes the
  connection but does not answer within the probe (a read timeout, not a connect timeout): it is there, busy.
- Once a server has answered, its going away is an outage the job rides out (`--retry_for`), not this.
- Flow A: the cloud's and the edge's `model_args` and weights digest (from `/health/ready`) must agree: a cloud
  encoding for another model than the edge samples with is refused before the first frame (MODEL_MISMATCH).
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from edensplit.client.transport import ClientConfig, connection_failure
from edensplit.errors import EdenError, ErrorCode
from edensplit.net import is_loopback

PROBE_S = 1.0  # how long a server that never answered is probed before the job gives up
PROBE_EVERY_S = 0.2  # between probes refused at once
SAY_EVERY_S = 5.0  # a progress line this often while a server loads its model
DEFAULT_STARTUP_WAIT_S = 300.0
COMMANDS = {"cloud": "edensplit cloud", "edge": "edensplit edge"}
DEFAULT_PORTS = {"cloud": 8000, "edge": 8001}
BUSY = (429, 502, 503, 504)  # answers of a server that is there (overloaded, or a gateway's), not a health document


def http_base(url: str) -> str:
    """A server's base URL as HTTP: ws:// -> http://, wss:// -> https:// (the WebSocket transport takes both)."""
    base = url.rstrip("/")
    return "http" + base[2:] if base.startswith(("ws://", "wss://")) else base


def start_command(role: str, url: str) -> str:
    """The command that starts the `role` server `url` names (its port; every interface when not loopback)."""
    parts = urllib.parse.urlsplit(http_base(url))
    try:
        port = parts.port
    except ValueError:
        port = None
    command = COMMANDS[role]
    if parts.hostname and not is_loopback(parts.hostname):
        command += " --host 0.0.0.0"
    if port is not None and port != DEFAULT_PORTS[role]:
        command += f" --port {port}"
    return command


@dataclass
class Probe:
    """What probing one server found: its `/health/ready` document (answered), or how it never answered."""

    role: str
    url: str
    health: dict[str, Any] | None = None
    tries: int = 0
    seconds: float = 0.0
    failure: str = ""  # the last probe's failure, when it never answered
    waited: float = 0.0  # seconds spent waiting for it to load its model
    notes: list[str] = field(default_factory=list)

    @property
    def answered(self) -> bool:
        return self.health is not None

    def never_answered(self) -> str:
        """This server's part of the one line."""
        return (f"{self.url} (the {self.role} server: {self.tries} tries of GET /health/ready over "
                f"{self.seconds:.1f} s, {self.failure})")


def _cause(exc: httpx.TransportError) -> str:
    """A connection failure in a few words."""
    if isinstance(exc, httpx.TimeoutException):
        return "no answer (timed out)"
    text = str(exc) or type(exc).__name__
    if "refused" in text.lower():
        return "connection refused"
    return text if len(text) < 120 else text[:117] + "..."


def probe_ready(role: str, url: str, config: ClientConfig, *, probe_s: float = PROBE_S,
                startup_wait: float = DEFAULT_STARTUP_WAIT_S, say: Callable[[str], None] | None = None,
                http: httpx.Client | None = None) -> Probe:
    """Probe `url`/health/ready until it answers 200 (its document), for `probe_s` while it never answers, and up
    to `startup_wait` while it answers 503 (loading). EdenError for a server whose model failed to load, one that
    is still loading after `startup_wait`, or an answer that is not a server's (a 404, a 401 ...)."""
    base = http_base(url)
    found = Probe(role, base)
    client = http or httpx.Client(verify=config.tls or True, headers=config.headers())
    started = time.monotonic()
    loading_since: float | None = None
    last_said = started
    try:
        while True:
            elapsed = time.monotonic() - started
            if loading_since is None:
                left = probe_s - elapsed
                if left <= 0:
                    found.seconds = elapsed
                    return found
                timeout = min(left, probe_s)
            else:
                timeout = min(max(config.timeout, 1.0), 10.0)
            found.tries += 1
            try:
                response = client.get(f"{base}/health/ready", timeout=timeout)
            except httpx.TransportError as exc:
                failure = connection_failure(f"the {role} server at {base}", exc)
                if not failure.retryable:  # TLS: no retry can fix it
                    raise EdenError(failure.message, code=ErrorCode.UPSTREAM_ERROR) from None
                if loading_since is not None or isinstance(exc, httpx.ReadTimeout):
                    # It answered before (an outage now), or it took the connection and is too busy to answer in
                    # time (a Ray Serve proxy with its replicas saturated): a server is there, the job's budget
                    # decides.
                    found.seconds = time.monotonic() - started
                    found.health = {}
                    return found
                found.failure = _cause(exc)
                pause = PROBE_EVERY_S - (time.monotonic() - started - elapsed)
                if pause > 0:
                    time.sleep(min(pause, max(probe_s - (time.monotonic() - started), 0)))
                continue
            document = _json(response)
            if response.status_code == 200:
                found.health, found.seconds = document, time.monotonic() - started
                if loading_since is not None:
                    found.waited = time.monotonic() - loading_since
                return found
            if response.status_code == 503 and document.get("stage"):
                if document.get("status") == "error":
                    raise EdenError(f"the {role} server at {base} could not load its model (its log says why): "
                                    "fix it and restart it", code=ErrorCode.NOT_READY)
                now = time.monotonic()
                if loading_since is None:
                    loading_since = now
                    _say(say, f"the {role} server at {base} is {_state(document)}; waiting up to "
                              f"{startup_wait:.0f} s for it (--startup_wait)")
                    last_said = now
                elif now - loading_since > startup_wait:
                    raise EdenError(f"the {role} server at {base} is still {_state(document)} after "
                                    f"{now - loading_since:.0f} s (--startup_wait {startup_wait:g})",
                                    code=ErrorCode.NOT_READY)
                elif now - last_said >= SAY_EVERY_S:
                    _say(say, f"waiting for the {role} server at {base}: {_state(document)}, "
                              f"{now - loading_since:.0f} s")
                    last_said = now
                time.sleep(min(0.25, max(startup_wait - (now - loading_since), 0.01)))
                continue
            if response.status_code in BUSY:  # a server (or a proxy before it) too busy to say more: it is there,
                found.health, found.seconds = {}, time.monotonic() - started  # and the job's retries ride it out
                return found
            error = document.get("error") if isinstance(document.get("error"), dict) else {}
            said = f": {error.get('message')}" if error.get("message") else ""
            raise EdenError(f"{base}/health/ready answered HTTP {response.status_code}{said}; not an edensplit "
                            f"{role} server's answer: is {base} the {role} server's URL?",
                            code=ErrorCode.UPSTREAM_ERROR)
    finally:
        if http is None:
            client.close()


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        document = response.json()
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def _state(health: Mapping[str, Any]) -> str:
    return {"loading": "loading its model", "draining": "shutting down"}.get(str(health.get("status")),
                                                                          "not ready yet")


def _say(say: Callable[[str], None] | None, message: str) -> None:
    if say is not None:
        say(message)


def never_answered(probes: list[Probe]) -> EdenError:
    """The one line for servers that never answered: the URLs, what was tried, the commands that start them."""
    missing = [p for p in probes if not p.answered]
    commands = " and ".join(f"`{start_command(p.role, p.url)}`" for p in missing)
    what = " nor at ".join(p.never_answered() for p in missing)
    them = "them" if len(missing) > 1 else "it"
    return EdenError(f"nothing answers at {what}: start {them} with {commands}, or run in this process with --local",
                     code=ErrorCode.UPSTREAM_ERROR)


def check_ready(servers: Mapping[str, str], config: ClientConfig, *, probe_s: float = PROBE_S,
                startup_wait: float = DEFAULT_STARTUP_WAIT_S, say: Callable[[str], None] | None = None
                ) -> dict[str, Probe]:
    """Probe every server (role -> URL) side by side; EdenError (one line) unless every one answered ready. With a
    cloud and an edge, their models must be the same (`check_same_model`)."""
    lock = threading.Lock()

    def said(message: str) -> None:
        with lock:
            _say(say, message)

    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        futures = {role: pool.submit(probe_ready, role, url, config, probe_s=probe_s, startup_wait=startup_wait,
                                     say=said) for role, url in servers.items()}
        probes = {role: future.result() for role, future in futures.items()}
    if not all(p.answered for p in probes.values()):
        raise never_answered(list(probes.values()))
    if "cloud" in probes and "edge" in probes:
        check_same_model(probes["cloud"], probes["edge"])
    return probes


MODEL_FIELDS = ("model_args", "weights_digest", "stand_in")


def model_differences(cloud: Mapping[str, Any], edge: Mapping[str, Any]) -> list[str]:
    """How the two servers' models differ, from their health documents (a field either does not give is not
    compared)."""
    found = []
    args_c, args_e = cloud.get("model_args"), edge.get("model_args")
    if isinstance(args_c, dict) and isinstance(args_e, dict) and args_c != args_e:
        keys = sorted(k for k in set(args_c) | set(args_e) if args_c.get(k) != args_e.get(k))
        found.append("model arguments " + ", ".join(f"{k} {args_c.get(k)!r} vs {args_e.get(k)!r}" for k in keys))
    digest_c, digest_e = cloud.get("weights_digest"), edge.get("weights_digest")
    if digest_c and digest_e and digest_c != digest_e:
        found.append(f"weights {cloud.get('weights')} (digest {digest_c}) vs {edge.get('weights')} "
                     f"(digest {digest_e})")
    return found


def check_same_model(cloud: Probe, edge: Probe) -> None:
    """MODEL_MISMATCH (one line) when the cloud and the edge run different models."""
    if not cloud.health or not edge.health:
        return
    differences = model_differences(cloud.health, edge.health)
    if differences:
        raise EdenError(f"the cloud server at {cloud.url} and the edge server at {edge.url} run different models "
                        f"({'; '.join(differences)}): start both with the same MODEL_PATH (and EDEN_CONFIG); the "
                        "job was not started", code=ErrorCode.MODEL_MISMATCH)

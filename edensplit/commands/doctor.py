"""`edensplit doctor`: check the whole split before a job, and say what is wrong in a table, a verdict a line.

The checks: each server reachable and ready, versions, the two servers' models (model arguments and weights
digest, from /health: a mismatch is an error, as at a job's start), the wire dtypes and transports each takes,
the round trip of one `encode_frame` at `--size` and of its blob through the edge (time and bytes per hop), TLS
and key in use, shared memory, and the GPUs each server sees. Exit status 0 when all is well, 1 when a check
fails, 2 for a usage error; `--json` prints the same as one JSON document.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from edensplit.client.preflight import PROBE_S, Probe, http_base, model_differences, probe_ready, start_command
from edensplit.client.transport import ClientConfig
from edensplit.commands.options import CLIENT_FIELDS, overrides
from edensplit.errors import EdenError, ErrorCode
from edensplit.net import is_loopback, on_this_host
from edensplit.settings import ClientSettings
from edensplit.version import __version__

OK, WARN, FAIL, INFO, SKIP = "ok", "warn", "FAIL", "info", "skipped"
DEFAULT_SIZE = "256x448"


@dataclass
class Check:
    """One line of the table: what was checked, its verdict, what was found (and figures, for --json)."""

    check: str
    verdict: str
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)


def parse_size(text: str) -> tuple[int, int]:
    """HxW -> (H, W); EdenError (a usage error) for anything else."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise EdenError(f"--size must be HxW, e.g. {DEFAULT_SIZE}; got {text!r}",
                        code=ErrorCode.INVALID_PARAMETER) from None
    if not (16 <= height <= 8192 and 16 <= width <= 8192):
        raise EdenError(f"--size {text}: each side must be 16 to 8192 pixels", code=ErrorCode.INVALID_PARAMETER)
    return height, width


class Doctor:
    """The checks, run in order against the servers of `settings` (only the edge for flow B)."""

    def __init__(self, settings: ClientSettings, *, size: tuple[int, int], flow: str = "a", wire_dtype: str = "",
                 probe_s: float = PROBE_S):
        from edensplit.wire import codecs

        self.settings, self.size, self.flow, self.probe_s = settings, size, flow, probe_s
        self.wire_dtype = wire_dtype or codecs.DEFAULT
        self.config = ClientConfig.of(timeout=settings.edensplit_timeout, api_key=settings.api_key(),
                                      ca_cert=settings.edensplit_ca_cert,
                                      allow_insecure_key=settings.edensplit_allow_insecure_key)
        urls = {"cloud": settings.cloud_server_url, "edge": settings.edge_server_url}
        self.urls = {role: http_base(url) for role, url in urls.items() if flow == "a" or role == "edge"}
        self.health: dict[str, dict[str, Any]] = {}
        self.http = httpx.Client(verify=self.config.tls or True, headers=self.config.headers(),
                                 timeout=settings.edensplit_timeout)

    def run(self) -> list[Check]:
        """Every check, each caught: one that cannot run says why on its line."""
        checks: list[Check] = []
        steps: list[Callable[[], list[Check]]] = [self.reachable, self.versions, self.models, self.wire,
                                                  self.round_trip, self.security, self.shared_memory, self.gpus]
        try:
            for step in steps:
                try:
                    checks.extend(step())
                except EdenError as exc:
                    checks.append(Check(step.__name__.replace("_", " "), FAIL, exc.message))
        finally:
            self.http.close()
        return checks

    def ready_ones(self) -> list[str]:
        return [role for role in self.urls if self.health.get(role)]

    def skipped(self, name: str) -> list[Check]:
        missing = " and ".join(f"the {role}" for role in self.urls if role not in self.ready_ones())
        return [Check(name, SKIP, f"{missing} not ready")]

    # -- the checks ----------------------------------------------------------------------------------

    def reachable(self) -> list[Check]:
        for role, url in self.urls.items():
            ClientConfig.of(api_key=self.config.api_key, name=f"{role} server",
                            allow_insecure_key=self.config.allow_insecure_key).check_url(url)

        def probe(role: str) -> Probe | EdenError:
            try:
                return probe_ready(role, self.urls[role], self.config, probe_s=self.probe_s, startup_wait=0)
            except EdenError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=len(self.urls)) as pool:  # side by side, as before a job
            probes = dict(zip(self.urls, pool.map(probe, self.urls), strict=True))
        checks = []
        for role, url in self.urls.items():
            found = probes[role]
            if isinstance(found, EdenError):
                checks.append(Check(f"{role} server", FAIL, found.message))
                continue
            if not found.answered:
                checks.append(Check(f"{role} server", FAIL, f"nothing answers at {found.never_answered()}: start it "
                                    f"with `{start_command(role, url)}`"))
                continue
            health = found.health or {}
            self.health[role] = health
            checks.append(Check(f"{role} server", OK, f"ready at {url} ({found.seconds * 1000:.0f} ms): "
                                f"{health.get('weights')} on {health.get('device')} {health.get('dtype')}, up "
                                f"{float(health.get('uptime_s') or 0):.0f} s",
                                {"url": url, "probe_s": round(found.seconds, 4), "health": health}))
        return checks

    def versions(self) -> list[Check]:
        found = {role: str(self.health[role].get("version")) for role in self.ready_ones()}
        if not found:
            return self.skipped("versions")
        text = ", ".join(f"{role} {version}" for role, version in found.items()) + f", client {__version__}"
        if len(set(found.values())) > 1:
            return [Check("versions", FAIL, f"the servers differ: {text}: run the same edensplit on both", found)]
        verdict = WARN if __version__ not in found.values() else OK
        return [Check("versions", verdict, text, {**found, "client": __version__})]

    def models(self) -> list[Check]:
        if len(self.urls) < 2:
            return [Check("model", INFO, "flow B: the edge has the cloud encode; only the edge is checked here")]
        if len(self.ready_ones()) < 2:
            return self.skipped("model")
        cloud, edge = self.health["cloud"], self.health["edge"]
        figures = {role: {k: h.get(k) for k in ("weights", "weights_digest", "model_args")}
                   for role, h in self.health.items()}
        differences = model_differences(cloud, edge)
        if differences:
            return [Check("model", FAIL, f"the cloud and the edge run different models: {'; '.join(differences)}: "
                          "start both with the same MODEL_PATH (and EDEN_CONFIG); jobs refuse to start", figures)]
        return [Check("model", OK, f"the same on both: {cloud.get('weights')}, digest {cloud.get('weights_digest')}, "
                      f"hidden_dim {(cloud.get('model_args') or {}).get('hidden_dim')}", figures)]

    def wire(self) -> list[Check]:
        if not self.ready_ones():
            return self.skipped("wire")
        from edensplit.client.services import Cloud, Edge
        from edensplit.client.transport import ClientConfig as Config
        from edensplit.client.ws import WsTransport

        dtypes = self.cloud_dtypes() if "cloud" in self.ready_ones() else []
        transports: dict[str, list[str]] = {}
        failures = []
        for role in self.ready_ones():
            path = Cloud.WS_PATH if role == "cloud" else Edge.WS_PATH
            ws = WsTransport(self.urls[role], Config.of(timeout=5.0, retries=0, api_key=self.config.api_key,
                                                        ca_cert=self.config.ca_cert, name=f"{role} server",
                                                        allow_insecure_key=self.config.allow_insecure_key),
                             path=path)
            transports[role] = ["HTTP"]
            try:
                ws.health()
                transports[role].append("WebSocket")
            except EdenError as exc:
                failures.append(f"{role} WebSocket: {exc.message}")
            finally:
                ws.close()
        text = "; ".join(f"{role}: {', '.join(kinds)}" for role, kinds in transports.items())
        if dtypes:
            text += f"; the cloud encodes {', '.join(dtypes)} (this client asks {self.wire_dtype})"
        verdict = OK
        if failures:
            verdict, text = FAIL, f"{text}; {'; '.join(failures)}"
        elif dtypes and self.wire_dtype not in dtypes:
            verdict, text = FAIL, f"{text}: the cloud does not offer {self.wire_dtype}"
        return [Check("wire and transports", verdict, text, {"transports": transports, "wire_dtypes": dtypes})]

    def cloud_dtypes(self) -> list[str]:
        """The wire dtypes the cloud offers: its OpenAPI document's `wire_dtype` parameter."""
        try:
            document = self.http.get(f"{self.urls['cloud']}/openapi.json").json()
        except (httpx.HTTPError, ValueError):
            return []
        for item in (document.get("paths") or {}).values():
            for operation in item.values():
                for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                    if parameter.get("name") == "wire_dtype":
                        return list(parameter.get("schema", {}).get("enum", []))
        return []

    def round_trip(self) -> list[Check]:
        if len(self.ready_ones()) < len(self.urls):
            return self.skipped("round trip")
        import numpy as np

        from edensplit.client.flows import open_backend
        from edensplit.client.progress import Meter, metered

        height, width = self.size
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(2)]
        backend: Any = open_backend(cloud_url=self.settings.cloud_server_url, edge_url=self.settings.edge_server_url,
                                    flow=self.flow, timeout=self.settings.edensplit_timeout, retries=2, retry_for=5.0,
                                    wire_dtype=self.wire_dtype, api_key=self.config.api_key,
                                    ca_cert=self.config.ca_cert, allow_insecure_key=self.config.allow_insecure_key)
        meter = Meter()
        try:
            with metered(backend, meter):  # a frame-once session of one pair: each frame encoded and sent once
                started = time.perf_counter()
                backend.begin_video(0)
                middle = backend.interpolate_pair(frames[0], frames[1], 0, 0)
                wall = time.perf_counter() - started
        finally:
            backend.close()
        if middle is None or middle.shape != (height, width, 3):
            return [Check("round trip", FAIL, f"the edge answered {None if middle is None else middle.shape}, not a "
                          f"{height}x{width} frame")]
        hops, figures = [], {}
        for role in ("cloud", "edge"):
            counts = meter.get(role)
            if not counts["requests"]:
                continue
            per = counts["requests"]
            figures[role] = {"requests": int(per), "ms_per_request": round(1000 * counts["wall"] / per, 2),
                             "server_ms_per_request": round(1000 * counts["processing"] / per, 2),
                             "bytes_sent": int(counts["sent"]), "bytes_received": int(counts["received"])}
            what = "encode_frame" if role == "cloud" else "session_frame"
            hops.append(f"{role} {what} x{int(per)}: {1000 * counts['wall'] / per:.0f} ms each "
                        f"({1000 * counts['processing'] / per:.0f} ms on the server), "
                        f"{_mb(counts['sent'])} sent, {_mb(counts['received'])} back")
        figures["wall_s"] = round(wall, 4)
        return [Check("round trip", OK, f"two {height}x{width} frames to a middle frame in {wall:.2f} s: "
                      + "; ".join(hops), figures)]

    def security(self) -> list[Check]:
        checks = []
        for role in self.ready_ones():
            url = self.urls[role]
            scheme = urllib.parse.urlsplit(url).scheme
            host = urllib.parse.urlsplit(url).hostname or ""
            tls = "TLS" + (f" (CA bundle {self.config.ca_cert})" if self.config.ca_cert else " (system CAs)") \
                if scheme == "https" else "no TLS"
            try:
                bare = httpx.get(f"{url}/metrics", timeout=self.settings.edensplit_timeout,
                                 verify=self.config.tls or True).status_code
                keyed = self.http.get(f"{url}/metrics").status_code
            except httpx.HTTPError as exc:
                checks.append(Check(f"{role} TLS and key", FAIL, f"{url}/metrics: {exc}"))
                continue
            needs = bare == 401
            if needs and keyed == 401:
                verdict, text = FAIL, "requires a key and refuses ours" if self.config.api_key else \
                    "requires a key: set EDENSPLIT_API_KEY (or --api_key)"
            elif needs:
                verdict, text = OK, "requires a key; ours is accepted"
            elif self.config.api_key:
                verdict, text = WARN, "requires no key (ours is sent for nothing)"
            else:
                verdict, text = OK, "requires no key"
            if not needs and not is_loopback(host):
                verdict, text = WARN, text + ", off this machine: anyone who reaches it can use it"
            if scheme != "https" and not is_loopback(host) and verdict == OK:
                verdict = WARN
            checks.append(Check(f"{role} TLS and key", verdict, f"{tls}; {text}",
                                {"tls": scheme == "https", "key_required": needs}))
        return checks or self.skipped("TLS and key")

    def shared_memory(self) -> list[Check]:
        if not self.ready_ones():
            return self.skipped("shared memory")
        from edensplit.wire.shm import available

        local = {role: on_this_host(url) for role, url in self.urls.items()}
        offered = {role: bool(self.health[role].get("shared_memory")) for role in self.ready_ones()}
        here = available()
        figures = {"servers": offered, "on_this_machine": local, "client_can": here}
        if all(offered.values()) and all(local.values()) and here:
            return [Check("shared memory", OK, "available: the servers run here with ALLOW_SHM=1 (--shm to use it)",
                          figures)]
        why = []
        if not here:
            why.append("no POSIX shared memory here (/dev/shm)")
        off = [role for role, on in offered.items() if not on]
        if off:
            why.append(f"{' and '.join(off)} without ALLOW_SHM=1")
        away = [role for role, on in local.items() if not on]
        if away:
            why.append(f"{' and '.join(away)} not on this machine")
        return [Check("shared memory", INFO, "not available (bodies go as bytes): " + "; ".join(why), figures)]

    def gpus(self) -> list[Check]:
        if not self.ready_ones():
            return self.skipped("GPUs")
        parts, figures = [], {}
        for role in self.ready_ones():
            health = self.health[role]
            count = health.get("gpus")
            figures[role] = {"device": health.get("device"), "gpus": count}
            seen = "unknown" if count is None else f"{count} GPU{'s' if count != 1 else ''}"
            parts.append(f"{role} runs on {health.get('device')} ({seen} seen)")
        return [Check("GPUs", INFO, "; ".join(parts), figures)]


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e4 else f"{int(n)} B"


def table(checks: list[Check]) -> str:
    """The checks as a plain-text table: check, verdict, detail."""
    width = max(len(c.check) for c in checks)
    lines = [f"{'check'.ljust(width)}  verdict  detail"]
    lines += [f"{c.check.ljust(width)}  {c.verdict.ljust(7)}  {c.detail}" for c in checks]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the checks; print the table (or JSON); 0 when all is well, 1 when a check failed."""
    size = parse_size(args.size)
    settings = ClientSettings(**overrides(args, CLIENT_FIELDS))
    checks = Doctor(settings, size=size, flow=args.flow, wire_dtype=args.wire_dtype).run()
    failed = [c for c in checks if c.verdict == FAIL]
    if args.json:
        print(json.dumps({"ok": not failed, "version": __version__, "checks": [asdict(c) for c in checks]},
                         indent=2, default=str))
    else:
        print(table(checks))
        print(f"edensplit doctor: {len(failed)} of {len(checks)} checks failed" if failed
              else f"edensplit doctor: all well ({len(checks)} checks)")
    return 1 if failed else 0

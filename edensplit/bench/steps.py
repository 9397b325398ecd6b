"""Where a row's time goes, step by step (`edensplit bench --mode overhead`): the client's own clocks (a step timer on
each service: pack, exchange, unpack) and the servers' (edensplit_request_seconds and edensplit_stage_seconds by
route, read from /metrics before and after, with the bytes they counted), combined into one split whose steps add
up to the client's request time."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from edensplit.bench.systems import route_bytes_of
from edensplit.client.backends import Backend
from edensplit.client.requests import Call
from edensplit.client.services import StepTimer

# The split's steps, in the order a request meets them: (key, column title). The server's are its
# edensplit_stage_seconds steps; "send/receive" and "server other" are what is left of the client's and the
# server's request times once their steps are counted.
STEPS = (
    ("pack", "client pack"),
    ("send_receive", "send/receive"),
    ("read", "server read + budget"),
    ("idempotency", "idempotency"),
    ("admission_wait", "admission wait"),
    ("decode", "server parse"),
    ("prepare", "session store (prepare)"),
    ("model", "model (stand-in)"),
    ("encode", "server render"),
    ("server_other", "server other"),
    ("unpack", "client unpack"),
)
SERVER_STEPS = ("read", "idempotency", "admission_wait", "decode", "prepare", "model", "encode")
REQUEST = "request"  # edensplit_request_seconds: a request's whole time at the server


class ClientSteps:
    """The client's seconds per service role ("cloud", "edge") and step (pack, exchange, unpack) and its request
    counts, summed over requests; thread-safe (pairs in flight)."""

    def __init__(self) -> None:
        self.seconds: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def timer(self, role: str) -> StepTimer:
        def record(call: Call, pack: float, exchange: float, unpack: float) -> None:
            with self._lock:
                self.seconds.update({(role, "pack"): pack, (role, "exchange"): exchange, (role, "unpack"): unpack,
                                     (role, "requests"): 1})
        return record

    def take(self) -> Counter[tuple[str, str]]:
        """What was counted since the last take."""
        with self._lock:
            taken, self.seconds = self.seconds, Counter()
        return taken

    @contextlib.contextmanager
    def installed(self, backend: Backend) -> Iterator[ClientSteps]:
        """Time every request of the backend's services while the block runs."""
        services = backend.services
        for role, service in services.items():
            service.timer = self.timer(role)
        try:
            yield self
        finally:
            for service in services.values():
                service.timer = None


@dataclass(frozen=True)
class ServerCounts:
    """What a server has counted so far, from one read of its /metrics: body bytes by route (`route_bytes`), seconds
    by route and step (edensplit_stage_seconds' steps, and REQUEST for edensplit_request_seconds: the requests'
    whole time), and the data bytes it put in shared-memory segments ("made") and read from them ("taken")."""

    routes: dict[tuple[str, str], float]
    seconds: Counter[tuple[str, str]]
    shm: Counter[str]


def server_counts(url: str, http: httpx.Client) -> ServerCounts:
    """A server's counts now (one GET /metrics through `http`, a kept-alive client)."""
    text = http.get(f"{url}/metrics").text
    seconds: Counter[tuple[str, str]] = Counter()
    shm: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "edensplit_shm_bytes_moved":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    shm[sample.labels.get("event", "")] += sample.value
        if family.name not in ("edensplit_stage_seconds", "edensplit_request_seconds"):
            continue
        for sample in family.samples:
            route = sample.labels.get("route", "")
            if sample.name.endswith("_sum") and route.startswith(("/api/", "/ws/")):
                seconds[(route, sample.labels.get("stage", REQUEST))] += sample.value
    return ServerCounts(route_bytes_of(text), seconds, shm)


def by_step(seconds: Mapping[tuple[str, str], float]) -> Counter[str]:
    """Route-by-step seconds summed over the routes."""
    out: Counter[str] = Counter()
    for (_, step), value in seconds.items():
        out[step] += value
    return out


def split(client: Mapping[tuple[str, str], float], servers: Mapping[str, Mapping[tuple[str, str], float]],
          flow: str) -> dict[str, float]:
    """The time split, in seconds summed over the requests (STEPS' keys), from the client's counts and each
    server's ({"cloud": ..., "edge": ...}: differences of `server_seconds`). The client's request time (pack +
    exchange + unpack) is split whole: send/receive is its exchange time outside the servers' request time, server
    other the servers' request time outside their steps. In flow B the edge calls the cloud inside its prepare
    step: the cloud's request time is taken out of that step and counted in the cloud's own steps, so prepare
    keeps the session store and the edge's side of the call (its transfer and packing)."""
    cloud, edge = by_step(servers.get("cloud", {})), by_step(servers.get("edge", {}))
    out = {"pack": sum(v for (_, step), v in client.items() if step == "pack"),
           "unpack": sum(v for (_, step), v in client.items() if step == "unpack")}
    exchange = sum(v for (_, step), v in client.items() if step == "exchange")
    steps = {step: cloud[step] + edge[step] for step in SERVER_STEPS}
    if flow.startswith("b"):  # the client meets the edge only; the cloud's time is inside the edge's prepare
        steps["prepare"] -= cloud[REQUEST]
        out["send_receive"] = exchange - edge[REQUEST]
    else:
        out["send_receive"] = exchange - cloud[REQUEST] - edge[REQUEST]
    out["server_other"] = cloud[REQUEST] + edge[REQUEST] - sum(cloud[s] + edge[s] for s in SERVER_STEPS)
    out.update(steps)
    return {key: out[key] for key, _ in STEPS}


def largest(steps: Mapping[str, Any]) -> str:
    """The title of the largest step."""
    titles = dict(STEPS)
    return titles[max(steps, key=lambda k: steps[k])]

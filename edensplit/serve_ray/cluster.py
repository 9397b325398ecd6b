"""Start (or join) a Ray cluster and serve the cloud and edge apps on one Ray Serve HTTP proxy.

A local cluster is started on loopback only: Ray's local mode (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, set
before Ray is imported) binds GCS, raylet, object manager and workers to 127.0.0.1, the dashboard is off and
usage statistics are not sent. With `ray.address` (or `--address`) the command joins a cluster that
`ray start` made instead, whose nodes may put the two deployments apart (docs/scaling.md, Ray Serve).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from edensplit.errors import EdenError, ErrorCode
from edensplit.model.hub import RELEASED
from edensplit.model.sources import is_local_file
from edensplit.net import is_loopback
from edensplit.serve_ray.config import RayServeConfig, ServiceConfig
from edensplit.serve_ray.proxy import CALLBACK, CALLBACK_ENV, LIMIT_ENV, WHERE
from edensplit.servers.auth import Access
from edensplit.settings import ServerSettings

log = logging.getLogger("edensplit.server")
ROUTER = "edensplit.serve_ray.router.SessionAffinityRouter"
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray's single-machine mode: every address is 127.0.0.1
             "RAY_USAGE_STATS_ENABLED": "0",           # nothing leaves the machine
             CALLBACK_ENV: CALLBACK}                   # the proxy's middlewares: keys and sizes checked before a
                                                       # body is read, a lost replica's request 503 (proxy.py)


@dataclass
class Served:
    """What `deploy` started: the URLs and how to stop it."""

    cloud_url: str
    edge_url: str
    session_dir: str | None
    started_ray: bool
    seconds: float
    stop: Callable[[], None] = field(repr=False)


def deployment_options(service: ServiceConfig, affinity: bool) -> dict[str, Any]:
    options = service.options()
    if affinity and "request_router_config" not in options:
        options["request_router_config"] = {"request_router_class": ROUTER}
    return options


def check_model(settings: dict[str, Any], stage: str) -> None:
    """Fail before Ray starts on what this machine can tell: a checkpoint file that is missing here (replicas on
    other nodes read their own path; a name, `tiny` or `hf://`, each replica resolves), or no checkpoint and random
    weights not allowed."""
    s = ServerSettings(**settings)
    if s.model_path is None and not s.eden_random_weights:
        raise EdenError(f"{stage}: no MODEL_PATH (--model_path: a checkpoint file, {RELEASED}, or tiny to try "
                        "things out) and random weights not allowed (--random_weights or EDEN_RANDOM_WEIGHTS=1, for "
                        "tests only)", code=ErrorCode.INVALID_PARAMETER)
    if s.model_path is not None and is_local_file(s.model_path) and not os.path.exists(s.model_path):
        log.warning("%s: %s is not on this machine; each replica's node must have it", stage, s.model_path)


def cluster_environment(config: RayServeConfig, base_settings: dict[str, Any], cloud: dict[str, Any],
                        edge: dict[str, Any]) -> tuple[bool, dict[str, str]]:
    """Whether the servers need a key, and what a local cluster's processes (the proxy, the replicas) must find
    in their environment, which they inherit from this one: the keys (EDENSPLIT_API_KEY, from the environment
    or --api_key; the keys file's path), the proxy's middlewares and its body limit (the larger service's
    MAX_REQUEST_MB). The keys are checked here (an empty key, an unreadable file), before Ray starts."""
    keys = ServerSettings(**base_settings)
    Access(keys.edensplit_api_key, keys.edensplit_api_keys_file)
    env = {LIMIT_ENV: f"{max(ServerSettings(**cloud).max_request_mb, ServerSettings(**edge).max_request_mb):g}"}
    if keys.edensplit_api_key is not None:
        env["EDENSPLIT_API_KEY"] = keys.edensplit_api_key
    if keys.edensplit_api_keys_file is not None:
        env["EDENSPLIT_API_KEYS_FILE"] = str(keys.edensplit_api_keys_file.resolve())
    if config.ray.address is None:
        return keys.keyed, {**LOCAL_ENV, **env}
    if keys.edensplit_api_key != os.environ.get("EDENSPLIT_API_KEY"):
        raise EdenError("--api_key reaches only a cluster this command starts: for one made with `ray start`, export "
                        "EDENSPLIT_API_KEY (or EDENSPLIT_API_KEYS_FILE) where `ray start` runs on every node, and "
                        "here (docs/scaling.md)", code=ErrorCode.INVALID_PARAMETER)
    return keys.keyed, {}


def proxy_checks_keys(url: str) -> bool | None:
    """Whether the proxy at `url` (an app's prefix) refuses a request without a key itself (proxy.Gate, which
    marks its answer), rather than reading its body and leaving the replica to; None if it cannot be asked."""
    try:
        answer = httpx.post(url + "/api/v1/encode", content=b"", timeout=5.0)
        return answer.status_code == 401 and answer.json()["error"]["details"].get("refused_by") == \
            WHERE["refused_by"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
        return None


def deploy(config: RayServeConfig, base_settings: dict[str, Any]) -> Served:
    """Start or join Ray, start Serve's proxy at config.http, deploy the Encoder (app `cloud`) and then the
    Interpolator (app `edge`, whose flow B calls the Encoder's handle); returns once both are healthy."""
    started = time.perf_counter()
    cloud_settings = config.service_settings(config.cloud, base_settings)
    edge_settings = config.service_settings(config.edge, base_settings)
    check_model(cloud_settings, "cloud")
    check_model(edge_settings, "edge")
    keyed, environment = cluster_environment(config, base_settings, cloud_settings, edge_settings)
    if not is_loopback(config.http.host) and not keyed:
        log.warning("serve-ray: the proxy binds %s with no API key: anyone who can reach this address can use it "
                    "(set EDENSPLIT_API_KEY or --api_key, and TLS in front)", config.http.host)
    local = config.ray.address is None
    os.environ.update(environment)
    if not local:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        from ray import serve as ray_serve
    except ImportError:
        raise EdenError("Ray Serve is not installed: pip install -e '.[ray]'", code=ErrorCode.NOT_READY) from None
    from edensplit.serve_ray.deployments import CLOUD_APP, EDGE_APP, Encoder, Interpolator

    if ray.is_initialized():
        started_ray = False
    elif local:
        ray.init(num_cpus=config.ray.num_cpus, num_gpus=config.ray.num_gpus, include_dashboard=False,
                 namespace=config.ray.namespace, configure_logging=False, log_to_driver=False)
        started_ray = True
    else:
        ray.init(address=config.ray.address, namespace=config.ray.namespace, log_to_driver=False)
        started_ray = False
    session_dir = _session_dir(ray)

    def stop() -> None:
        """This command's cluster goes whole; in a cluster it joined, only its two apps."""
        try:
            if started_ray:
                ray_serve.shutdown()
            else:
                for app in (EDGE_APP, CLOUD_APP):
                    ray_serve.delete(app)
        finally:
            if started_ray:
                ray.shutdown()

    short = resource_shortfall(config, ray.cluster_resources())
    if short:
        message = ("the deployments' first replicas need " + ", ".join(short) + ": lower num_replicas or "
                   "ray_actor_options (num_cpus, num_gpus; fractions share a device) in the config")
        if started_ray:
            ray.shutdown()
            raise EdenError(message, code=ErrorCode.INVALID_PARAMETER)
        log.warning("%s, or let the cluster's autoscaler add nodes (deploying waits until they come)", message)
    try:
        http = config.http
        ray_serve.start(proxy_location=http.proxy_location,
                        http_options={"host": http.host, "port": http.port,
                                      "request_timeout_s": http.request_timeout_s})
        ray_serve.run(Encoder.options(**deployment_options(config.cloud, False))
                      .bind(cloud_settings, config.cloud.batching, keyed=keyed),
                      name=CLOUD_APP, route_prefix=config.cloud.route_prefix)
        ray_serve.run(Interpolator.options(**deployment_options(config.edge, config.session_affinity))
                      .bind(edge_settings, config.edge.batching, keyed=keyed),
                      name=EDGE_APP, route_prefix=config.edge.route_prefix)
    except BaseException as exc:
        stop()
        if isinstance(exc, (RuntimeError, ValueError, TypeError)):
            logs = f" (replica logs: {session_dir}/logs/serve)" if session_dir else ""
            raise EdenError(f"Ray Serve could not deploy: {str(exc).strip().splitlines()[-1][:500]}{logs}",
                            code=ErrorCode.NOT_READY) from None
        raise
    base = f"http://{'127.0.0.1' if http.host in ('0.0.0.0', '::') else http.host}:{http.port}"
    if keyed and not proxy_checks_keys(base + config.cloud.route_prefix):
        log.warning("serve-ray: the Ray proxy does not check keys itself (its node's `ray start` lacked %s=%s or the "
                    "keys): it reads each request's body before a replica refuses one without a key "
                    "(docs/scaling.md)", CALLBACK_ENV, CALLBACK)
    return Served(base + config.cloud.route_prefix, base + config.edge.route_prefix, session_dir, started_ray,
                  time.perf_counter() - started, stop)


def resource_shortfall(config: RayServeConfig, total: dict[str, float]) -> list[str]:
    """What the two deployments' first replicas ask for (CPU, GPU, custom resources) beyond the cluster's
    `total`: Ray would leave them pending and the deployment would wait forever."""
    need: dict[str, float] = {}
    for service in (config.cloud, config.edge):
        options = service.options()
        auto = options.get("autoscaling_config") or {}
        replicas = options.get("num_replicas")
        if not isinstance(replicas, int):
            replicas = auto.get("initial_replicas") or auto.get("min_replicas") or 1
        actor = options["ray_actor_options"]
        asked = {"CPU": actor.get("num_cpus", 1), "GPU": actor.get("num_gpus", 0), **actor.get("resources", {})}
        for name, amount in asked.items():
            need[name] = need.get(name, 0.0) + replicas * float(amount or 0)
    return [f"{amount:g} {name} (the cluster has {total.get(name, 0):g})" for name, amount in need.items()
            if amount > total.get(name, 0) + 1e-9]


def _session_dir(ray: Any) -> str | None:
    """This machine's directory of the Ray session (its logs), from Ray's public runtime context."""
    try:
        context = ray.get_runtime_context()
        path = os.path.join(context.get_temp_dir(), context.get_session_name())
    except (AttributeError, AssertionError, RuntimeError):
        return None
    return path if os.path.isdir(path) else None


def serve_until_stopped(served: Served, say: Callable[[str], None] = print) -> int:
    """Wait for SIGINT or SIGTERM, then delete the two apps (and stop the cluster this command started)."""
    stopping = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: stopping.set())
    try:
        stopping.wait()
    finally:
        say("stopping: deleting the cloud and edge apps" + (" and the local Ray cluster" if served.started_ray
                                                            else ""))
        try:
            served.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return 0

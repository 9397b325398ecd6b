"""The `edensplit serve-ray` configuration file (see configs/ray.yaml): where the Ray cluster is, the one HTTP
proxy's address, and per service (cloud encoder, edge interpolator) its route prefix, its Ray Serve deployment
options (replicas or autoscaling, `ray_actor_options` with `num_gpus`/`num_cpus`/custom resources, queue
bounds) and its server settings (the variables `edensplit cloud`/`edge` read: MAX_BATCH, MAX_INFLIGHT, ...).
Reading it needs no Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edensplit.errors import EdenError, ErrorCode
from edensplit.settings import ServerSettings

# Ray Serve deployment options this file may set (passed to `Deployment.options` as they are).
DEPLOYMENT_OPTIONS = frozenset({
    "num_replicas", "autoscaling_config", "ray_actor_options", "placement_group_bundles",
    "placement_group_strategy", "max_replicas_per_node", "max_ongoing_requests", "max_queued_requests",
    "user_config", "health_check_period_s", "health_check_timeout_s", "graceful_shutdown_wait_loop_s",
    "graceful_shutdown_timeout_s", "request_router_config", "logging_config"})
DEFAULTS = {"num_replicas": 1, "max_ongoing_requests": 16, "max_queued_requests": 64,
            "ray_actor_options": {"num_cpus": 1, "num_gpus": 0}}
# Read by the proxy and the replicas from their own environment, never passed as deployment arguments (which
# Ray keeps in its cluster state, readable by whoever can reach the cluster): not settings of this file.
KEY_SETTINGS = ("edensplit_api_key", "edensplit_api_keys_file", "edensplit_cloud_api_key")
REQUEST_TIMEOUT_S = 360.0  # the servers' REQUEST_TIMEOUT_S (300), a body and Ray's queue: the app's 504 comes first


class ServiceConfig(BaseModel):
    """One service: the cloud's encoder or the edge's interpolator."""

    model_config = ConfigDict(extra="forbid")

    route_prefix: str
    deployment: dict[str, Any] = Field(default_factory=dict, description="Ray Serve deployment options")
    settings: dict[str, Any] = Field(default_factory=dict, description="server variables, e.g. MAX_BATCH: 4")
    batching: Literal["project", "serve"] = Field(
        "project", description="with MAX_BATCH > 1: the project's batcher (batch keys, deadlines) or @serve.batch")

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/") or value == "/" or value.endswith("/"):
            raise ValueError("a route prefix is a path such as /cloud: a leading slash, none at the end")
        return value

    @field_validator("deployment")
    @classmethod
    def _options(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - DEPLOYMENT_OPTIONS)
        if unknown:
            raise ValueError(f"unknown Ray Serve deployment options {unknown}; known: {sorted(DEPLOYMENT_OPTIONS)}")
        return value

    @field_validator("settings")
    @classmethod
    def _settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        named = {str(k).lower(): v for k, v in value.items()}
        unknown = sorted(set(named) - set(ServerSettings.model_fields))
        if unknown:
            raise ValueError(f"unknown server settings {unknown}")
        keys = [k.upper() for k in KEY_SETTINGS if k in named]
        if keys:
            raise ValueError(f"{', '.join(keys)}: set in the environment of `edensplit serve-ray` (and of `ray start` "
                             "on every node of a cluster it joins), not in this file (docs/scaling.md, keys)")
        return named

    def options(self) -> dict[str, Any]:
        """The deployment's options: the defaults, then the file's (autoscaling replaces num_replicas)."""
        merged = {**DEFAULTS, **self.deployment}
        merged["ray_actor_options"] = {**DEFAULTS["ray_actor_options"], **self.deployment.get("ray_actor_options", {})}
        if "autoscaling_config" in self.deployment:
            if self.deployment.get("num_replicas", "auto") != "auto":
                raise ValueError(f"{self.route_prefix}: give num_replicas or autoscaling_config, not both")
            merged.pop("num_replicas")
        return merged


class ClusterConfig(BaseModel):
    """Where Ray runs."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(None, description="join this cluster ('auto': the one `ray start` made on this "
                                "machine; ray://host:10001 for a remote one); none: start a local one on loopback")
    num_cpus: int | None = Field(None, ge=0, description="a local cluster's CPUs (default: this machine's)")
    num_gpus: int | None = Field(None, ge=0, description="a local cluster's GPUs (default: those Ray finds)")
    namespace: str = "edensplit"


class HttpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    proxy_location: Literal["HeadOnly", "EveryNode"] = "HeadOnly"
    request_timeout_s: float = Field(REQUEST_TIMEOUT_S, gt=0, description="the proxy's own end-to-end limit on an "
                                     "HTTP request, seconds (a WebSocket connection has none): a request still "
                                     "unanswered then gets Ray's 408 and is cancelled")


class RayServeConfig(BaseModel):
    """The whole file; every part optional."""

    model_config = ConfigDict(extra="forbid")

    ray: ClusterConfig = Field(default_factory=ClusterConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    settings: dict[str, Any] = Field(default_factory=dict, description="server settings both services share")
    cloud: ServiceConfig = Field(default_factory=lambda: ServiceConfig(route_prefix="/cloud"))
    edge: ServiceConfig = Field(default_factory=lambda: ServiceConfig(route_prefix="/edge"))
    session_affinity: bool = Field(True, description="route an HTTP video session's requests to one interpolator "
                                   "replica (consistent hash of its session id)")

    @model_validator(mode="before")
    @classmethod
    def _default_prefixes(cls, data: Any) -> Any:
        """A `cloud:` or `edge:` section without a route prefix serves under /cloud or /edge."""
        if isinstance(data, dict):
            for name in ("cloud", "edge"):
                if isinstance(data.get(name), dict):
                    data = {**data, name: {"route_prefix": f"/{name}", **data[name]}}
        return data

    @field_validator("settings")
    @classmethod
    def _settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        return ServiceConfig._settings(value)  # type: ignore[operator]

    def service_settings(self, service: ServiceConfig, base: dict[str, Any]) -> dict[str, Any]:
        """What a replica builds its ServerSettings from: `base` (the command's environment and flags), then the
        file's shared settings, then the service's own, less the keys (KEY_SETTINGS: each replica reads them from
        its environment). Checked here, so a mistake fails before Ray starts."""
        merged = {k: v for k, v in {**base, **self.settings, **service.settings}.items() if k not in KEY_SETTINGS}
        try:
            ServerSettings(**merged)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise EdenError(f"{service.route_prefix} settings: {'.'.join(map(str, first['loc']))}: {first['msg']}",
                            code=ErrorCode.INVALID_PARAMETER) from None
        return merged


def load_config(path: str | Path | None) -> RayServeConfig:
    """The file's configuration (the defaults without one); a bad file is one EdenError line."""
    if path is None:
        return RayServeConfig()
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise EdenError(f"cannot read {path}: {exc.strerror or exc}", code=ErrorCode.INVALID_PARAMETER) from None
    except yaml.YAMLError as exc:
        raise EdenError(f"{path} is not valid YAML: {exc}", code=ErrorCode.INVALID_PARAMETER) from None
    try:
        if not isinstance(data, dict):
            raise ValueError("the file must be a mapping (see configs/ray.yaml)")
        config = RayServeConfig(**data)
        for service in (config.cloud, config.edge):
            service.options()
    except (ValidationError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            message = f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
        else:
            message = str(exc)
        raise EdenError(f"{path}: {message}", code=ErrorCode.INVALID_PARAMETER) from None
    return config

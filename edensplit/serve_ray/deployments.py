"""The two Ray Serve deployments: `Encoder` (the cloud app) and `Interpolator` (the edge app).

Each replica loads its stage's model in its constructor and then serves the project's own FastAPI app
(`create_cloud_app` / `create_edge_app` given that model, so the app's lifespan only warms up), through
`@serve.ingress`: every route, the WebSocket ones included, the error envelope, the middleware (request ids,
bodies read before admission, idempotent replays, limits, metrics) are those of `edensplit cloud`/`edge`.

- Route prefixes: Ray Serve's proxy serves an app under its prefix (`/cloud`, `/edge`) and leaves the prefix
  in the ASGI path; `Mounted` takes it out, so each app sees the paths it serves behind uvicorn.
- Flow B inside the cluster: the interpolator's `cloud_encoder` calls the encoder deployment's
  `encode_blob` through a Ray Serve handle, not HTTP; frames go in and the encoding comes back through Ray's
  object transfer, so encodings never leave the cluster. Transient failures (the encoder's queue full, a
  replica lost or starting) are retried for CLOUD_RETRY_FOR_S within the request's deadline, then answered
  as the cloud's code (the client retries OVERLOADED/NOT_READY causes).
- Batching: with MAX_BATCH > 1, the project's batcher (`batching: project`, the default) or Ray Serve's
  `@serve.batch` (`batching: serve`) groups concurrent requests of one replica into one model call; see
  docs/scaling.md for the measurement.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import ray.exceptions
from fastapi import FastAPI
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edensplit.client.retry import RetryPolicy
from edensplit.errors import ConfigError, EdenError, ErrorCode
from edensplit.model.eden import ENCODE, INTERPOLATE
from edensplit.model.loading import load_model_for
from edensplit.servers.cloud.operations import EncodeJob
from edensplit.servers.cloud.service import create_cloud_app
from edensplit.servers.contract import Cancellation
from edensplit.servers.edge.service import CLOUD_RETRY_FOR_S, create_edge_app
from edensplit.servers.runtime import ModelRuntime
from edensplit.servers.service import Endpoint, Service
from edensplit.settings import ServerSettings
from edensplit.wire.blob import BLOB_MEDIA_TYPE, pack_encoding

log = logging.getLogger("edensplit.server")

CLOUD_APP, EDGE_APP = "cloud", "edge"
IN_CLUSTER = "ray:edge"  # the client_name of the edge's calls through a handle (flow B inside the cluster)
ENCODER, INTERPOLATOR = "Encoder", "Interpolator"
CLUSTER_RETRY = RetryPolicy(retry_for=CLOUD_RETRY_FOR_S, max_backoff_s=2.0)  # the client's policy, on Ray's errors
TRANSIENT = (BackPressureError, DeploymentUnavailableError, ray.exceptions.RayActorError,
             ray.exceptions.ActorUnavailableError)


class Mounted:
    """ASGI middleware: under a route prefix, Ray Serve's proxy sets `root_path` to the prefix and leaves it at
    the head of `path`; the app gets its own path (root_path kept, for the OpenAPI docs' links). The proxy adds
    its X-Request-ID to every answer (the same id the app echoes: the client's, else the proxy's, which it puts
    in the request): the app's copy is dropped so the answer carries one. A body sent as a memoryview (the cloud's
    blob, written once into its own buffer) goes to Ray as bytes: Ray pickles every message, and a memoryview
    cannot be pickled."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        root = scope.get("root_path", "")
        path = scope.get("path", "")
        if root and (path == root or path.startswith(root + "/")):
            scope = {**scope, "path": path[len(root):] or "/"}
            raw = scope.get("raw_path")
            if isinstance(raw, bytes) and raw.startswith(root.encode()):
                scope["raw_path"] = raw[len(root):] or b"/"
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_once(message: Message) -> None:
            if message["type"] == "http.response.start":
                del MutableHeaders(scope=message)["x-request-id"]
            elif isinstance(message.get("body"), memoryview):  # a blob's own buffer: Ray pickles every message
                message = {**message, "body": bytes(message["body"])}
            await send(message)

        await self.app(scope, receive, send_once)


class ServeBatcher:
    """The runtime's batcher seam filled by Ray Serve's `@serve.batch`: concurrent jobs of one replica are
    collected (up to `max_batch`, `wait_s`), split by batch key (frame size, options) and run on the model
    thread, one call per key."""

    def __init__(self, run_batch: Callable[..., Sequence[Any]], key: Callable[[Any], Hashable],
                 execute: Callable[..., Any], max_batch: int, wait_s: float, on_batch: Callable[[int], None]):
        self.run_batch, self.key, self.execute, self.on_batch = run_batch, key, execute, on_batch
        self._submit = serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=wait_s)(self._run)

    async def submit(self, job: Any) -> Any:
        result, error = await self._submit(job)
        if error is not None:
            raise error
        return result

    async def _run(self, jobs: list[Any]) -> list[tuple[Any, BaseException | None]]:
        groups: dict[Hashable, list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            groups[self.key(job)].append(i)
        out: list[tuple[Any, BaseException | None]] = [(None, None)] * len(jobs)
        for members in groups.values():
            self.on_batch(len(members))
            try:
                results = list(await self.execute(self.run_batch, [jobs[i] for i in members]))
            except Exception as exc:
                results, error = [None] * len(members), exc
            else:
                error = None
            for i, result in zip(members, results, strict=True):
                out[i] = (result, error)
        return out

    async def close(self) -> None:
        """Nothing to stop: Ray Serve owns the batch queue."""


def use_batching(runtime: ModelRuntime, endpoints: Sequence[Endpoint], batching: str) -> None:
    """`batching: serve`: a ServeBatcher for each batcher the endpoints declare (when MAX_BATCH > 1)."""
    if batching != "serve" or runtime.max_batch <= 1:
        return
    for endpoint in endpoints:
        if endpoint.batcher is not None and endpoint.batcher not in runtime.batchers:
            operation = endpoint.operation
            runtime.batchers[endpoint.batcher] = ServeBatcher(operation.predict, operation.batch_key, runtime.run,
                                                              runtime.max_batch, runtime.batch_wait_s,
                                                              runtime.on_batch)


def mounted(app: FastAPI) -> FastAPI:
    app.add_middleware(Mounted)
    return app


def replica_settings(settings: dict[str, Any], keyed: bool) -> ServerSettings:
    """A replica's settings: the deployment's arguments, and its own environment for the rest (the keys are
    never arguments: docs/scaling.md). A deployment made with a key refuses to start on a node whose environment
    has none, rather than serve without one."""
    s = ServerSettings(**settings)
    if keyed and not s.keyed:
        raise ConfigError("serve-ray was given a key but this replica's environment has neither EDENSPLIT_API_KEY "
                          "nor EDENSPLIT_API_KEYS_FILE: export it where `ray start` runs on this node")
    return s


def replica_ready(app: FastAPI | None) -> None:
    """Ray Serve's health check: the model is loaded and warmed up, and the replica is not draining."""
    runtime: ModelRuntime | None = app.state.runtime if app is not None else None
    if runtime is None or not runtime.ready or runtime.draining:
        raise RuntimeError(f"not ready: {runtime.health()['status'] if runtime is not None else 'starting'}")


@serve.ingress()
class EncoderServer:
    """The cloud: the encoder's HTTP and WebSocket API, and `encode_blob` for the interpolator's flow B."""

    def __init__(self, settings: dict[str, Any], batching: str = "project", keyed: bool = False):
        self.settings = replica_settings(settings, keyed)
        self.model = load_model_for({ENCODE}, self.settings)
        self.batching = batching
        self.server_app: FastAPI | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        self.server_app = create_cloud_app(self.settings, self.model)
        use_batching(self.server_app.state.runtime, self.server_app.state.service.endpoints, self.batching)
        return mounted(self.server_app)

    def check_health(self) -> None:
        replica_ready(self.server_app)

    async def encode_blob(self, frames: np.ndarray, request_id: str) -> tuple[bytes | None, dict[str, Any] | None]:
        """Flow B inside the cluster: the float32 blob of a pair or one frame ([F, H, W, 3] uint8, already
        checked by the edge), within this replica's admission and batching; (blob, None) or (None, error)."""
        assert self.server_app is not None
        runtime: ModelRuntime = self.server_app.state.runtime
        service: Service = self.server_app.state.service
        frames = np.array(frames, dtype=np.uint8, copy=True)  # Ray hands large arrays over read-only
        names = {1: "encode_frame", 2: "encode"}
        status = "200"
        try:
            if len(frames) not in names:
                raise EdenError(f"{len(frames)} frames: encode_blob takes a pair or one frame",
                                code=ErrorCode.SHAPE_MISMATCH)
            endpoint = service.endpoint(names[len(frames)])
            job = EncodeJob(frames, "float32", request_id, BLOB_MEDIA_TYPE, Cancellation())
            async with runtime.admission():
                result = await runtime.predict(endpoint.operation, job, job.cancellation, endpoint.batcher)
            # result.encoding waits for a GPU's copy to the host: on the thread pool, not the event loop
            return await run_in_threadpool(lambda: pack_encoding(result.encoding, result.difference, job.wire_dtype,
                                                                 extra={"request_id": request_id})), None
        except EdenError as exc:
            status = str(exc.code.status)
            return None, {"code": str(exc.code), "message": exc.message, "details": exc.details}
        finally:
            self.server_app.state.metrics.requests.labels("ray:encode_blob", "HANDLE", status, IN_CLUSTER).inc()


@serve.ingress()
class InterpolatorServer:
    """The edge: the interpolator's HTTP and WebSocket API; flow B encodes through the Encoder deployment."""

    def __init__(self, settings: dict[str, Any], batching: str = "project", encoder_app: str = CLOUD_APP,
                 encoder: str = ENCODER, keyed: bool = False):
        self.settings = replica_settings(settings, keyed)
        self.model = load_model_for({INTERPOLATE}, self.settings)
        self.batching = batching
        self.encoder_app, self.encoder_name = encoder_app, encoder
        self._encoder: Any = None
        self.server_app: FastAPI | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        self.server_app = create_edge_app(self.settings, self.model, cloud_encoder=self.encode_in_cluster)
        use_batching(self.server_app.state.runtime, self.server_app.state.service.endpoints, self.batching)
        return mounted(self.server_app)

    def check_health(self) -> None:
        replica_ready(self.server_app)

    async def encode_in_cluster(self, frames: list[np.ndarray], request_id: str) -> bytes:
        """The Encoder deployment's blob of a pair or one frame; transient failures (Ray's: the queue full, a
        replica lost or starting; the encoder's own OVERLOADED and NOT_READY) retried (full jitter) for
        CLOUD_RETRY_FOR_S, then given as the cloud's error code."""
        if self._encoder is None:
            self._encoder = serve.get_deployment_handle(self.encoder_name, app_name=self.encoder_app)
        budget = CLUSTER_RETRY.budget()
        batch = np.stack(frames)
        while True:
            try:
                blob, error = await self._encoder.encode_blob.remote(batch, request_id)
            except TRANSIENT as exc:
                delay = budget.next_delay()
                if delay is None:
                    code = ErrorCode.OVERLOADED if isinstance(exc, BackPressureError) else ErrorCode.NOT_READY
                    raise EdenError(f"the encoder deployment is unavailable ({type(exc).__name__}; "
                                    f"{budget.summary()})", code=code, details={"retry_after_s": 1}) from None
                await asyncio.sleep(delay)
                continue
            if error is None:
                return blob
            code = ErrorCode(error["code"])
            delay = budget.next_delay() if code in (ErrorCode.OVERLOADED, ErrorCode.NOT_READY) else None
            if delay is None:
                raise EdenError(error["message"], code=code, details=error.get("details"))
            await asyncio.sleep(delay)


Encoder = serve.deployment(name=ENCODER)(EncoderServer)
Interpolator = serve.deployment(name=INTERPOLATOR)(InterpolatorServer)

"""Configuration from environment variables (overridable by CLI flags), shared by servers and client."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import AfterValidator, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edensplit.model import precision

# A compute precision's name, checked against edensplit.model.precision's table when settings are read.
Precision = Annotated[str, AfterValidator(precision.check)]

GPU_BATCH = 8  # the default dynamic batch on a GPU in half precision (set from the benchmark's best batch)


def default_device() -> str:
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def resolve_max_batch(settings: ServerSettings) -> int:
    """MAX_BATCH if set; else batching on a CUDA device in half precision (where a batch is nearly free and
    frames already differ from float32 by rounding), and the exact mode (one request per call) otherwise."""
    if settings.max_batch is not None:
        return settings.max_batch
    return GPU_BATCH if settings.device.startswith("cuda") and settings.eden_dtype != precision.DEFAULT else 1


class ModelSettings(BaseSettings):
    """How a process loads EDEN: MODEL_PATH, EDEN_CONFIG, DEVICE, EDEN_DTYPE, EDEN_RANDOM_WEIGHTS."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    model_path: str | None = Field(None, description="the weights: a checkpoint file (.pt/.pth/.safetensors), an "
                                   "hf://owner/name[@revision]/file URI, or tiny (edensplit.model.sources); "
                                   "MODEL_PATH")
    eden_config: Path | None = Field(None, description="an eval_eden.yaml-style file; EDEN_CONFIG")
    device: str = Field(default_factory=default_device, description="cpu or cuda:N; DEVICE")
    eden_dtype: Precision = Field(precision.DEFAULT, description="compute dtype")
    eden_random_weights: bool = Field(False, description="allow random weights when MODEL_PATH is unset")
    eden_random_seed: int = Field(0, description="seed of the random weights")
    torch_threads: int | None = Field(None, ge=1, description="torch.set_num_threads for the model")
    edensplit_stand_in_model: bool = Field(False, description="benchmarks only: a stand-in with the full-size "
                                           "model's shapes and no network, to time the serving path; refused "
                                           "with MODEL_PATH; EDENSPLIT_STAND_IN_MODEL")
    eden_compile: bool = Field(False, description="torch.compile the model's hot functions (warmed up before the "
                               "server reports ready); EDEN_COMPILE")

    @field_validator("model_path", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        """MODEL_PATH= (empty) is unset; a Path given in code is its string."""
        return None if value == "" else str(value) if isinstance(value, Path) else value


class ServerSettings(ModelSettings):
    """A server's limits on top of its model: request size, work in flight, and (edge) the cloud's URL."""

    max_request_mb: float = Field(512, gt=0, description="largest request body, MiB; MAX_REQUEST_MB")
    max_inflight: int = Field(8, ge=1, description="requests admitted at once; more get 503 OVERLOADED")
    request_timeout_s: float | None = Field(300.0, gt=0, description="a request's deadline unless it sends its "
                                            "own (X-Request-Timeout, WS timeout_s); 504 past it; REQUEST_TIMEOUT_S")
    body_timeout_s: float = Field(60.0, gt=0, description="a request body must arrive within this (408 "
                                  "BODY_TIMEOUT); it is read before a model place is taken; BODY_TIMEOUT_S")
    max_body_reads: int = Field(64, ge=1, description="request bodies read at once; more get 503; MAX_BODY_READS")
    max_inflate_ratio: float = Field(200, gt=1, description="a compressed body may inflate to this many times its "
                                     "size (past 1 MiB; 413 beyond), so a few KB cannot buy seconds of CPU; "
                                     "MAX_INFLATE_RATIO")
    body_memory_mb: float = Field(1024, gt=0, description="MiB held by bodies being read or decompressed and "
                                  "WebSocket messages being reassembled, all together; 503 past it; BODY_MEMORY_MB")
    max_ws_connections: int = Field(64, ge=1, description="WebSocket connections at once; MAX_WS_CONNECTIONS")
    idempotency_cache_mb: float = Field(256, ge=0, description="recent answers kept for retried requests (by "
                                        "request id); 0 turns replays off; IDEMPOTENCY_CACHE_MB")
    edensplit_api_key: str | None = Field(None, description="when set, every route but /health* requires "
                                          "Authorization: Bearer <key> (one client, `default`); EDENSPLIT_API_KEY")
    edensplit_api_keys_file: Path | None = Field(None, description="one client a line, `<name> <key>`: each "
                                                 "request is its client's (read again when it changes, and on "
                                                 "SIGHUP); EDENSPLIT_API_KEYS_FILE")
    edensplit_cloud_api_key: str | None = Field(None, description="edge, flow B: the key it presents to the "
                                                "cloud (default EDENSPLIT_API_KEY); EDENSPLIT_CLOUD_API_KEY")
    edensplit_allow_insecure_key: bool = Field(False, description="edge, flow B: send its key to a cloud at an "
                                               "http:// URL off this machine; EDENSPLIT_ALLOW_INSECURE_KEY")
    allowed_origins: str = Field("", description="WebSocket handshakes from a browser (an Origin header) are "
                                 "refused unless from one of these, comma-separated; ALLOWED_ORIGINS")
    allowed_hosts: str = Field("", description="a server without a key answers requests whose Host is an IP "
                               "address or localhost, and these names, comma-separated; ALLOWED_HOSTS")
    edensplit_shm: bool = Field(False, description="edge, flow B: take the cloud's encodings through shared memory "
                                "when the cloud runs on this machine (with ALLOW_SHM=1); EDENSPLIT_SHM")
    edensplit_ca_cert: Path | None = Field(None, description="edge, flow B: CA bundle for the cloud's TLS "
                                           "certificate; EDENSPLIT_CA_CERT")
    allow_shm: bool = Field(False, description="take and give encodings as shared-memory handles (callers on "
                            "this host, of this user: POSIX shared memory, /dev/shm); ALLOW_SHM")
    shm_ttl_s: float = Field(30.0, gt=0, description="a segment this server made and nobody took is removed after "
                             "this; SHM_TTL_S")
    shm_max_segments: int = Field(64, ge=1, description="segments made and not yet taken, at most (their bytes count "
                                  "against BODY_MEMORY_MB); SHM_MAX_SEGMENTS")
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per log line; "
                                                "LOG_FORMAT")
    warmup: bool = Field(True, description="run one small model pass before reporting ready; WARMUP")
    max_pixels: int = Field(2 * 4096 * 2160, ge=1, description="pixels of all frames of one request (413 past "
                            "it, before decoding); the default holds a pair of 4K frames; MAX_PIXELS")
    cloud_server_url: str = Field("http://localhost:8000", description="the cloud, for the edge's flow B")
    max_batch: int | None = Field(None, ge=1, le=64, description="requests per model call with dynamic batching; "
                                  "default: 1 (the exact mode) except on CUDA in bfloat16/float16, "
                                  "GPU_BATCH; MAX_BATCH")
    batch_wait_ms: float = Field(5.0, ge=0, description="edge: how long a batch waits to fill")
    session_ttl_s: float = Field(300, gt=0, description="idle video sessions are dropped after this")
    max_sessions: int = Field(64, ge=1, description="sessions cached at once (least recently used dropped)")
    context_cache_mb: float = Field(4096, ge=0, description="edge: session frames' temporal keys/values kept for "
                                    "their next pair (computed again when dropped); CONTEXT_CACHE_MB")

    @property
    def keyed(self) -> bool:
        """Whether requests need a key (EDENSPLIT_API_KEY or EDENSPLIT_API_KEYS_FILE)."""
        return self.edensplit_api_key is not None or self.edensplit_api_keys_file is not None

    @property
    def cloud_api_key(self) -> str | None:
        """The key flow B presents to the cloud."""
        return self.edensplit_cloud_api_key or self.edensplit_api_key


class ClientSettings(BaseSettings):
    """Where the servers are, how patiently to talk to them, and how to prove who we are to them."""

    model_config = SettingsConfigDict(extra="ignore")

    cloud_server_url: str = "http://localhost:8000"
    edensplit_api_key: SecretStr | None = Field(None, description="sent as Authorization: Bearer to both servers; "
                                                "EDENSPLIT_API_KEY")
    edge_server_url: str = "http://localhost:8001"
    edensplit_ca_cert: Path | None = Field(None, description="a PEM CA bundle to verify https/wss servers' "
                                           "certificates; EDENSPLIT_CA_CERT")
    edensplit_allow_insecure_key: bool = Field(False, description="send the key to a server at an http:// or "
                                               "ws:// URL off this machine; EDENSPLIT_ALLOW_INSECURE_KEY")
    edensplit_shm: bool = Field(False, description="frames and encodings through shared memory, only handles over "
                                "the sockets, when the servers run on this machine with ALLOW_SHM=1; EDENSPLIT_SHM")
    edensplit_timeout: float = Field(30.0, gt=0, description="seconds per request attempt; EDENSPLIT_TIMEOUT")
    # The same defaults as edensplit.client.retry's DEFAULT_RETRIES / DEFAULT_RETRY_FOR (a test holds them equal;
    # not imported, so reading settings does not import the client).
    edensplit_retries: int = Field(100, ge=0, description="at most this many retries per request; the retry_for "
                                   "budget ends them first by default; EDENSPLIT_RETRIES")
    edensplit_retry_for: float = Field(60.0, ge=0, description="seconds of outage a request rides out (from its "
                                       "first failure) before the job fails; EDENSPLIT_RETRY_FOR")
    edensplit_startup_wait: float = Field(300.0, ge=0, description="seconds a job waits for a server that answers "
                                          "but is still loading its model (503) before it starts; "
                                          "EDENSPLIT_STARTUP_WAIT")

    def api_key(self) -> str | None:
        """The bearer key in clear, for the transports (None when unset or empty)."""
        key = self.edensplit_api_key.get_secret_value() if self.edensplit_api_key is not None else ""
        return key or None


class UiSettings(ClientSettings):
    """`edensplit ui`: the servers it sends jobs to (as the client), who may use the page (as the servers: the key,
    Host and Origin rules), and how much it keeps of the uploads."""

    allowed_hosts: str = Field("", description="without a key, the page answers requests whose Host is an IP address "
                               "or localhost, and these names, comma-separated; ALLOWED_HOSTS")
    allowed_origins: str = Field("", description="other web pages' origins allowed to call the page's API (its own "
                                 "is), comma-separated; ALLOWED_ORIGINS")
    ui_max_upload_mb: float = Field(2048, gt=0, description="largest upload, MiB; UI_MAX_UPLOAD_MB")
    ui_upload_ttl_s: float = Field(3600, gt=0, description="an upload and a job's files are removed once "
                                   "downloaded, or this long after their last use; UI_UPLOAD_TTL_S")
    ui_max_uploads: int = Field(16, ge=1, description="uploads kept at once (all pages); UI_MAX_UPLOADS")

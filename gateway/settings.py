"""Process settings, read once from the environment (GATEWAY_*)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    # The deployments the gateway may call, and the routing policy that chooses between them.
    config: Path = Path("policies/deployments.yaml")
    policy: Path = Path("policies/default.yaml")
    # How often the policy file is checked for changes (seconds; 0 turns reloading off).
    policy_reload_interval: float = 1.0
    # Where the gateway keeps its own state on disk (policy history, recorded decisions).
    state_dir: Path = Path(".gateway")
    # The local sentence embedder (int8 ONNX, built by `make embedder`), for semantic signals.
    embedder_path: Path = Path(".gateway/models/all-minilm-l6-v2-int8.onnx")
    # Bootstrap keys with role admin (comma-separated); more keys come from `gateway keys create`.
    # Without any keys at all the gateway is open on loopback only.
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # Signs dashboard sessions; set the same value on every replica (random per process when unset).
    session_secret: SecretStr | None = None
    # Bootstrap client keys of team `default` (comma-separated); more from `gateway keys create`.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # The spend ledger's database: postgresql://… or sqlite:///path (default: SQLite in state_dir).
    database_url: str | None = None
    # Redis shared by replicas for budgets and rate limits (default: counted in this process only).
    redis_url: str | None = None
    # Prepended to every Redis key, so gateways (or test runs) sharing a Redis keep apart.
    redis_prefix: str = "gw:"
    # An OpenTelemetry collector (OTLP over HTTP, e.g. http://127.0.0.1:4318) for traces and metrics.
    otlp_endpoint: str | None = None
    # Answers the cache keeps (least recently used go first), across all namespaces.
    cache_max_entries: int = 10_000
    max_body_bytes: int = 4 * 1024 * 1024
    # The overall deadline of one request, retries and fallbacks included.
    request_timeout: float = 600.0
    # Batch lines (the Batch API) each replica runs at once, in spare capacity.
    batch_concurrency: Annotated[int, Field(ge=1, le=1024)] = 4
    # How long a replica holds a batch line it claimed without extending it (it extends it every
    # third of this while the line runs): after a crash, its lines run again this much later.
    batch_lease_seconds: Annotated[float, Field(ge=1, le=3600)] = 60.0
    # Lines for a deployment's own Batch API (`batch_api`) wait this long for more to join them in one
    # upstream batch; a submitted upstream batch is looked at this often.
    upstream_batch_flush_seconds: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    upstream_batch_poll_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # Start and supervise the local model server for `managed-local` deployments.
    manage_local_model: bool = True
    local_model_path: Path | None = None
    local_model_threads: int = 2
    local_model_log: Path | None = None
    log_level: str = "info"

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

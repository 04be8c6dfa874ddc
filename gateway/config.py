"""The gateway's deployments, read from YAML and validated strictly.

A deployment is one upstream model behind one provider. Credentials never appear here: a deployment
names the environment variable that holds its key. Routes, rules and the default route are the routing
policy's (`gateway.policy`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# `managed-local`: the chat model server the gateway runs; `local-embedder`: the gateway's own sentence
# embedder (the one the semantic signals and cache use), serving `/v1/embeddings` in process at $0.
ProviderKind = Literal["openai", "anthropic", "litellm", "managed-local", "local-embedder"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(StrictModel):
    connect: Annotated[float, Field(gt=0)] = 5.0
    first_byte: Annotated[float, Field(gt=0)] = 60.0
    total: Annotated[float, Field(gt=0)] = 600.0


class Price(StrictModel):
    """USD per million tokens; overrides litellm's price map for this deployment."""

    input_per_mtok: Annotated[float, Field(ge=0)] = 0.0
    output_per_mtok: Annotated[float, Field(ge=0)] = 0.0
    # What the upstream's own Batch API charges (`batch_api`); litellm's map's batch price when unset.
    batch_input_per_mtok: Annotated[float, Field(ge=0)] | None = None
    batch_output_per_mtok: Annotated[float, Field(ge=0)] | None = None


class Capacity(StrictModel):
    """How many requests the deployment runs at once, and how many may wait for a place
    (`capacity/gate.py`): strict priority by class, with ageing. A managed local model's server runs
    one at a time, so its default is 1."""

    max_concurrency: Annotated[int, Field(ge=1, le=100_000)]
    # Interactive and standard requests that may wait; deferrable ones wait in a room of their own.
    queue: Annotated[int, Field(ge=0, le=100_000)] = 64
    deferred_queue: Annotated[int, Field(ge=0, le=1_000_000)] = 1024
    # A lower class overtakes a fresh request one class above it after waiting this long.
    ageing_seconds: Annotated[float, Field(gt=0)] = 10.0


class Energy(StrictModel):
    """Estimated energy per request (`gateway/energy.py`): watt-hours per 1,000 prompt and completion
    tokens; for a managed local model, the CPU time its server used at `cpu_watts` per busy core."""

    wh_per_1k_input_tokens: Annotated[float, Field(ge=0)] | None = None
    wh_per_1k_output_tokens: Annotated[float, Field(ge=0)] | None = None
    cpu_watts: Annotated[float, Field(gt=0)] | None = None


# The managed local model's server (llama_cpp.server) serves one request at a time.
MANAGED_LOCAL_CAPACITY = Capacity(max_concurrency=1, queue=32)


class Deployment(StrictModel):
    name: str = ""
    provider: ProviderKind
    model: str = ""
    api_base: str | None = None
    api_key_env: str | None = None
    # Azure OpenAI's classic endpoints take the key in an `api-key` header and need an api-version.
    auth_header: Literal["authorization", "api-key"] = "authorization"
    api_version: str | None = None
    timeouts: Timeouts = Timeouts()
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    price: Price | None = None
    # Ask OpenAI-compatible upstreams for usage on streams (dropped again if the client did not ask).
    stream_usage: bool = True
    # The upstream serves OpenAI's Responses API itself (`{api_base}/responses`: OpenAI, recent vLLM):
    # Responses requests are passed through rather than translated to chat.
    responses_api: bool = False
    # The upstream serves OpenAI's Batch API (`{api_base}/files`, `{api_base}/batches`): batch lines
    # routed here are submitted to it and priced at its batch price (`deferred/upstream_batches.py`).
    batch_api: bool = False
    # At most this many requests at once, the rest queued by priority; unlimited when unset (a managed
    # local model: one at a time, `MANAGED_LOCAL_CAPACITY`).
    capacity: Capacity | None = None
    energy: Energy | None = None

    @property
    def effective_capacity(self) -> Capacity | None:
        if self.capacity is None and self.provider == "managed-local":
            return MANAGED_LOCAL_CAPACITY
        return self.capacity


class CircuitBreakerConfig(StrictModel):
    failure_threshold: Annotated[int, Field(ge=1)] = 5
    cooldown_seconds: Annotated[float, Field(gt=0)] = 30.0


class GatewayConfig(StrictModel):
    """The deployments the gateway may call. Routes and rules live in the routing policy."""

    deployments: dict[str, Deployment]
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()

    @model_validator(mode="before")
    @classmethod
    def _name_deployments(cls, data: Any) -> Any:
        """Each deployment is named by its key in the mapping."""
        if isinstance(data, dict) and isinstance(data.get("deployments"), dict):
            named = {}
            for name, body in data["deployments"].items():
                if isinstance(body, dict) and "name" not in body:
                    body = {**body, "name": name}
                named[name] = body
            data = {**data, "deployments": named}
        return data

    @model_validator(mode="after")
    def _check_deployments(self) -> GatewayConfig:
        for name, deployment in self.deployments.items():
            if deployment.name != name:
                raise ValueError(f"deployment {name!r} declares a different name {deployment.name!r}")
            if not deployment.model and deployment.provider not in ("managed-local", "local-embedder"):
                raise ValueError(f"deployment {name!r}: 'model' is required")
            if deployment.batch_api and deployment.provider != "openai":
                raise ValueError(
                    f"deployment {name!r}: batch_api needs an OpenAI-compatible upstream"
                    f" (provider: openai), not {deployment.provider!r}"
                )
        return self


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid; the message says where."""


def load_config(path: Path) -> GatewayConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{path}: invalid configuration"]
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(top level)"
            lines.append(f"  {where}: {error['msg']}")
        raise ConfigError("\n".join(lines)) from exc

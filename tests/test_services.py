"""The services a gateway runs on: built completely at start-up, none of them missing."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.services import NoAudits, NoOtherReplicas, Services
from tests.conftest import RunningGateway, openai_deployment

# The one field that may be None: the managed local model's server, when this gateway runs none.
MAY_BE_ABSENT = {"local_model"}


def spec(upstream: FakeOpenAIUpstream) -> dict[str, Any]:
    return {
        "deployments": {"fake": openai_deployment(upstream)},
        "routes": {"frontier": {"deployments": ["fake"]}},
        "default_route": "frontier",
    }


def test_every_service_is_built_before_the_first_request(
    gateway: Callable[..., RunningGateway], upstreams: Callable[..., FakeOpenAIUpstream]
) -> None:
    services = gateway(spec(upstreams())).app.services
    missing = [
        field.name
        for field in dataclasses.fields(Services)
        if getattr(services, field.name) is None and field.name not in MAY_BE_ABSENT
    ]
    assert missing == []
    # Without Redis, the features that need it are explicit do-nothing implementations.
    assert isinstance(services.key_changes, NoOtherReplicas)
    assert [service.name for service in services.backing] == ["ledger", "keys", "stored_responses", "batches"]
    assert set(services.endpoints) == {
        "/v1/chat/completions", "/chat/completions", "/v1/responses", "/v1/messages",
        "/v1/embeddings", "/embeddings", "/v1/completions", "/completions",
    }  # fmt: skip


def test_without_the_embedder_nothing_is_audited(
    gateway: Callable[..., RunningGateway], upstreams: Callable[..., FakeOpenAIUpstream], tmp_path: Any
) -> None:
    services = gateway(spec(upstreams()), embedder_path=tmp_path / "missing.onnx").app.services
    assert isinstance(services.audits, NoAudits)
    assert services.audits.totals == {}


def test_with_redis_replicas_hear_of_each_other(
    gateway: Callable[..., RunningGateway], upstreams: Callable[..., FakeOpenAIUpstream], redis_url: str
) -> None:
    services = gateway(spec(upstreams()), redis_url=redis_url).app.services
    assert not isinstance(services.key_changes, NoOtherReplicas)
    assert [service.name for service in services.backing] == [
        "ledger",
        "keys",
        "stored_responses",
        "batches",
        "redis",
    ]

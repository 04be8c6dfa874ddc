"""`GET /metrics` after real traffic: requests, tokens, cost and latency per route, team and status, and
the rejections by budgets, rate limits and broken policy edits; only for admin and finance keys."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from gateway.identity.keys import KeyStore
from gateway.identity.keys_sqlite import SqliteKeys
from gateway.telemetry.names import LATENCY_BUCKETS_S
from tests.conftest import RunningGateway, openai_deployment

Gateway = Callable[..., RunningGateway]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
CLIENT_KEY = "sk-metrics-client"
ADMIN_KEY = "sk-metrics-admin"
PRICE = {"input_per_mtok": 1000, "output_per_mtok": 10000}
MESSAGES: list[Any] = [{"role": "user", "content": "Say something about lighthouses"}]
FRONTIER = {"route": "frontier", "team": "default", "deployment": "big"}


def spec(upstreams: Callable[..., FakeOpenAIUpstream], **policy: Any) -> dict[str, Any]:
    healthy = upstreams(Behaviour(content="one two three four five six seven", chunks=4))
    failing = upstreams(Behaviour(status=500))
    return {
        "deployments": {
            "big": openai_deployment(healthy, price=PRICE),
            "broken": openai_deployment(failing, price=PRICE, retries=0),
        },
        "routes": {"frontier": ["big"], "flaky": ["broken"]},
        "default_route": "frontier",
        **policy,
    }


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def scrape(gw: RunningGateway, key: str | None = ADMIN_KEY) -> Samples:
    """Every sample of /metrics by name and labels; a label the exporter writes as "" is absent."""
    response = httpx.get(f"{gw.url}/metrics", headers=bearer(key) if key else {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (
            sample.name,
            frozenset((name, label) for name, label in sample.labels.items() if label),
        ): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def ask(gw: RunningGateway, model: str = "auto", key: str = CLIENT_KEY) -> httpx.Response:
    return httpx.post(
        f"{gw.base_url}/chat/completions",
        json={"model": model, "messages": MESSAGES, "max_tokens": 20},
        headers=bearer(key),
        timeout=30,
    )


def test_requests_tokens_cost_and_latency_are_counted_per_route_team_and_status(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway
) -> None:
    gw = gateway(spec(upstreams), api_keys=[CLIENT_KEY], admin_keys=[ADMIN_KEY])
    assert value(scrape(gw), "gateway_requests_total", **FRONTIER, status="200", cache="miss") is None

    client = gw.client(api_key=CLIENT_KEY)
    plain = client.chat.completions.create(model="auto", messages=MESSAGES)
    chunks = list(
        client.chat.completions.create(
            model="auto", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    streamed = chunks[-1].usage
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="flaky", messages=MESSAGES)
    assert failed.value.status_code == 502
    assert plain.usage is not None and streamed is not None
    prompt = plain.usage.prompt_tokens + streamed.prompt_tokens
    completion = plain.usage.completion_tokens + streamed.completion_tokens

    samples = scrape(gw)
    requests = {
        frozenset(labels): count
        for (name, labels), count in samples.items()
        if name == "gateway_requests_total"
    }
    # The failed request names no deployment: none answered it.
    assert requests == {
        frozenset({**FRONTIER, "status": "200", "cache": "miss"}.items()): 2,
        frozenset({"route": "flaky", "team": "default", "status": "502", "cache": "miss"}.items()): 1,
    }
    assert value(samples, "gateway_tokens_total", **FRONTIER, type="input") == prompt
    assert value(samples, "gateway_tokens_total", **FRONTIER, type="output") == completion
    assert value(samples, "gateway_tokens_total", **FRONTIER, type="cached") == 0
    assert value(samples, "gateway_tokens_total", route="flaky", team="default", type="input") == 0
    cost = value(samples, "gateway_cost_USD_total", **FRONTIER)
    assert cost == pytest.approx((prompt * 1000 + completion * 10000) / 1e6, rel=1e-9)
    assert value(samples, "gateway_cost_USD_total", route="flaky", team="default") == 0

    latency = {"route": "frontier", "deployment": "big", "status": "200", "cache": "miss"}
    buckets = {
        float(dict(labels)["le"]): count
        for (name, labels), count in samples.items()
        if name == "gateway_request_duration_seconds_bucket"
        and labels - {("le", dict(labels)["le"])} == frozenset(latency.items())
    }
    assert sorted(buckets) == [*LATENCY_BUCKETS_S, float("inf")]
    assert buckets[float("inf")] == 2
    counts = [buckets[bound] for bound in sorted(buckets)]
    assert counts == sorted(counts)  # cumulative
    assert value(samples, "gateway_request_duration_seconds_count", **latency) == 2
    assert value(samples, "gateway_request_time_to_first_byte_seconds_count", **latency) == 2
    failed_latency = {"route": "flaky", "status": "502", "cache": "miss"}
    assert value(samples, "gateway_request_duration_seconds_count", **failed_latency) == 1
    # GenAI conventions: one token observation per answered upstream call.
    assert value(samples, "gen_ai_client_token_usage_count", gen_ai_operation_name="chat",
                 gen_ai_request_model="fake-model", gen_ai_token_type="input") == 2  # fmt: skip
    assert value(samples, "gen_ai_client_token_usage_sum", gen_ai_operation_name="chat",
                 gen_ai_request_model="fake-model", gen_ai_token_type="output") == completion  # fmt: skip


def test_budget_rejections_are_counted(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway
) -> None:
    policy = spec(upstreams, budgets={"teams": {"*": {"daily_usd": 0.0000001}}})
    gw = gateway(policy, api_keys=[CLIENT_KEY], admin_keys=[ADMIN_KEY])
    for _ in range(2):
        refused = ask(gw)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    samples = scrape(gw)
    budget = "team daily budget"
    assert value(samples, "gateway_budget_rejections_total", budget=budget, team="default") == 2
    assert not [name for name, _ in samples if name == "gateway_rate_limit_rejections_total"]
    refused_requests = {"route": "frontier", "team": "default", "status": "429", "cache": "miss"}
    assert value(samples, "gateway_requests_total", **refused_requests) == 2
    assert value(samples, "gateway_cost_USD_total", route="frontier", team="default") == 0


def test_rate_limit_rejections_are_counted(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway
) -> None:
    policy = spec(upstreams, rate_limits={"teams": {"*": {"requests_per_minute": 2}}})
    gw = gateway(policy, api_keys=[CLIENT_KEY], admin_keys=[ADMIN_KEY])
    assert [ask(gw).status_code for _ in range(4)] == [200, 200, 429, 429]
    samples = scrape(gw)
    limit = "team requests per minute"
    assert value(samples, "gateway_rate_limit_rejections_total", limit=limit, team="default") == 2
    assert value(samples, "gateway_requests_total", **FRONTIER, status="200", cache="miss") == 2
    assert not [name for name, _ in samples if name == "gateway_budget_rejections_total"]


def test_a_broken_policy_edit_is_counted(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway
) -> None:
    gw = gateway(spec(upstreams), api_keys=[CLIENT_KEY], admin_keys=[ADMIN_KEY])
    admin = f"{gw.url}/admin/policies/policy-0"
    broken = httpx.put(admin, content="routes: {frontier: {deployments: [big]}}\ndefault_route: nowhere\n",
                       headers=bearer(ADMIN_KEY))  # fmt: skip
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_policy"
    assert value(scrape(gw), "gateway_policy_rejections_total", policy="policy-0") == 1
    good = httpx.put(admin, content="routes: {frontier: {deployments: [big]}}\ndefault_route: frontier\n",
                     headers=bearer(ADMIN_KEY))  # fmt: skip
    assert good.status_code == 200
    unknown = httpx.put(
        admin, content="routes: {}\ndefault_route: frontier\nextra: 1\n", headers=bearer(ADMIN_KEY)
    )
    assert unknown.status_code == 400
    assert value(scrape(gw), "gateway_policy_rejections_total", policy="policy-0") == 2


def test_metrics_need_an_admin_or_finance_key(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway
) -> None:
    gw = gateway(spec(upstreams), api_keys=[CLIENT_KEY], admin_keys=[ADMIN_KEY])
    missing = httpx.get(f"{gw.url}/metrics")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    wrong = httpx.get(f"{gw.url}/metrics", headers=bearer("sk-nobody"))
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    client = httpx.get(f"{gw.url}/metrics", headers=bearer(CLIENT_KEY))
    assert client.status_code == 403 and client.json()["error"]["code"] == "permission_denied"
    created = httpx.post(
        f"{gw.url}/admin/keys", json={"team": "finance", "role": "finance"}, headers=bearer(ADMIN_KEY)
    )
    assert created.status_code == 200
    assert ask(gw).status_code == 200
    for key in (ADMIN_KEY, created.json()["key"]):
        assert value(scrape(gw, key), "gateway_requests_total", **FRONTIER, status="200", cache="miss") == 1


def test_an_open_gateway_serves_metrics_to_anyone(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway
) -> None:
    gw = gateway(spec(upstreams))
    assert (
        httpx.post(
            f"{gw.base_url}/chat/completions", json={"model": "auto", "messages": MESSAGES}
        ).status_code
        == 200
    )
    samples = scrape(gw, key=None)
    # No key, no team: the label is left out rather than written empty.
    labels = {"route": "frontier", "deployment": "big", "status": "200", "cache": "miss"}
    assert value(samples, "gateway_requests_total", **labels) == 1


def test_no_metric_label_names_a_key(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway, tmp_path: Path
) -> None:
    state = tmp_path / "keyed-state"
    store = KeyStore(SqliteKeys(state / "keys.sqlite"))
    key, secret = store.create("search", "client")
    store.close()
    # Budgets name keys by id (no `*` for keys), rate limits take `*` too.
    policy = spec(
        upstreams,
        rate_limits={"keys": {"*": {"requests_per_minute": 1}}},
        budgets={"keys": {key.id: {"daily_usd": 0.0000001}}},
    )
    gw = gateway(policy, admin_keys=[ADMIN_KEY], state_dir=state)
    refused = [ask(gw, key=secret).json()["error"]["code"] for _ in range(2)]
    assert refused == ["budget_exceeded", "rate_limit_exceeded"]
    samples = scrape(gw)
    for rejections in ("gateway_budget_rejections_total", "gateway_rate_limit_rejections_total"):
        assert sum(count for (name, _), count in samples.items() if name == rejections) == 1
    labels = {label for _, pairs in samples for _, label in pairs}
    assert [label for label in labels if key.id in label] == []

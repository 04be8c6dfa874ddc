"""Non-streamed answers say what they cost and what the policy's reference route would have charged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from tests.conftest import RunningGateway, openai_deployment

PROMPT = [
    {"role": "user", "content": "What is the capital of France?"}
]  # 7 words + 3 = 10 tokens at the fake


def priced(upstream: FakeOpenAIUpstream, **policy: Any) -> dict[str, Any]:
    return {
        "deployments": {
            "big": openai_deployment(upstream, price={"input_per_mtok": 10, "output_per_mtok": 30}),
            "small": openai_deployment(upstream, price={"input_per_mtok": 1, "output_per_mtok": 2}),
            "mystery": openai_deployment(upstream, model="unknown-model-xyz"),
        },
        "routes": {"frontier": ["big"], "local": ["small"], "other": ["mystery"]},
        "default_route": "local",
        "reference_route": "frontier",
        **policy,
    }


def ask(gw: RunningGateway, model: str) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/chat/completions", json={"model": model, "messages": PROMPT})


def test_cost_and_saving_follow_the_usage_and_the_prices(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    gw = gateway(priced(upstreams()))
    answer = ask(gw, "auto")
    usage = answer.json()["usage"]
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    cost = (prompt * 1 + completion * 2) / 1e6
    reference = (prompt * 10 + completion * 30) / 1e6
    assert float(answer.headers["x-gateway-cost-usd"]) == pytest.approx(cost, abs=1e-8)
    assert float(answer.headers["x-gateway-saved-usd"]) == pytest.approx(reference - cost, abs=1e-8)

    frontier = ask(gw, "frontier")
    assert float(frontier.headers["x-gateway-saved-usd"]) == pytest.approx(0.0, abs=1e-8)


def test_an_unknown_price_is_not_reported_as_zero(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    gw = gateway(priced(upstreams()))
    answer = ask(gw, "other")
    assert answer.status_code == 200
    assert "x-gateway-cost-usd" not in answer.headers and "x-gateway-saved-usd" not in answer.headers


def test_a_route_price_overrides_the_deployment_price(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    spec = priced(upstreams())
    spec["routes"]["local"] = {"deployments": ["small"], "price": {"input_per_mtok": 0, "output_per_mtok": 0}}
    answer = ask(gateway(spec), "auto")
    assert float(answer.headers["x-gateway-cost-usd"]) == 0.0
    assert float(answer.headers["x-gateway-saved-usd"]) > 0

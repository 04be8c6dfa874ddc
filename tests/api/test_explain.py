"""`POST /v1/route/explain` says what the gateway then does, request for request."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import httpx

from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from tests.conftest import RunningGateway, openai_deployment

WORDS = ["refund", "invoice", "python", "weather", "poem", "SELECT", "error", "hello", "plan", "def"]


def policy(upstreams: dict[str, FakeOpenAIUpstream]) -> dict[str, Any]:
    return {
        "deployments": {name: openai_deployment(upstream) for name, upstream in upstreams.items()},
        "routes": {
            "frontier": {"split": {"big": 3, "big-2": 1}},
            "local": ["small"],
        },
        "signals": {
            "tokens": {"kind": "size", "of": "prompt_tokens"},
            "asked": {"kind": "size", "of": "max_tokens"},
            "tools": {"kind": "feature", "of": "tools"},
            "money": {"kind": "keywords", "words": ["refund", "invoice"], "in": "user"},
            "code": {"kind": "regex", "pattern": r"\b(python|SELECT|def)\b", "in": "all"},
            "tags": {"kind": "metadata", "of": "tags"},
        },
        "rules": [
            {"name": "batch", "when": {"signal": "tags", "contains": "batch"}, "route": "local"},
            {"name": "tools-or-code", "when": {"any": [{"signal": "tools", "eq": True},
                                                       {"signal": "code", "eq": True}]}, "route": "frontier"},
            {"name": "money-short", "route": "local",
             "when": {"all": [{"signal": "money", "eq": True}, {"not": {"signal": "asked", "gt": 200}}]}},
            {"name": "short", "when": {"signal": "tokens", "lt": 12}, "route": "local"},
        ],
        "default_route": "frontier",
    }  # fmt: skip


def varied_request(rng: random.Random) -> tuple[dict[str, Any], dict[str, str]]:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 25)))
    body: dict[str, Any] = {"model": "auto", "messages": [{"role": "user", "content": text}]}
    if rng.random() < 0.2:
        body["messages"].insert(
            0, {"role": "system", "content": rng.choice(["Be brief.", "You write python."])}
        )
    if rng.random() < 0.3:
        body["max_tokens"] = rng.choice([50, 150, 250, 1000])
    if rng.random() < 0.15:
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    headers = {"x-gateway-tags": "batch"} if rng.random() < 0.1 else {}
    return body, headers


def test_explain_agrees_with_what_the_gateway_does(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    gw = gateway(policy({"big": upstreams(), "big-2": upstreams(), "small": upstreams()}))
    rng = random.Random(7)
    rules_seen = set()
    with httpx.Client(base_url=gw.base_url, timeout=10) as client:
        for index in range(300):
            body, headers = varied_request(rng)
            headers["x-request-id"] = f"req-{index}"
            explained = client.post("/route/explain", json=body, headers=headers).json()
            done = client.post("/chat/completions", json=body, headers=headers)
            assert done.status_code == 200
            assert done.headers["x-gateway-rule"] == explained["rule"], (body, explained)
            assert done.headers["x-gateway-route"] == explained["route"]
            assert done.headers["x-gateway-deployment"] == explained["candidates"][0]["deployment"]
            assert {r["rule"] for r in explained["rules"]} == {
                "batch",
                "tools-or-code",
                "money-short",
                "short",
            }
            rules_seen.add(explained["rule"])
    assert rules_seen == {"batch", "tools-or-code", "money-short", "short", "default"}


def test_explain_needs_no_model_and_calls_none(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    upstream = {"big": upstreams(), "big-2": upstreams(), "small": upstreams()}
    gw = gateway(policy(upstream))
    response = httpx.post(
        f"{gw.base_url}/route/explain", json={"messages": [{"role": "user", "content": "hi"}]}
    )
    explained = response.json()
    assert (explained["rule"], explained["route"]) == ("short", "local")
    assert explained["signals"]["tokens"] == 4
    why = {r["rule"]: r["why"] for r in explained["rules"]}
    assert why["tools-or-code"].startswith("none of: tools = false")
    assert all(not u.requests for u in upstream.values())
    bad = httpx.post(f"{gw.base_url}/route/explain", json={"messages": "nope"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"


def test_explain_reads_every_inbound_api_as_its_adapter_does(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    names = ("big", "big-2", "small")
    fakes = {name: upstreams() for name in names}
    gw = gateway({**policy(fakes), "model_aliases": {"claude-*": "auto"}})
    explain = f"{gw.url}/v1/route/explain"
    messages = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "python SELECT"}],
    }
    explained = httpx.post(explain, params={"api": "messages"}, json=messages).json()
    assert (explained["api"], explained["rule"], explained["route"]) == (
        "messages",
        "tools-or-code",
        "frontier",
    )
    short = httpx.post(explain, params={"api": "responses"}, json={"input": "hello"}).json()
    assert (short["api"], short["rule"], short["route"]) == ("responses", "short", "local")
    refused = httpx.post(explain, params={"api": "faxes"}, json={"input": "hello"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "api"
    bad = httpx.post(explain, params={"api": "messages"}, json={"messages": []})
    assert bad.status_code == 400
    assert all(fake.requests == [] for fake in fakes.values())

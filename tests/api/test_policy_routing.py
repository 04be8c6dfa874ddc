"""`model: auto` decided by the routing policy: rules, overrides, tags, splits and hot reloads."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from tests.conftest import RunningGateway, openai_deployment, split_config

Upstreams = Callable[..., FakeOpenAIUpstream]
Gateway = Callable[..., RunningGateway]


def two_routes(big: FakeOpenAIUpstream, small: FakeOpenAIUpstream, **policy: Any) -> dict[str, Any]:
    return {
        "deployments": {"big": openai_deployment(big), "small": openai_deployment(small)},
        "routes": {"frontier": ["big"], "local": ["small"]},
        "default_route": "frontier",
        **policy,
    }


RULES = {
    "signals": {
        "refunds": {"kind": "keywords", "words": ["refund"], "in": "user"},
        "tags": {"kind": "metadata", "of": "tags"},
    },
    "rules": [
        {"name": "batch-local", "when": {"signal": "tags", "contains": "batch"}, "route": "local"},
        {
            "name": "refunds-local",
            "when": {"signal": "refunds", "eq": True},
            "route": "local",
            "overrides": {"max_tokens": 16},
        },
    ],
}


def ask(gw: RunningGateway, text: str, **extra: Any) -> httpx.Response:
    headers = extra.pop("headers", {})
    body = {"model": "auto", "messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(f"{gw.base_url}/chat/completions", json=body, headers=headers, timeout=10)


def test_rules_pick_the_route_and_say_which_rule(upstreams: Upstreams, gateway: Gateway) -> None:
    big, small = upstreams(), upstreams()
    gw = gateway(two_routes(big, small, **RULES))
    refund = ask(gw, "I want a refund", max_tokens=500)
    assert refund.headers["x-gateway-rule"] == "refunds-local"
    assert refund.headers["x-gateway-route"] == "local"
    assert small.requests[-1].body["max_tokens"] == 16  # the rule's cap
    other = ask(gw, "Tell me about tea", max_tokens=500)
    assert (other.headers["x-gateway-rule"], other.headers["x-gateway-route"]) == ("default", "frontier")
    assert big.requests[-1].body["max_tokens"] == 500
    tagged = ask(gw, "Tell me about tea", headers={"x-gateway-tags": "nightly, batch"})
    assert tagged.headers["x-gateway-rule"] == "batch-local"
    named = httpx.post(
        f"{gw.base_url}/chat/completions",
        json={"model": "local", "messages": [{"role": "user", "content": "x"}]},
    )
    assert (named.headers["x-gateway-rule"], named.headers["x-gateway-route"]) == ("explicit", "local")


def test_a_rules_cap_keeps_a_lower_client_limit(upstreams: Upstreams, gateway: Gateway) -> None:
    big, small = upstreams(), upstreams()
    gw = gateway(two_routes(big, small, **RULES))
    ask(gw, "refund please", max_completion_tokens=8)
    sent = small.requests[-1].body
    assert sent["max_completion_tokens"] == 8 and "max_tokens" not in sent


def test_a_split_route_spreads_requests_by_weight(upstreams: Upstreams, gateway: Gateway) -> None:
    a, b = upstreams(), upstreams()
    spec = {
        "deployments": {"a": openai_deployment(a), "b": openai_deployment(b)},
        "routes": {"canary": {"split": {"a": 3, "b": 1}}},
        "default_route": "canary",
    }
    gw = gateway(spec)
    deployments = [
        ask(gw, "hi", headers={"x-request-id": f"r{i}"}).headers["x-gateway-deployment"] for i in range(200)
    ]
    assert 0.6 < deployments.count("a") / 200 < 0.9
    assert len(a.requests) + len(b.requests) == 200


def write_policy(path: Path, spec: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(split_config(spec)[1]))


def test_a_policy_edit_goes_live_without_a_restart_and_a_broken_one_does_not(
    upstreams: Upstreams, gateway: Gateway, tmp_path: Path
) -> None:
    big, small = upstreams(), upstreams()
    spec = two_routes(big, small)
    deployments, _ = split_config(spec)
    config, policy = tmp_path / "deployments.yaml", tmp_path / "policy.yaml"
    config.write_text(yaml.safe_dump(deployments))
    write_policy(policy, spec)
    gw = gateway(config=config, policy=policy, policy_reload_interval=0.05)
    assert ask(gw, "hi").headers["x-gateway-route"] == "frontier"

    write_policy(policy, {**spec, "default_route": "local"})
    wait_until(lambda: ask(gw, "hi").headers["x-gateway-route"] == "local")

    policy.write_text("routes: {local: {deployments: [small]}}\ndefault_route: nowhere\n")
    store = gw.app.services.policies
    assert store is not None
    wait_until(lambda: store.last_error is not None)
    assert store.last_error is not None and "default_route: unknown route 'nowhere'" in store.last_error[0]
    assert ask(gw, "hi").headers["x-gateway-route"] == "local"  # the running policy stayed


def test_no_request_fails_or_is_misrouted_while_the_policy_flips_under_load(
    upstreams: Upstreams, gateway: Gateway, tmp_path: Path
) -> None:
    big, small = upstreams(), upstreams()
    spec = two_routes(big, small, **RULES)
    deployments, _ = split_config(spec)
    config, policy = tmp_path / "deployments.yaml", tmp_path / "policy.yaml"
    config.write_text(yaml.safe_dump(deployments))
    write_policy(policy, spec)
    gw = gateway(config=config, policy=policy, policy_reload_interval=0.02)
    # The flipped version sends everything that is not about refunds local under a rule of its own,
    # so each answer's route must agree with the rule that answered, whichever version decided.
    others_local = {"name": "others-local", "when": {"signal": "refunds", "eq": False}, "route": "local"}
    flipped = {**spec, "rules": [*RULES["rules"], others_local]}
    expected = {"default": "frontier", "others-local": "local", "refunds-local": "local"}

    def client_loop(index: int) -> list[tuple[int, str, str]]:
        results = []
        with httpx.Client(timeout=10) as client:
            for n in range(60):
                text = "a refund" if (index + n) % 3 == 0 else "hello"
                body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
                response = client.post(f"{gw.base_url}/chat/completions", json=body)
                results.append((response.status_code, response.headers.get("x-gateway-rule", ""),
                                response.headers.get("x-gateway-route", "")))  # fmt: skip
        return results

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client_loop, i) for i in range(4)]
        for flip in range(20):
            write_policy(policy, flipped if flip % 2 == 0 else spec)
            time.sleep(0.03)
        results = [result for future in futures for result in future.result()]
    store = gw.app.services.policies
    assert store is not None and store.reloads >= 5
    assert all(status == 200 for status, _, _ in results)
    assert all(expected[rule] == route for _, rule, route in results)
    assert {rule for _, rule, _ in results} == set(expected)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)

"""Shadow copies: sent beside the real request, recorded, never returned, never in the way."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from gateway.policy.records import ShadowRecord
from tests.conftest import RunningGateway, openai_deployment


def shadowed(big: FakeOpenAIUpstream, small: FakeOpenAIUpstream) -> dict[str, Any]:
    return {
        "deployments": {"big": openai_deployment(big), "small": openai_deployment(small, retries=0)},
        "routes": {"frontier": ["big"], "local": ["small"]},
        "signals": {"n": {"kind": "size", "of": "messages"}},
        "rules": [{"name": "all", "when": {"signal": "n", "gte": 1}, "route": "frontier", "shadow": "local"}],
        "default_route": "frontier",
    }


def shadows_of(gw: RunningGateway, bg: BackgroundLoop, count: int) -> list[ShadowRecord]:
    records = gw.app.services.decisions
    assert records is not None
    deadline = time.monotonic() + 5
    while True:
        bg.run(records.flush())
        found = records.read_shadows()
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_shadow_copy_is_sent_and_recorded_but_never_returned(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway], bg: BackgroundLoop
) -> None:
    big, small = upstreams(), upstreams(Behaviour(content="the local answer"))
    gw = gateway(shadowed(big, small))
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream(
        "POST", f"{gw.base_url}/chat/completions", json=body, headers={"x-request-id": "r1"}
    ) as r:
        streamed = r.read()
    assert r.headers["x-gateway-route"] == "frontier"
    assert b"the local answer" not in streamed
    [shadow] = shadows_of(gw, bg, 1)
    assert (shadow.request_id, shadow.rule, shadow.route, shadow.deployment, shadow.status) == (
        "r1", "all", "local", "small", 200,
    )  # fmt: skip
    assert shadow.completion_tokens is not None and shadow.completion_tokens > 0
    copy = small.requests[-1].body
    assert "stream" not in copy and copy["messages"] == body["messages"]  # a plain copy, not a stream


def test_a_failing_or_slow_shadow_does_not_touch_the_real_answer(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway], bg: BackgroundLoop
) -> None:
    big, small = upstreams(), upstreams(Behaviour(status=500))
    gw = gateway(shadowed(big, small))
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(f"{gw.base_url}/chat/completions", json=body)
    assert answer.status_code == 200 and answer.headers["x-gateway-deployment"] == "big"
    [shadow] = shadows_of(gw, bg, 1)
    assert shadow.status == 502 and shadow.deployment is None

    small.default = Behaviour(latency=2.0)
    assert httpx.post(f"{gw.base_url}/chat/completions", json=body).status_code == 200
    records = gw.app.services.decisions
    assert records is not None
    bg.run(records.flush())
    assert len(records.read_shadows()) == 1  # the real answer came back while its shadow still waits

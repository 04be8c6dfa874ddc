"""Faults through the gateway: retries, fallbacks, timeouts, broken streams, circuits, disconnects."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from tests.conftest import RunningGateway, openai_deployment

Upstreams = Callable[..., FakeOpenAIUpstream]
Gateway = Callable[..., RunningGateway]
MESSAGES: list[Any] = [{"role": "user", "content": "Tell me a story"}]
FAST = {"connect": 1, "first_byte": 0.5, "total": 5}


def two_deployments(
    first: FakeOpenAIUpstream, second: FakeOpenAIUpstream, **first_extra: Any
) -> dict[str, Any]:
    return {
        "deployments": {
            "first": openai_deployment(first, timeouts=FAST, **first_extra),
            "second": openai_deployment(second, timeouts=FAST),
        },
        "routes": {"frontier": ["first", "second"]},
        "default_route": "frontier",
        "circuit_breaker": {"failure_threshold": 3, "cooldown_seconds": 0.5},
    }


def test_a_500_is_retried_on_the_same_deployment(upstreams: Upstreams, gateway: Gateway) -> None:
    first, second = upstreams(), upstreams()
    first.script(Behaviour(status=500))
    gw = gateway(two_deployments(first, second, retries=1))
    raw = gw.client().chat.completions.with_raw_response.create(model="auto", messages=MESSAGES)
    assert raw.headers["x-gateway-deployment"] == "first"
    assert len(first.requests) == 2 and second.requests == []


def test_a_deployment_that_keeps_failing_falls_back_to_the_next(
    upstreams: Upstreams, gateway: Gateway
) -> None:
    first, second = upstreams(Behaviour(status=503)), upstreams()
    gw = gateway(two_deployments(first, second, retries=2))
    raw = gw.client().chat.completions.with_raw_response.create(model="auto", messages=MESSAGES)
    assert raw.headers["x-gateway-deployment"] == "second"
    assert raw.headers["x-gateway-fallback"].startswith("frontier/first -> frontier/second")
    assert len(first.requests) == 3 and len(second.requests) == 1


def test_when_everything_fails_the_client_gets_502(upstreams: Upstreams, gateway: Gateway) -> None:
    first, second = upstreams(Behaviour(status=500)), upstreams(Behaviour(status=502))
    gw = gateway(two_deployments(first, second, retries=0))
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client().chat.completions.create(model="auto", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert caught.value.response.json()["error"]["type"] == "upstream_error"
    assert caught.value.response.headers["x-gateway-rule"] == "default"
    assert caught.value.response.headers["x-gateway-route"] == "frontier"


def test_rate_limits_are_passed_on_with_retry_after_when_nothing_else_answers(
    upstreams: Upstreams, gateway: Gateway
) -> None:
    first = upstreams(Behaviour(status=429, retry_after=30))
    second = upstreams(Behaviour(status=429, retry_after=20))
    gw = gateway(two_deployments(first, second, retries=2))
    with pytest.raises(openai.RateLimitError) as caught:
        gw.client().chat.completions.create(model="auto", messages=MESSAGES)
    # Retry-After beyond the back-off cap moves on at once instead of sleeping 30 s.
    assert len(first.requests) == 1
    assert caught.value.response.headers["retry-after"] == "20"


def test_an_upstream_4xx_is_passed_on_and_not_retried(upstreams: Upstreams, gateway: Gateway) -> None:
    first, second = upstreams(Behaviour(status=400, error_message="max_tokens is too large")), upstreams()
    gw = gateway(two_deployments(first, second))
    with pytest.raises(openai.BadRequestError) as caught:
        gw.client().chat.completions.create(model="auto", messages=MESSAGES)
    assert "max_tokens is too large" in caught.value.message
    assert len(first.requests) == 1 and second.requests == []


def test_a_slow_first_byte_times_out_and_falls_back(upstreams: Upstreams, gateway: Gateway) -> None:
    first, second = upstreams(Behaviour(latency=3)), upstreams()
    gw = gateway(two_deployments(first, second))
    started = time.monotonic()
    raw = gw.client().chat.completions.with_raw_response.create(model="auto", messages=MESSAGES)
    assert raw.headers["x-gateway-deployment"] == "second"
    assert time.monotonic() - started < 2.5


def test_the_overall_deadline_bounds_a_request(upstreams: Upstreams, gateway: Gateway) -> None:
    first, second = upstreams(Behaviour(latency=3)), upstreams(Behaviour(latency=3))
    gw = gateway(two_deployments(first, second), request_timeout=0.8)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client().chat.completions.create(model="auto", messages=MESSAGES)
    assert caught.value.status_code == 504
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    "broken", [Behaviour(status=500), Behaviour(disconnect_after=0), Behaviour(latency=3)]
)
def test_a_stream_that_fails_before_its_first_byte_falls_back(
    upstreams: Upstreams, gateway: Gateway, broken: Behaviour
) -> None:
    first, second = upstreams(broken), upstreams(Behaviour(chunks=4))
    gw = gateway(two_deployments(first, second, retries=0))
    body = {"model": "auto", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body, timeout=10) as response:
        raw = response.read()
    assert response.status_code == 200
    assert response.headers["x-gateway-deployment"] == "second"
    assert "x-gateway-fallback" in response.headers
    assert raw.endswith(b"data: [DONE]\n\n")


def test_a_stream_broken_after_bytes_ends_with_an_error_event_and_no_done(
    upstreams: Upstreams, gateway: Gateway
) -> None:
    first, second = upstreams(Behaviour(chunks=10, disconnect_after=3)), upstreams()
    gw = gateway(two_deployments(first, second))
    body = {"model": "auto", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body) as response:
        raw = response.read()
    assert b"[DONE]" not in raw
    assert raw.rstrip().splitlines()[-1].startswith(b'data: {"error":')
    assert second.requests == []
    with pytest.raises(openai.APIError):
        list(gw.client().chat.completions.create(model="auto", messages=MESSAGES, stream=True))


def test_a_stream_that_trickles_for_ever_is_cut_at_the_deadline_with_an_error_event(
    upstreams: Upstreams, gateway: Gateway
) -> None:
    """Bytes keep coming, slowly (a chunk every 0.2 s for 40 s): the request's deadline still ends it."""
    first, second = upstreams(Behaviour(chunks=200, chunk_delay=0.2)), upstreams()
    gw = gateway(two_deployments(first, second), request_timeout=1.5)
    body = {"model": "auto", "messages": MESSAGES, "stream": True}
    started = time.monotonic()
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body, timeout=30) as response:
        raw = response.read()
    assert time.monotonic() - started < 5
    assert b"[DONE]" not in raw
    assert raw.count(b"data: {") >= 3  # some of the answer came through before the cut
    assert raw.rstrip().splitlines()[-1].startswith(b'data: {"error":')


def test_garbage_from_upstream_is_a_clean_502(upstreams: Upstreams, gateway: Gateway) -> None:
    first = upstreams(Behaviour(garbage=True))
    gw = gateway(
        {
            "deployments": {"first": openai_deployment(first, retries=0)},
            "routes": {"r": ["first"]},
            "default_route": "r",
        }
    )
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client().chat.completions.create(model="auto", messages=MESSAGES)
    assert caught.value.status_code == 502


def test_the_circuit_opens_after_consecutive_failures_and_half_opens_after_cooldown(
    upstreams: Upstreams, gateway: Gateway
) -> None:
    first, second = upstreams(Behaviour(status=500)), upstreams()
    gw = gateway(two_deployments(first, second, retries=0))
    for _ in range(3):
        gw.client().chat.completions.create(model="auto", messages=MESSAGES)
    assert len(first.requests) == 3
    raw = gw.client().chat.completions.with_raw_response.create(model="auto", messages=MESSAGES)
    assert "circuit open" in raw.headers["x-gateway-fallback"]
    assert len(first.requests) == 3  # skipped while open
    assert httpx.get(f"{gw.url}/readyz").json()["deployments"]["first"]["circuit"] == "open"
    time.sleep(0.6)
    first.default = Behaviour()
    raw = gw.client().chat.completions.with_raw_response.create(model="auto", messages=MESSAGES)
    assert raw.headers["x-gateway-deployment"] == "first"  # the probe went through and closed it
    assert httpx.get(f"{gw.url}/readyz").json()["deployments"]["first"]["circuit"] == "closed"


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_disconnect_cancels_the_upstream_call(
    upstreams: Upstreams, gateway: Gateway, stream: bool
) -> None:
    upstream = upstreams(Behaviour(hang=True) if not stream else Behaviour(chunks=50, chunk_delay=0.1))
    gw = gateway(
        {
            "deployments": {"only": openai_deployment(upstream, timeouts={"first_byte": 30, "total": 60})},
            "routes": {"r": ["only"]},
            "default_route": "r",
        }
    )
    if stream:
        chunks = gw.client().chat.completions.create(model="auto", messages=MESSAGES, stream=True)
        for index, _ in enumerate(chunks):
            if index == 3:
                break
        chunks.close()
    else:
        with pytest.raises(openai.APITimeoutError):
            gw.client(timeout=0.5).chat.completions.create(model="auto", messages=MESSAGES)
    deadline = time.monotonic() + 5
    while upstream.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.cancelled == 1


def test_auto_falls_back_to_the_local_route_when_frontier_has_no_key(
    upstreams: Upstreams, gateway: Gateway
) -> None:
    frontier, local = upstreams(), upstreams()
    config = {
        "deployments": {
            "gpt": openai_deployment(frontier, api_key_env="OPENAI_API_KEY"),
            "small": openai_deployment(local),
        },
        "routes": {"frontier": ["gpt"], "local": ["small"]},
        "default_route": "frontier",
        "fallback_route": "local",
    }
    gw = gateway(config, environ={})
    raw = gw.client().chat.completions.with_raw_response.create(model="auto", messages=MESSAGES)
    assert raw.headers["x-gateway-route"] == "local"
    assert "OPENAI_API_KEY is not set" in raw.headers["x-gateway-fallback"]
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client().chat.completions.create(model="frontier", messages=MESSAGES)
    assert caught.value.status_code == 503
    assert "OPENAI_API_KEY is not set" in caught.value.message
    assert frontier.requests == []


def test_a_circuit_opened_by_one_replica_is_open_on_the_others(
    upstreams: Upstreams, gateway: Gateway, redis_url: str, redis_prefix: str
) -> None:
    """Two replicas on one Redis: the one that met the failures opens the circuit, and the other skips the
    failing deployment from then on without trying it itself; after the cooldown each probes it again."""
    first, second = upstreams(Behaviour(status=500)), upstreams()
    spec = two_deployments(first, second, retries=0)
    spec["circuit_breaker"] = {"failure_threshold": 3, "cooldown_seconds": 3.0}
    shared = {"redis_url": redis_url, "redis_prefix": redis_prefix}
    one, other = gateway(spec, **shared), gateway(spec, **shared)
    for _ in range(3):
        one.client().chat.completions.create(model="auto", messages=MESSAGES)
    assert len(first.requests) == 3
    assert httpx.get(f"{one.url}/readyz").json()["deployments"]["first"]["circuit"] == "open"
    deadline = time.monotonic() + 2.0
    while httpx.get(f"{other.url}/readyz").json()["deployments"]["first"]["circuit"] != "open":
        assert time.monotonic() < deadline, "the other replica never heard of the open circuit"
        time.sleep(0.05)
    raw = other.client().chat.completions.with_raw_response.create(model="auto", messages=MESSAGES)
    assert raw.headers["x-gateway-deployment"] == "second"
    assert len(first.requests) == 3  # the other replica did not pay a failure of its own

"""`POST /v1/messages` (Anthropic's Messages API) through Anthropic's official client, translated to the
OpenAI-compatible fake upstream and back: plain, streamed, tools, errors in Anthropic's format, the
client's own model names routed by the policy's aliases, and the ledger's record of each."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import pytest

from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import TOOL_ARGUMENTS, Behaviour
from tests.conftest import RunningGateway, ledger_rows, openai_deployment

Upstreams = Callable[..., FakeOpenAIUpstream]
Gateway = Callable[..., RunningGateway]
CLAUDE = "claude-sonnet-4-5-20250929"
TOOLS: list[Any] = [
    {
        "name": "find_lighthouse",
        "description": "Find the nearest lighthouse",
        "input_schema": {"type": "object", "properties": {"harbour": {"type": "string"}}},
    }
]
PRICE = {"input_per_mtok": 1000, "output_per_mtok": 1000}


def routed(upstream: FakeOpenAIUpstream, **policy: Any) -> dict[str, Any]:
    return {
        "deployments": {
            "big": openai_deployment(upstream, price=PRICE),
            "small": openai_deployment(upstream),
        },
        "routes": {"frontier": ["big"], "local": ["small"]},
        "signals": {"tools": {"kind": "feature", "of": "tools"}},
        "rules": [
            {"name": "tools-to-frontier", "when": {"signal": "tools", "eq": True}, "route": "frontier"}
        ],
        "default_route": "local",
        "model_aliases": {"claude-*": "auto"},
        **policy,
    }


def test_a_plain_message_is_answered_in_anthropics_format_and_routed_by_the_rules(
    upstreams: Upstreams, gateway: Gateway, bg: BackgroundLoop
) -> None:
    upstream = upstreams()
    gw = gateway(routed(upstream))
    raw = gw.anthropic().messages.with_raw_response.create(
        model=CLAUDE,
        max_tokens=200,
        system="Be brief.",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        extra_headers={"x-request-id": "msg-1"},
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant" and message.model == CLAUDE
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Fake answer to: What is the capital of France?"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert raw.headers["x-gateway-route"] == "local" and raw.headers["x-gateway-rule"] == "default"
    sent = upstream.requests[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    assert sent["max_tokens"] == 200 and sent["model"] == "fake-model"
    [record] = ledger_rows(gw, bg)
    assert (record["api"], record["request_id"], record["route"]) == ("messages", "msg-1", "local")
    assert record["prompt_tokens"] == message.usage.input_tokens
    assert record["completion_tokens"] == message.usage.output_tokens


def test_a_streamed_tool_call_arrives_as_anthropic_events_with_usage(
    upstreams: Upstreams, gateway: Gateway, bg: BackgroundLoop
) -> None:
    upstream = upstreams(Behaviour(tool_call=True))
    gw = gateway(routed(upstream))
    with gw.anthropic().messages.stream(
        model=CLAUDE,
        max_tokens=200,
        tools=TOOLS,
        messages=[{"role": "user", "content": "Where is the lighthouse near Brest?"}],
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "message_delta" in kinds
    [block] = final.content
    assert block.type == "tool_use" and block.name == "find_lighthouse"
    assert block.input == json.loads(TOOL_ARGUMENTS)
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens > 0
    sent = upstream.requests[-1].body
    assert sent["tools"][0]["function"]["name"] == "find_lighthouse" and sent["stream"] is True
    [record] = ledger_rows(gw, bg)
    assert (record["api"], record["route"], record["stream"]) == ("messages", "frontier", 1)
    assert record["completion_tokens"] == final.usage.output_tokens and record["cost_usd"] > 0


def test_a_tool_result_goes_back_to_the_upstream_as_a_tool_message(
    upstreams: Upstreams, gateway: Gateway
) -> None:
    upstream = upstreams(Behaviour(content="The keeper is Anne."))
    gw = gateway(routed(upstream))
    answer = gw.anthropic().messages.create(
        model=CLAUDE,
        max_tokens=100,
        tools=TOOLS,
        messages=[
            {"role": "user", "content": "Who keeps the lighthouse near Brest?"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "find_lighthouse",
                        "input": {"harbour": "Brest"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Anne"}],
            },
        ],
    )
    assert answer.content[0].text == "The keeper is Anne."  # type: ignore[union-attr]
    sent = upstream.requests[-1].body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "toolu_1"
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {"harbour": "Brest"}
    assert sent[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "Anne"}


def test_the_x_api_key_header_authenticates_and_a_wrong_key_is_an_anthropic_error(
    upstreams: Upstreams, gateway: Gateway
) -> None:
    upstream = upstreams()
    gw = gateway(routed(upstream), api_keys=["sk-team"])
    answer = gw.anthropic(api_key="sk-team").messages.create(
        model=CLAUDE, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.content
    with pytest.raises(anthropic.AuthenticationError) as raised:
        gw.anthropic(api_key="sk-wrong").messages.create(
            model=CLAUDE, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
    assert raised.value.body["type"] == "error"  # type: ignore[index]
    assert raised.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "param_in_message"),
    [
        (b"{not json", "JSON"),
        ({"model": CLAUDE, "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
        ({"model": CLAUDE, "max_tokens": 9, "messages": [{"role": "robot", "content": "hi"}]}, "role"),
        (
            {"model": CLAUDE, "max_tokens": 9, "top_k": 5, "messages": [{"role": "user", "content": "hi"}]},
            "top_k",
        ),
        (
            {
                "model": CLAUDE,
                "max_tokens": 9,
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
                "messages": [{"role": "user", "content": "hi"}],
            },
            "web_search",
        ),
    ],
)
def test_bad_input_is_an_anthropic_invalid_request_error_and_calls_nothing(
    upstreams: Upstreams, gateway: Gateway, body: Any, param_in_message: str
) -> None:
    upstream = upstreams()
    gw = gateway(routed(upstream))
    response = httpx.post(
        f"{gw.url}/v1/messages",
        content=body if isinstance(body, bytes) else json.dumps(body).encode(),
        headers={"content-type": "application/json", "anthropic-version": "2023-06-01"},
        timeout=10,
    )
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert param_in_message in error["error"]["message"]
    assert upstream.requests == []


def test_an_unknown_model_name_is_an_anthropic_not_found_error(
    upstreams: Upstreams, gateway: Gateway
) -> None:
    upstream = upstreams()
    gw = gateway(routed(upstream))
    with pytest.raises(anthropic.NotFoundError) as raised:
        gw.anthropic().messages.create(
            model="gpt-unknown", max_tokens=9, messages=[{"role": "user", "content": "hi"}]
        )
    assert raised.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_count_tokens_counts_offline_and_calls_no_upstream(upstreams: Upstreams, gateway: Gateway) -> None:
    upstream = upstreams()
    gw = gateway(routed(upstream))
    client = gw.anthropic()
    short = client.messages.count_tokens(model=CLAUDE, messages=[{"role": "user", "content": "hi"}])
    longer = client.messages.count_tokens(
        model=CLAUDE, tools=TOOLS, messages=[{"role": "user", "content": "hi " * 50}]
    )
    assert 0 < short.input_tokens < longer.input_tokens
    assert upstream.requests == []


def test_a_cached_answer_is_replayed_in_anthropics_shape_and_shared_with_chat_clients(
    upstreams: Upstreams, gateway: Gateway
) -> None:
    upstream = upstreams()
    cached_rule = {
        "name": "cached",
        "when": {"signal": "tools", "eq": False},
        "route": "local",
        "cache": {"enabled": True, "any_temperature": True},
    }
    gw = gateway(routed(upstream, rules=[cached_rule]))
    question = [{"role": "user", "content": "What is the capital of France?"}]
    first = gw.anthropic().messages.with_raw_response.create(model=CLAUDE, max_tokens=50, messages=question)
    again = gw.anthropic().messages.with_raw_response.create(model=CLAUDE, max_tokens=50, messages=question)
    assert (first.headers["x-gateway-cache"], again.headers["x-gateway-cache"]) == ("miss", "exact")
    assert again.parse().content[0].text == first.parse().content[0].text  # type: ignore[union-attr]
    assert again.parse().type == "message"
    with gw.anthropic().messages.stream(model=CLAUDE, max_tokens=50, messages=question) as stream:
        replayed = stream.get_final_message()
    assert replayed.content[0].text == first.parse().content[0].text  # type: ignore[union-attr]
    chat = gw.client().chat.completions.with_raw_response.create(
        model=CLAUDE, max_tokens=50, messages=question
    )
    assert chat.headers["x-gateway-cache"] == "exact"
    assert chat.parse().choices[0].message.content == replayed.content[0].text  # type: ignore[union-attr]
    assert len(upstream.requests) == 1  # one upstream call answered all four, each in its own API's shape


def cut_after(url: str, body: dict[str, Any], events: int) -> int:
    """Read `events` SSE events of a stream, then leave; how many were read."""
    seen = 0
    with httpx.stream("POST", url, json=body, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                seen += 1
                if seen >= events:
                    break
    return seen


def wait_for_rows(gw: RunningGateway, bg: BackgroundLoop, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    rows = ledger_rows(gw, bg)
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.1)
        rows = ledger_rows(gw, bg)
    return rows


def test_a_stream_the_client_cuts_is_recorded_with_what_it_produced(
    upstreams: Upstreams, gateway: Gateway, bg: BackgroundLoop
) -> None:
    story = " ".join(f"word{n}" for n in range(40))
    upstream = upstreams(Behaviour(content=story, chunks=40, chunk_delay=0.05))
    gw = gateway(routed(upstream))
    body = {
        "model": CLAUDE,
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": "go"}],
    }
    assert cut_after(f"{gw.url}/v1/messages", body, 8) == 8
    [record] = wait_for_rows(gw, bg, 1)
    assert (record["api"], record["status"], record["estimated"]) == ("messages", 499, 1)
    assert 0 < record["completion_tokens"] < 40 and record["prompt_tokens"] > 0

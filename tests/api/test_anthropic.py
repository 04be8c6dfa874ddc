"""Anthropic's Messages API behind the gateway, driven by the official openai client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gateway.fakes.anthropic_upstream import AnthropicBehaviour, FakeAnthropicUpstream
from gateway.fakes.background import BackgroundLoop
from tests.conftest import RunningGateway

KEY = "sk-ant-test-0123456789"
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello"},
]


@pytest.fixture
def anthropic(bg: BackgroundLoop) -> Iterator[FakeAnthropicUpstream]:
    upstream = FakeAnthropicUpstream(api_key=KEY)
    bg.run(upstream.start())
    yield upstream
    bg.run(upstream.stop())


def claude(anthropic: FakeAnthropicUpstream, **extra: Any) -> dict[str, Any]:
    return {"provider": "anthropic", "model": "claude-haiku-4-5", "api_base": anthropic.base_url, **extra}


@pytest.fixture
def gw(anthropic: FakeAnthropicUpstream, gateway: Callable[..., RunningGateway]) -> RunningGateway:
    config = {
        "deployments": {"claude": claude(anthropic, api_key_env="ANTHROPIC_API_KEY")},
        "routes": {"frontier": ["claude"]},
        "default_route": "frontier",
    }
    return gateway(config, environ={"ANTHROPIC_API_KEY": KEY})


def test_non_streaming(gw: RunningGateway, anthropic: FakeAnthropicUpstream) -> None:
    raw = gw.client().chat.completions.with_raw_response.create(
        model="auto", messages=MESSAGES, max_tokens=50
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the fake Anthropic upstream."
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 5  # words of system + user
    assert completion.usage.completion_tokens == 6
    assert raw.headers["x-gateway-deployment"] == "claude"
    headers, body = anthropic.requests[-1]
    assert headers["x-api-key"] == KEY
    assert body["system"] in ("You are terse.", [{"type": "text", "text": "You are terse."}])
    assert body["max_tokens"] == 50
    assert KEY not in raw.http_response.text


def test_streaming_with_usage(gw: RunningGateway) -> None:
    chunks = list(
        gw.client().chat.completions.create(
            model="frontier",
            messages=MESSAGES,
            max_tokens=50,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake Anthropic upstream."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


def test_streaming_without_usage_sends_no_usage_chunk(gw: RunningGateway) -> None:
    chunks = list(
        gw.client().chat.completions.create(model="auto", messages=MESSAGES, max_tokens=50, stream=True)
    )
    assert all(c.usage is None for c in chunks)
    assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_becomes_openai_tool_calls(
    gw: RunningGateway, anthropic: FakeAnthropicUpstream, stream: bool
) -> None:
    anthropic.script(AnthropicBehaviour(tool_use=True))
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    client = gw.client()
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="auto", messages=MESSAGES, max_tokens=50, tools=tools, stream=True
            )
        )
        calls = [call for c in chunks if c.choices for call in (c.choices[0].delta.tool_calls or [])]
        assert calls[0].function is not None and calls[0].function.name == "weather"
        arguments = "".join(call.function.arguments or "" for call in calls if call.function)
        assert arguments.replace(" ", "") == '{"city":"fake"}'
    else:
        completion = client.chat.completions.create(
            model="auto", messages=MESSAGES, max_tokens=50, tools=tools
        )
        call = (completion.choices[0].message.tool_calls or [])[0]
        assert call.function.name == "weather"  # type: ignore[union-attr]
        assert completion.choices[0].finish_reason == "tool_calls"
    _, body = anthropic.requests[-1]
    assert body["tools"][0]["name"] == "weather"


def test_an_anthropic_outage_falls_back_to_the_next_deployment(
    anthropic: FakeAnthropicUpstream,
    gateway: Callable[..., RunningGateway],
    upstreams: Callable[..., Any],
) -> None:
    backup = upstreams()
    config = {
        "deployments": {
            "claude": claude(anthropic, retries=0),
            "backup": {"provider": "openai", "model": "m", "api_base": backup.base_url},
        },
        "routes": {"frontier": ["claude", "backup"]},
        "default_route": "frontier",
    }
    gw = gateway(config, environ={"ANTHROPIC_API_KEY": KEY})
    anthropic.script(AnthropicBehaviour(status=529), AnthropicBehaviour(chunks=8, disconnect_after=0))
    raw = gw.client().chat.completions.with_raw_response.create(model="auto", messages=MESSAGES, max_tokens=9)
    assert raw.headers["x-gateway-deployment"] == "backup"
    chunks = list(
        gw.client().chat.completions.create(model="auto", messages=MESSAGES, max_tokens=9, stream=True)
    )
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len(backup.requests) == 2

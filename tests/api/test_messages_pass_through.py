"""`POST /v1/messages` to an Anthropic deployment: the client's body goes to Anthropic as it is (only
`model` replaced), the bytes come back untouched, streams included, with no litellm on the path; the
ledger gets the usage Anthropic reported. Against the fake Anthropic upstream (a real server speaking
the Messages wire format)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from gateway.fakes.anthropic_upstream import AnthropicBehaviour, FakeAnthropicUpstream
from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from tests.conftest import RunningGateway, ledger_rows, openai_deployment

Gateway = Callable[..., RunningGateway]
KEY_ENV = {"FAKE_ANTHROPIC_KEY": "sk-ant-fake"}
PRICE = {"input_per_mtok": 3, "output_per_mtok": 15}
TOOLS: list[Any] = [
    {
        "name": "find_lighthouse",
        "description": "Find the nearest lighthouse",
        "input_schema": {"type": "object", "properties": {"harbour": {"type": "string"}}},
    }
]


@pytest.fixture
def anthropic_upstream(bg: BackgroundLoop) -> Iterator[FakeAnthropicUpstream]:
    upstream = FakeAnthropicUpstream(api_key="sk-ant-fake")
    bg.run(upstream.start())
    yield upstream
    bg.run(upstream.stop())


def claude_route(anthropic_upstream: FakeAnthropicUpstream, **extra: Any) -> dict[str, Any]:
    claude = {
        "provider": "anthropic",
        "model": "claude-sonnet-4-5",
        "api_base": anthropic_upstream.base_url,
        "api_key_env": "FAKE_ANTHROPIC_KEY",
        "price": PRICE,
    }
    return {
        "deployments": {"claude": claude, **extra.pop("deployments", {})},
        "routes": {"frontier": ["claude"], **extra.pop("routes", {})},
        "default_route": "frontier",
        "model_aliases": {"claude-*": "auto"},
        **extra,
    }


def test_a_message_goes_to_anthropic_as_sent_and_comes_back_untouched(
    anthropic_upstream: FakeAnthropicUpstream, gateway: Gateway, bg: BackgroundLoop
) -> None:
    gw = gateway(claude_route(anthropic_upstream), environ=KEY_ENV)
    body: dict[str, Any] = {
        "max_tokens": 300,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Where is Brest?"}]}],
        "metadata": {"user_id": "u-1"},
    }
    raw = gw.anthropic().messages.with_raw_response.create(
        model="claude-sonnet-4-5-20250929",
        **body,
        extra_headers={"anthropic-beta": "context-management-2025-06-27"},
    )
    message = raw.parse()
    assert message.content[0].text == "Hello from the fake Anthropic upstream."  # type: ignore[union-attr]
    assert message.id.startswith("msg_fake")  # Anthropic's own id: the bytes were not rebuilt
    sent = anthropic_upstream.requests[-1]
    assert sent.body == {**body, "model": "claude-sonnet-4-5"}
    assert sent.headers["x-api-key"] == "sk-ant-fake" and "anthropic-version" in sent.headers
    assert sent.headers["anthropic-beta"] == "context-management-2025-06-27"  # the client's own betas
    assert raw.headers["x-gateway-deployment"] == "claude"
    [record] = ledger_rows(gw, bg)
    assert (record["api"], record["deployment"], record["status"]) == ("messages", "claude", 200)
    assert record["prompt_tokens"] == message.usage.input_tokens
    assert record["completion_tokens"] == message.usage.output_tokens
    assert record["cost_usd"] == pytest.approx(
        (message.usage.input_tokens * 3 + message.usage.output_tokens * 15) / 1e6
    )


def test_a_streamed_tool_use_passes_through_with_its_usage_recorded(
    anthropic_upstream: FakeAnthropicUpstream, gateway: Gateway, bg: BackgroundLoop
) -> None:
    anthropic_upstream.script(AnthropicBehaviour(tool_use=True))
    gw = gateway(claude_route(anthropic_upstream), environ=KEY_ENV)
    with gw.anthropic().messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=300,
        tools=TOOLS,
        messages=[{"role": "user", "content": "Where is the lighthouse near Brest?"}],
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds.count("message_stop") == 1
    [block] = final.content
    assert block.type == "tool_use" and block.name == "find_lighthouse"
    assert final.id.startswith("msg_fake")
    [record] = ledger_rows(gw, bg)
    assert (record["api"], record["stream"], record["status"]) == ("messages", 1, 200)
    assert record["completion_tokens"] == final.usage.output_tokens > 0
    assert record["prompt_tokens"] == final.usage.input_tokens > 0


def test_an_anthropic_failure_falls_back_to_a_chat_deployment_translated(
    anthropic_upstream: FakeAnthropicUpstream,
    upstreams: Callable[..., FakeOpenAIUpstream],
    gateway: Gateway,
) -> None:
    anthropic_upstream.script(*[AnthropicBehaviour(status=529, error_message="overloaded")] * 5)
    chat = upstreams()
    spec = claude_route(
        anthropic_upstream,
        deployments={"small": openai_deployment(chat)},
        routes={"local": ["small"]},
        fallback_route="local",
    )
    spec["deployments"]["claude"]["retries"] = 0
    gw = gateway(spec, environ=KEY_ENV)
    raw = gw.anthropic().messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-gateway-deployment"] == "small"
    assert raw.parse().content[0].text == "Fake answer to: hi"  # type: ignore[union-attr]
    assert chat.requests[-1].body["messages"] == [{"role": "user", "content": "hi"}]


def test_chat_completions_to_the_same_deployment_still_go_through_litellms_translation(
    anthropic_upstream: FakeAnthropicUpstream, gateway: Gateway
) -> None:
    gw = gateway(claude_route(anthropic_upstream), environ=KEY_ENV)
    answer = gw.client().chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "Hello from the fake Anthropic upstream."
    [sent] = anthropic_upstream.requests[-1].body["messages"]
    assert sent["role"] == "user" and "hi" in str(sent["content"])  # litellm's translation of the chat body


def test_a_stream_anthropic_breaks_ends_with_an_error_event_and_is_paid_for_its_prompt(
    anthropic_upstream: FakeAnthropicUpstream, gateway: Gateway, bg: BackgroundLoop
) -> None:
    anthropic_upstream.script(AnthropicBehaviour(content="one two three four five six", disconnect_after=2))
    gw = gateway(claude_route(anthropic_upstream), environ=KEY_ENV)
    response = httpx.post(
        f"{gw.url}/v1/messages",
        json={
            "model": "claude-sonnet-4-5",
            "max_tokens": 50,
            "stream": True,
            "messages": [{"role": "user", "content": "count"}],
        },
        timeout=30,
    )
    events = [event for event in response.text.split("\n\n") if event.strip()]
    assert events[0].startswith("event: message_start")
    assert events[-1].startswith("event: error") and "message_stop" not in response.text
    [record] = ledger_rows(gw, bg)
    assert record["status"] == 502 and record["prompt_tokens"] > 0

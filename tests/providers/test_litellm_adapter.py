"""The litellm adapter against a real fake Anthropic server: wire format in, OpenAI bytes and errors out."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway.config import Deployment, Timeouts
from gateway.errors import (
    GatewayError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.fakes.anthropic_upstream import AnthropicBehaviour, FakeAnthropicUpstream
from gateway.fakes.background import BackgroundLoop
from gateway.providers.litellm_adapter import LiteLLMProvider
from gateway.wire import ChatRequest, ChatStream, Deadline

KEY = "sk-ant-test-0123456789-do-not-leak"
ENV = {"TEST_ANTHROPIC_KEY": KEY}
CONTENT = AnthropicBehaviour().content
PROMPT_WORDS = 9  # "You are terse." + "Say hello to the test suite", as chat() sends them
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def fake(bg: BackgroundLoop) -> Iterator[tuple[FakeAnthropicUpstream, str]]:
    upstream = FakeAnthropicUpstream()
    url = bg.run(upstream.start())
    yield upstream, url
    bg.run(upstream.stop())


@pytest.fixture
def upstream(fake: tuple[FakeAnthropicUpstream, str]) -> FakeAnthropicUpstream:
    server = fake[0]
    server.reset()
    return server


@pytest.fixture
def make_provider(
    bg: BackgroundLoop, fake: tuple[FakeAnthropicUpstream, str]
) -> Iterator[Callable[..., LiteLLMProvider]]:
    made: list[LiteLLMProvider] = []

    def make(environ: dict[str, str] = ENV, **overrides: Any) -> LiteLLMProvider:
        fields: dict[str, Any] = {
            "name": "claude",
            "provider": "anthropic",
            "model": "claude-test",
            "api_base": fake[1],  # no /v1: litellm appends /v1/messages itself
            "api_key_env": "TEST_ANTHROPIC_KEY",
            **overrides,
        }
        provider = LiteLLMProvider(Deployment(**fields), environ)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        bg.run(provider.aclose())


def chat(*, stream: bool = False, include_usage: bool = False, **body: Any) -> ChatRequest:
    payload: dict[str, Any] = {
        "model": "client-model",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello to the test suite"},
        ],
        **body,
    }
    return ChatRequest(body=payload, request_id="req-1", stream=stream, include_usage=include_usage)


def collect(
    bg: BackgroundLoop, provider: LiteLLMProvider, request: ChatRequest
) -> tuple[ChatStream, list[bytes]]:
    async def go() -> tuple[ChatStream, list[bytes]]:
        stream = await provider.open_stream(request, Deadline.after(10))
        try:
            return stream, [event async for event in stream]
        finally:
            await stream.aclose()

    return bg.run(go())


def chunks_of(events: list[bytes]) -> list[dict[str, Any]]:
    parsed = []
    for event in events:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n"), event
        assert b"[DONE]" not in event
        chunk = orjson.loads(event[len(b"data: ") :])
        ChatCompletionChunk.model_validate(chunk)
        parsed.append(chunk)
    return parsed


def test_complete_returns_openai_json_and_usage(
    bg: BackgroundLoop, upstream: FakeAnthropicUpstream, make_provider: Callable[..., LiteLLMProvider]
) -> None:
    provider = make_provider()
    completion = bg.run(provider.complete(chat(max_tokens=50, temperature=0.2), Deadline.after(10)))

    body = orjson.loads(completion.body)
    ChatCompletion.model_validate(body)
    assert body["object"] == "chat.completion"
    assert body["model"] == "claude-test"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": CONTENT}
    assert body["choices"][0]["finish_reason"] == "stop"
    prompt_words, answer_words = PROMPT_WORDS, len(CONTENT.split())
    assert body["usage"]["prompt_tokens"] == prompt_words
    assert body["usage"]["completion_tokens"] == answer_words
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        prompt_words,
        answer_words,
    )
    assert completion.usage.total_tokens == prompt_words + answer_words
    assert completion.upstream_seconds > 0

    [(headers, sent)] = upstream.requests
    assert headers["x-api-key"] == KEY
    assert headers["anthropic-version"]
    assert sent["model"] == "claude-test"
    assert sent["max_tokens"] == 50
    assert sent["temperature"] == 0.2
    assert sent["system"] == [{"type": "text", "text": "You are terse."}]
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Say hello to the test suite"}]}
    ]
    assert "stream" not in sent or sent["stream"] is False


def test_stream_yields_openai_chunks_without_usage_chunk(
    bg: BackgroundLoop, upstream: FakeAnthropicUpstream, make_provider: Callable[..., LiteLLMProvider]
) -> None:
    stream, events = collect(bg, make_provider(), chat(stream=True))
    chunks = chunks_of(events)

    assert all(chunk["choices"] for chunk in chunks)  # no usage-only chunk: the client did not ask
    assert all(chunk["model"] == "claude-test" and "usage" not in chunk for chunk in chunks)
    assert "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks) == CONTENT
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert stream.usage is not None
    assert stream.usage.completion_tokens == len(CONTENT.split())
    assert stream.usage.prompt_tokens == PROMPT_WORDS
    assert stream.first_byte_seconds > 0
    [(_, sent)] = upstream.requests
    assert sent["stream"] is True


def test_stream_usage_chunk_only_when_asked(
    bg: BackgroundLoop, make_provider: Callable[..., LiteLLMProvider]
) -> None:
    stream, events = collect(bg, make_provider(), chat(stream=True, include_usage=True))
    chunks = chunks_of(events)

    final = chunks[-1]
    assert final["choices"] == []
    assert final["usage"]["prompt_tokens"] == PROMPT_WORDS
    assert final["usage"]["completion_tokens"] == len(CONTENT.split())
    assert final["usage"]["total_tokens"] == PROMPT_WORDS + len(CONTENT.split())
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert stream.usage is not None and stream.usage.total_tokens == final["usage"]["total_tokens"]


def test_open_stream_returns_at_first_chunk_not_at_the_end(
    bg: BackgroundLoop, upstream: FakeAnthropicUpstream, make_provider: Callable[..., LiteLLMProvider]
) -> None:
    provider = make_provider()
    bg.run(provider.warm_up())
    upstream.script(AnthropicBehaviour(latency=0.2, chunks=5, chunk_delay=0.2))

    async def go() -> tuple[float, float, ChatStream, list[bytes]]:
        started = time.monotonic()
        stream = await provider.open_stream(chat(stream=True), Deadline.after(10))
        opened = time.monotonic() - started
        events = [event async for event in stream]
        return opened, time.monotonic() - started, stream, events

    opened, finished, stream, events = bg.run(go())
    assert 0.35 <= opened < 0.8  # latency + the first chunk's delay, not all five
    assert finished >= 1.1
    assert stream.first_byte_seconds >= 0.35
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks_of(events)) == CONTENT


def test_tool_use_becomes_openai_tool_calls(
    bg: BackgroundLoop, upstream: FakeAnthropicUpstream, make_provider: Callable[..., LiteLLMProvider]
) -> None:
    upstream.script(AnthropicBehaviour(tool_use=True))
    completion = bg.run(make_provider().complete(chat(tools=[WEATHER_TOOL]), Deadline.after(10)))

    body = orjson.loads(completion.body)
    ChatCompletion.model_validate(body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("toolu_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "fake", "days": 1}
    [(_, sent)] = upstream.requests
    [tool] = sent["tools"]
    assert tool["name"] == "get_weather"
    assert tool["input_schema"] == WEATHER_TOOL["function"]["parameters"]  # type: ignore[index]


def test_streamed_tool_use_becomes_tool_call_deltas(
    bg: BackgroundLoop, upstream: FakeAnthropicUpstream, make_provider: Callable[..., LiteLLMProvider]
) -> None:
    upstream.script(AnthropicBehaviour(tool_use=True, chunks=4))
    _, events = collect(bg, make_provider(), chat(stream=True, tools=[WEATHER_TOOL]))
    chunks = chunks_of(events)

    calls = [call for chunk in chunks for call in chunk["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0]["id"].startswith("toolu_") and calls[0]["function"]["name"] == "get_weather"
    arguments = "".join(call["function"].get("arguments", "") for call in calls)
    assert json.loads(arguments) == {"city": "fake", "days": 1}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("stream", [False, True])
def test_429_is_upstream_rate_limited(
    bg: BackgroundLoop,
    upstream: FakeAnthropicUpstream,
    make_provider: Callable[..., LiteLLMProvider],
    stream: bool,
) -> None:
    upstream.script(AnthropicBehaviour(status=429, retry_after=7))
    error = failure(bg, make_provider(), chat(stream=stream))
    assert isinstance(error, UpstreamRateLimited)
    assert error.status == 429 and error.retryable
    assert error.retry_after == 7


@pytest.mark.parametrize("status", [500, 529, 503])
def test_5xx_is_upstream_error(
    bg: BackgroundLoop,
    upstream: FakeAnthropicUpstream,
    make_provider: Callable[..., LiteLLMProvider],
    status: int,
) -> None:
    upstream.script(AnthropicBehaviour(status=status), AnthropicBehaviour(status=status))
    for stream in (False, True):
        error = failure(bg, make_provider(), chat(stream=stream))
        assert type(error) is UpstreamError
        assert error.status == 502 and error.retryable


def test_400_is_rejected_with_the_upstream_reason(
    bg: BackgroundLoop, upstream: FakeAnthropicUpstream, make_provider: Callable[..., LiteLLMProvider]
) -> None:
    upstream.script(
        AnthropicBehaviour(status=400, error_message="messages: text content blocks must be non-empty")
    )
    error = failure(bg, make_provider(), chat())
    assert isinstance(error, UpstreamRejected)
    assert error.status == 400 and not error.retryable
    assert "text content blocks must be non-empty" in error.message


def test_upstream_auth_failure_is_a_502_without_the_key(
    bg: BackgroundLoop, make_provider: Callable[..., LiteLLMProvider]
) -> None:
    strict = FakeAnthropicUpstream(api_key="the-right-key")
    url = bg.run(strict.start())
    try:
        error = failure(bg, make_provider(api_base=url), chat())
    finally:
        bg.run(strict.stop())
    assert type(error) is UpstreamError and error.status == 502
    assert strict.requests[0].headers["x-api-key"] == KEY
    assert_no_key(error)


def test_mid_stream_disconnect_raises_from_iteration(
    bg: BackgroundLoop, upstream: FakeAnthropicUpstream, make_provider: Callable[..., LiteLLMProvider]
) -> None:
    upstream.script(AnthropicBehaviour(disconnect_after=2))
    provider = make_provider()

    async def go() -> tuple[list[bytes], BaseException | None]:
        stream = await provider.open_stream(chat(stream=True), Deadline.after(10))
        received: list[bytes] = []
        try:
            async for event in stream:
                received.append(event)
        except Exception as exc:
            return received, exc
        finally:
            await stream.aclose()
        return received, None

    received, error = bg.run(go())
    assert len(chunks_of(received)) == 2
    assert isinstance(error, UpstreamError)
    assert_no_key(error)


@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_before_the_first_byte_fails_the_call(
    bg: BackgroundLoop,
    upstream: FakeAnthropicUpstream,
    make_provider: Callable[..., LiteLLMProvider],
    stream: bool,
) -> None:
    upstream.script(AnthropicBehaviour(disconnect_after=0))
    error = failure(bg, make_provider(), chat(stream=stream))
    assert type(error) is UpstreamError


def test_unreachable_upstream_is_upstream_error(
    bg: BackgroundLoop, make_provider: Callable[..., LiteLLMProvider]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    error = failure(bg, make_provider(api_base=closed), chat())
    assert type(error) is UpstreamError


@pytest.mark.parametrize("stream", [False, True])
def test_deadline_bounds_the_wait(
    bg: BackgroundLoop,
    upstream: FakeAnthropicUpstream,
    make_provider: Callable[..., LiteLLMProvider],
    stream: bool,
) -> None:
    provider = make_provider()
    bg.run(provider.warm_up())
    upstream.script(AnthropicBehaviour(latency=2.0))
    started = time.monotonic()
    error = failure(bg, provider, chat(stream=stream), Deadline.after(0.3))
    assert isinstance(error, UpstreamTimeout) and error.status == 504
    assert time.monotonic() - started < 1.5


def test_first_byte_timeout_applies_to_streams(
    bg: BackgroundLoop, upstream: FakeAnthropicUpstream, make_provider: Callable[..., LiteLLMProvider]
) -> None:
    provider = make_provider(timeouts=Timeouts(first_byte=0.3))
    bg.run(provider.warm_up())
    upstream.script(AnthropicBehaviour(latency=2.0))
    assert isinstance(failure(bg, provider, chat(stream=True)), UpstreamTimeout)


def test_stream_past_the_deadline_times_out_mid_way(
    bg: BackgroundLoop, upstream: FakeAnthropicUpstream, make_provider: Callable[..., LiteLLMProvider]
) -> None:
    provider = make_provider()
    bg.run(provider.warm_up())
    upstream.script(AnthropicBehaviour(chunks=10, chunk_delay=0.15))

    async def go() -> BaseException | None:
        stream = await provider.open_stream(chat(stream=True), Deadline.after(0.6))
        try:
            async for _ in stream:
                pass
        except Exception as exc:
            return exc
        finally:
            await stream.aclose()
        return None

    assert isinstance(bg.run(go()), UpstreamTimeout)


def test_missing_key_makes_the_provider_unavailable(
    bg: BackgroundLoop, upstream: FakeAnthropicUpstream, make_provider: Callable[..., LiteLLMProvider]
) -> None:
    provider = make_provider(environ={"TEST_ANTHROPIC_KEY": ""})
    assert provider.available is False
    assert provider.unavailable_reason == "TEST_ANTHROPIC_KEY is not set"
    assert isinstance(failure(bg, provider, chat()), UpstreamUnavailable)
    assert upstream.requests == []
    assert make_provider().available is True and make_provider().unavailable_reason == ""


def test_client_cannot_redirect_the_key(
    bg: BackgroundLoop, upstream: FakeAnthropicUpstream, make_provider: Callable[..., LiteLLMProvider]
) -> None:
    """litellm control keywords in the body (api_base, api_key, mock_response, ...) are not passed on."""
    hostile = chat(
        api_base="http://127.0.0.1:9", base_url="http://127.0.0.1:9", mock_response="mocked", api_key="x"
    )
    completion = bg.run(make_provider().complete(hostile, Deadline.after(10)))
    assert orjson.loads(completion.body)["choices"][0]["message"]["content"] == CONTENT
    assert upstream.requests[0].headers["x-api-key"] == KEY


def test_litellm_provider_kind_and_v1_suffix(
    bg: BackgroundLoop,
    upstream: FakeAnthropicUpstream,
    fake: tuple[FakeAnthropicUpstream, str],
    make_provider: Callable[..., LiteLLMProvider],
) -> None:
    provider = make_provider(provider="litellm", model="anthropic/claude-test", api_base=f"{fake[1]}/v1")
    completion = bg.run(provider.complete(chat(), Deadline.after(10)))
    assert orjson.loads(completion.body)["model"] == "anthropic/claude-test"
    assert upstream.requests[0].body["model"] == "claude-test"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429, 500, 529])
def test_error_messages_never_contain_the_key(
    bg: BackgroundLoop,
    upstream: FakeAnthropicUpstream,
    make_provider: Callable[..., LiteLLMProvider],
    status: int,
) -> None:
    upstream.script(AnthropicBehaviour(status=status, error_message=f"bad key {KEY}"))
    assert_no_key(failure(bg, make_provider(), chat()))


def test_litellm_is_not_imported_until_first_use() -> None:
    code = (
        "import sys\n"
        "from gateway.config import Deployment\n"
        "from gateway.providers.litellm_adapter import LiteLLMProvider\n"
        "LiteLLMProvider(Deployment(provider='anthropic', model='m', api_key_env='K'), {'K': 'k'})\n"
        "assert 'litellm' not in sys.modules, 'litellm imported eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def failure(
    bg: BackgroundLoop, provider: LiteLLMProvider, request: ChatRequest, deadline: Deadline | None = None
) -> GatewayError:
    async def go() -> GatewayError:
        try:
            if request.stream:
                stream = await provider.open_stream(request, deadline or Deadline.after(10))
                await stream.aclose()
            else:
                await provider.complete(request, deadline or Deadline.after(10))
        except GatewayError as error:
            return error
        raise AssertionError("the call succeeded")

    return bg.run(go())


def assert_no_key(error: GatewayError) -> None:
    for text in (str(error), error.message, error.to_json().decode(), repr(error)):
        assert KEY not in text
    assert error.__cause__ is None and error.__suppress_context__  # litellm's exception is not shown

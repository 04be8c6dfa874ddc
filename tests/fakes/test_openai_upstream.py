"""The fake OpenAI upstream, driven by the official client, so gateway tests can trust what it sends."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour, split_pieces, streamed_text

MESSAGES: list[Any] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]},
]
# 2 + 6 words, plus 3 per message.
PROMPT_TOKENS = 14
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def loop() -> Iterator[BackgroundLoop]:
    with BackgroundLoop() as background:
        yield background


@pytest.fixture
def fake(loop: BackgroundLoop) -> Iterator[FakeOpenAIUpstream]:
    upstream = FakeOpenAIUpstream()
    loop.run(upstream.start())
    yield upstream
    loop.run(upstream.stop())


@pytest.fixture
def client(fake: FakeOpenAIUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake.base_url, api_key="x", max_retries=0, timeout=5) as c:
        yield c


def wait_for(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def post_raw(url: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_non_stream_answer_usage_and_recording(fake: FakeOpenAIUpstream, client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == "gpt-test"
    assert reply.system_fingerprint
    [choice] = reply.choices
    assert choice.message.content == "Fake answer to: What is the capital of France?"
    assert choice.finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (PROMPT_TOKENS, 9)
    assert reply.usage.total_tokens == PROMPT_TOKENS + 9
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 0
    [recorded] = fake.requests
    assert recorded.headers["authorization"] == "Bearer x"
    assert recorded.body == {"model": "gpt-test", "messages": MESSAGES}


def test_model_name_content_and_usage_flag(loop: BackgroundLoop) -> None:
    fake = FakeOpenAIUpstream(default=Behaviour(content="one two three", usage=False), model_name="real-1")
    url = loop.run(fake.start())
    try:
        with openai.OpenAI(base_url=url, api_key="x", max_retries=0) as client:
            reply = client.chat.completions.create(model="alias", messages=MESSAGES)
            assert reply.model == "real-1"
            assert reply.choices[0].message.content == "one two three"
            assert reply.usage is None
            assert [m.id for m in client.models.list()] == ["real-1"]
    finally:
        loop.run(fake.stop())


def test_stream_without_usage(fake: FakeOpenAIUpstream, client: openai.OpenAI) -> None:
    fake.script(Behaviour(chunks=5, content="Paris is the capital."))
    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert len(chunks) == 1 + 5 + 1
    assert all(c.usage is None and len(c.choices) == 1 for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert all(pieces) and "".join(p or "" for p in pieces) == "Paris is the capital."
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {c.id for c in chunks} == {chunks[0].id}


def test_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert len(chunks) == 1 + 20 + 1 + 1
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == streamed_text(Behaviour(), MESSAGES)
    # The words of what was streamed: the same count the answer has when not streamed.
    words = len(text.split())
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        PROMPT_TOKENS,
        words,
        PROMPT_TOKENS + words,
    )


def test_stream_wire_format(fake: FakeOpenAIUpstream) -> None:
    """Byte-level framing, for the gateway's own SSE parser: data lines, blank-line separated, then [DONE]."""
    body = {"model": "m", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    for behaviour in (Behaviour(chunks=3), Behaviour(chunks=3, chunk_delay=0.001)):  # fast and paced paths
        fake.script(behaviour)
        status, headers, raw = post_raw(fake.base_url + "/chat/completions", json.dumps(body).encode())
        assert status == 200
        assert headers["Content-Type"] == "text/event-stream"
        events = raw.decode().split("\n\n")
        assert events[-2:] == ["data: [DONE]", ""]
        payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
        assert all(e.startswith("data: {") for e in events[:-2])
        assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert all(p["usage"] is None and p["object"] == "chat.completion.chunk" for p in payloads[:-1])
        assert payloads[-2]["choices"][0] == {
            "index": 0,
            "delta": {},
            "logprobs": None,
            "finish_reason": "stop",
        }
        assert payloads[-1]["choices"] == []
        assert payloads[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0}


def test_n_choices(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="m", messages=MESSAGES, n=2)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.usage is not None and reply.usage.completion_tokens == 18
    stream = client.chat.completions.create(
        model="m", messages=MESSAGES, n=2, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    texts = ["", ""]
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [streamed_text(Behaviour(), MESSAGES)] * 2
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 18  # as not streamed


def test_tool_call(fake: FakeOpenAIUpstream, client: openai.OpenAI) -> None:
    tools: Any = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}},
    ]
    fake.script(Behaviour(tool_call=True), Behaviour(tool_call=True, chunks=3))
    reply = client.chat.completions.create(model="m", messages=MESSAGES, tools=tools)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"x": 1}

    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, tools=tools, stream=True))
    assert len(chunks) == 1 + 3 + 1
    first = (chunks[0].choices[0].delta.tool_calls or [])[0]
    assert first.id and first.function is not None and first.function.name == "get_weather"
    arguments = ""
    for chunk in chunks[1:-1]:
        [delta] = chunk.choices[0].delta.tool_calls or []
        assert delta.index == 0 and delta.function is not None
        arguments += delta.function.arguments or ""
    assert json.loads(arguments) == {"x": 1}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_scripted_500_and_429(fake: FakeOpenAIUpstream, client: openai.OpenAI) -> None:
    fake.script(Behaviour(status=500, error_message="boom"), Behaviour(status=429, retry_after=2))
    with pytest.raises(openai.InternalServerError) as server_error:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert server_error.value.body == {"message": "boom", "type": "server_error", "param": None, "code": None}
    with pytest.raises(openai.RateLimitError) as rate_limited:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert rate_limited.value.response.headers["retry-after"] == "2"
    assert client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content
    assert len(fake.requests) == 3


def test_disconnect_mid_stream(fake: FakeOpenAIUpstream, client: openai.OpenAI) -> None:
    fake.script(Behaviour(disconnect_after=3))
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(model="m", messages=MESSAGES, stream=True):
            received.append(chunk.choices[0].delta.content or "")
    assert len(received) == 1 + 3
    assert "".join(received) == "".join(split_pieces(streamed_text(Behaviour(), MESSAGES), 20)[:3])
    assert fake.cancelled == 0  # the fake hung up, not the client


def test_disconnect_after_headers_and_non_stream(fake: FakeOpenAIUpstream, client: openai.OpenAI) -> None:
    fake.script(Behaviour(disconnect_after=0), Behaviour(disconnect_after=0))
    with pytest.raises(openai.APIConnectionError):
        list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=MESSAGES)


def test_latency_and_first_chunk_delay(fake: FakeOpenAIUpstream, client: openai.OpenAI) -> None:
    fake.script(Behaviour(latency=0.2), Behaviour(first_chunk_delay=0.4, chunks=2))
    started = time.monotonic()
    client.chat.completions.create(model="m", messages=MESSAGES)
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    headers_at = time.monotonic() - started
    next(iter(stream))
    first_at = time.monotonic() - started
    stream.close()
    assert headers_at < 0.3 and first_at >= 0.4


def test_hang_until_client_gives_up(fake: FakeOpenAIUpstream, client: openai.OpenAI) -> None:
    fake.script(Behaviour(hang=True))
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).chat.completions.create(model="m", messages=MESSAGES)
    wait_for(lambda: fake.cancelled == 1)


def test_client_closing_a_stream_is_counted(fake: FakeOpenAIUpstream, client: openai.OpenAI) -> None:
    fake.script(Behaviour(chunk_delay=0.05))
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    chunks = iter(stream)
    next(chunks)
    next(chunks)
    stream.close()
    wait_for(lambda: fake.cancelled == 1)


def test_garbage(fake: FakeOpenAIUpstream, client: openai.OpenAI) -> None:
    fake.script(Behaviour(garbage=True), Behaviour(garbage=True))
    with pytest.raises(ValueError, match="double quotes"):
        client.chat.completions.create(model="m", messages=MESSAGES)
    with pytest.raises(ValueError, match="double quotes"):
        list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))


def test_malformed_json_and_unknown_path(fake: FakeOpenAIUpstream) -> None:
    status, headers, raw = post_raw(fake.base_url + "/chat/completions", b"{not json")
    assert status == 400
    assert headers["Content-Type"] == "application/json"
    assert json.loads(raw)["error"]["type"] == "invalid_request_error"
    status, _, raw = post_raw(fake.base_url + "/completions", b"{}")
    assert status == 404 and "error" in json.loads(raw)
    assert fake.requests == []


def test_behaviour_validation_and_pieces() -> None:
    with pytest.raises(ValueError, match="chunks"):
        Behaviour(chunks=0)
    assert split_pieces("abcdef", 3) == ["ab", "cd", "ef"]
    pieces = split_pieces("ok", 5)
    assert len(pieces) == 5 and all(pieces)


def test_cli_ready_line_and_sigterm() -> None:
    command = [sys.executable, "-m", "gateway.fakes.openai_upstream", "--port", "0", "--chunks", "4"]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith("READY http://127.0.0.1:") and line.endswith("/v1\n")
            with openai.OpenAI(base_url=line.split()[1], api_key="x", max_retries=0) as client:
                chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
            assert len(chunks) == 1 + 4 + 1
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 0
            assert process.stdout.read() == ""
        finally:
            if process.poll() is None:
                process.kill()


def test_answers_can_be_sized_by_max_tokens_for_replayed_traces(loop: BackgroundLoop) -> None:
    sized = FakeOpenAIUpstream(answer_max_tokens=50)
    loop.run(sized.start())
    try:
        with openai.OpenAI(base_url=sized.base_url, api_key="x", max_retries=0, timeout=5) as client:
            short = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=7)
            capped = client.chat.completions.create(model="m", messages=MESSAGES, max_completion_tokens=80)
            unsized = client.chat.completions.create(model="m", messages=MESSAGES)
    finally:
        loop.run(sized.stop())
    assert short.usage is not None and short.usage.completion_tokens == 7
    assert len((short.choices[0].message.content or "").split()) == 7
    assert capped.usage is not None and capped.usage.completion_tokens == 50  # the fake's own cap
    assert "capital of France" in (unsized.choices[0].message.content or "")  # no max_tokens: the echo

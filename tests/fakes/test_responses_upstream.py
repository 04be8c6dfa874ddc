"""The fake OpenAI upstream's Responses API (`POST /v1/responses`), checked against the official client and
the SDK's own types, so gateway tests can trust what it sends."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import FALLBACK_TOOL_NAME, TOOL_ARGUMENTS, Behaviour, split_pieces

INSTRUCTIONS = "Be brief."
INPUT: list[Any] = [
    {"role": "developer", "content": "Answer in one word."},
    {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "What is the capital of France?"}],
    },
]
# 2 words of instructions + 4 + 6: no per-message extra, unlike chat.
INPUT_TOKENS = 12
ANSWER = "Fake answer to: What is the capital of France?"
ANSWER_TOKENS = 9
TOOLS: list[Any] = [
    {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    {"type": "function", "name": "other", "parameters": {"type": "object", "properties": {}}},
]
STREAM_EVENT: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
TEXT_OPENING = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
TEXT_CLOSING = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


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


def post(fake: FakeOpenAIUpstream, body: Any) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        fake.base_url + "/responses", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """The events of a Responses stream, each checked: its framing, its `event:` line naming its type,
    and its shape against the SDK's ResponseStreamEvent."""
    blocks = raw.decode().split("\n\n")
    assert blocks[-1] == ""
    events = []
    for block in blocks[:-1]:
        event_line, data_line = block.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == event_line.removeprefix("event: ")
        STREAM_EVENT.validate_python(data)
        events.append(data)
    return events


def test_plain_answer_is_a_valid_response_and_the_request_is_recorded(fake: FakeOpenAIUpstream) -> None:
    body = {"model": "gpt-test", "input": INPUT, "instructions": INSTRUCTIONS, "store": False}
    status, headers, raw = post(fake, body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    payload = json.loads(raw)
    response = Response.model_validate(payload)
    assert response.output_text == ANSWER
    assert (payload["id"], payload["object"], payload["status"]) == ("resp_fake1", "response", "completed")
    assert payload["model"] == "gpt-test"
    assert abs(payload["created_at"] - time.time()) < 5
    assert payload["instructions"] == INSTRUCTIONS and payload["store"] is False
    assert payload["previous_response_id"] is None and payload["incomplete_details"] is None
    assert payload["output"] == [
        {
            "id": "msg_fake1",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": ANSWER, "annotations": [], "logprobs": []}],
        }
    ]
    assert payload["usage"] == {
        "input_tokens": INPUT_TOKENS,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": ANSWER_TOKENS,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": INPUT_TOKENS + ANSWER_TOKENS,
    }
    assert "[DONE]" not in raw.decode()
    [recorded] = fake.requests
    assert recorded.body == body
    assert fake.request_count == 1


def test_official_client_create(fake: FakeOpenAIUpstream, client: openai.OpenAI) -> None:
    reply = client.responses.create(model="m", input="Hello there, fake", instructions=INSTRUCTIONS)
    assert reply.output_text == "Fake answer to: Hello there, fake"
    assert reply.model == "m" and reply.status == "completed"
    assert reply.usage is not None
    assert (reply.usage.input_tokens, reply.usage.output_tokens, reply.usage.total_tokens) == (5, 6, 11)
    assert fake.requests[-1].headers["authorization"] == "Bearer x"
    assert fake.requests[-1].body["input"] == "Hello there, fake"


def test_model_name_content_and_usage_flag(loop: BackgroundLoop) -> None:
    fake = FakeOpenAIUpstream(default=Behaviour(content="one two three", usage=False), model_name="real-1")
    url = loop.run(fake.start())
    try:
        with openai.OpenAI(base_url=url, api_key="x", max_retries=0) as client:
            reply = client.responses.create(model="alias", input=INPUT)
            assert reply.model == "real-1"
            assert reply.output_text == "one two three"
            assert reply.usage is None
    finally:
        loop.run(fake.stop())


def test_history_items_are_read_and_unknown_ones_ignored(client: openai.OpenAI) -> None:
    history: Any = [
        {"role": "user", "content": "What is the weather?"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Let me check.", "annotations": []}],
        },
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "not counted"}]},
        {"type": "mystery", "text": "ignored words"},
        {"role": "user", "content": [{"type": "input_text", "text": "And tomorrow?"}]},
    ]
    reply = client.responses.create(model="m", input=history, tools=TOOLS)
    assert reply.output_text == "Fake answer to: And tomorrow?"
    assert reply.usage is not None
    # 4 + 3 + 2 (the arguments' words) + 1 + 2: tools are not counted.
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (12, 5)
    assert [tool.name for tool in reply.tools if tool.type == "function"] == ["get_weather", "other"]


def test_the_chat_script_queue_serves_both_apis(fake: FakeOpenAIUpstream, client: openai.OpenAI) -> None:
    fake.script(Behaviour(content="first"), Behaviour(content="second"))
    chat = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content == "first"
    assert client.responses.create(model="m", input="hi").output_text == "second"
    assert client.responses.create(model="m", input="hi").output_text == "Fake answer to: hi"
    assert fake.request_count == 3 and len(fake.requests) == 3


def test_stream_with_the_official_client(fake: FakeOpenAIUpstream, client: openai.OpenAI) -> None:
    fake.script(Behaviour(chunks=5, content="Paris is the capital."))
    with client.responses.stream(model="m", input=INPUT, instructions=INSTRUCTIONS) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.type for e in events] == TEXT_OPENING + ["response.output_text.delta"] * 5 + TEXT_CLOSING
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert all(deltas) and "".join(deltas) == "Paris is the capital."
    assert final.id == "resp_fake1" and final.status == "completed"
    assert final.output_text == "Paris is the capital."
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (INPUT_TOKENS, 4)
    assert fake.requests[-1].body["stream"] is True


def test_stream_wire_format(fake: FakeOpenAIUpstream) -> None:
    """Byte-level framing for the gateway's own parser: `event:` and `data:` lines, blank-line separated,
    sequence numbers from 0, no [DONE]; the fast and the paced paths alike."""
    body = {"model": "m", "input": INPUT, "instructions": INSTRUCTIONS, "stream": True}
    for number, behaviour in enumerate((Behaviour(chunks=3), Behaviour(chunks=3, chunk_delay=0.001)), 1):
        fake.script(behaviour)
        status, headers, raw = post(fake, body)
        assert status == 200 and headers["Content-Type"] == "text/event-stream"
        assert b"[DONE]" not in raw
        events = sse_events(raw)
        assert [e["type"] for e in events] == TEXT_OPENING + ["response.output_text.delta"] * 3 + TEXT_CLOSING
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        created = Response.model_validate(events[0]["response"])
        assert created.id == f"resp_fake{number}" and created.status == "in_progress"
        assert created.output == [] and created.usage is None
        assert events[2]["item"] == {
            "id": f"msg_fake{number}",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        assert all(e["item_id"] == f"msg_fake{number}" for e in events[3:-2])
        pieces = [e["delta"] for e in events[4:7]]
        assert pieces == split_pieces(ANSWER, 3)
        assert events[7]["text"] == ANSWER and events[8]["part"]["text"] == ANSWER
        assert events[9]["item"]["status"] == "completed"
        completed = Response.model_validate(events[-1]["response"])
        assert completed.output_text == ANSWER and completed.status == "completed"
        assert completed.usage is not None
        assert (completed.usage.input_tokens, completed.usage.output_tokens) == (INPUT_TOKENS, ANSWER_TOKENS)


def test_a_short_text_fills_the_chunks_and_the_final_response_matches(client: openai.OpenAI) -> None:
    """As the chat fake's: a text shorter than `chunks` repeats; the final text is what the deltas add
    up to, and its usage counts those words."""
    with client.responses.stream(model="m", input="hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert len(deltas) == 20
    assert final.output_text == "".join(deltas) == "".join(split_pieces("Fake answer to: hi", 20))
    assert final.usage is not None and final.usage.output_tokens == len("".join(deltas).split())


def test_tool_call(fake: FakeOpenAIUpstream, client: openai.OpenAI) -> None:
    fake.script(Behaviour(tool_call=True), Behaviour(tool_call=True, chunks=3), Behaviour(tool_call=True))
    reply = client.responses.create(model="m", input=INPUT, tools=TOOLS)
    assert reply.model_dump(exclude_unset=True)["output"] == [
        {
            "id": "fc_fake1",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_fake1",
            "name": "get_weather",
            "arguments": TOOL_ARGUMENTS,
        }
    ]
    assert reply.status == "completed" and reply.output_text == ""
    assert reply.usage is not None and reply.usage.output_tokens == 2  # the words of TOOL_ARGUMENTS

    with client.responses.stream(model="m", input=INPUT, tools=TOOLS) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * 3,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = events[2]
    assert added.type == "response.output_item.added" and added.item.type == "function_call"
    assert (added.item.name, added.item.arguments, added.item.status) == ("get_weather", "", "in_progress")
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert "".join(deltas) == TOOL_ARGUMENTS
    [item] = final.output
    assert item.type == "function_call" and item.call_id == "call_fake2" and item.name == "get_weather"
    assert json.loads(item.arguments) == {"x": 1}
    assert final.usage is not None and final.usage.output_tokens == 2

    reply = client.responses.create(model="m", input=INPUT)  # no tools: the chat fake's fallback name
    [item] = reply.output
    assert item.type == "function_call" and item.name == FALLBACK_TOOL_NAME


def test_max_output_tokens_cuts_the_answer(fake: FakeOpenAIUpstream, client: openai.OpenAI) -> None:
    reply = client.responses.create(model="m", input=INPUT, max_output_tokens=3)
    assert reply.status == "incomplete"
    assert reply.incomplete_details is not None and reply.incomplete_details.reason == "max_output_tokens"
    assert reply.output_text == "Fake answer to:" and reply.max_output_tokens == 3
    assert reply.output[0].type == "message" and reply.output[0].status == "incomplete"
    assert reply.usage is not None and reply.usage.output_tokens == 3

    events = list(client.responses.create(model="m", input=INPUT, max_output_tokens=3, stream=True))
    assert events[-1].type == "response.incomplete"
    final = events[-1].response
    assert final.status == "incomplete" and final.output_text == "Fake answer to:"
    assert final.usage is not None and final.usage.output_tokens == 3
    # Repeating the short text to fill the 20 chunks would pass the limit: fewer deltas instead.
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == len("Fake answer to:")
    events = list(client.responses.create(model="m", input="hi", max_output_tokens=5, stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "Fake answer to: hi"
    assert client.responses.create(model="m", input=INPUT, max_output_tokens=50).status == "completed"


def test_previous_response_id_is_refused(fake: FakeOpenAIUpstream, client: openai.OpenAI) -> None:
    fake.script(Behaviour(content="scripted"))
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="m", input="and then?", previous_response_id="resp_earlier")
    assert refused.value.status_code == 400
    assert "this fake stores no responses" in refused.value.message
    assert isinstance(refused.value.body, dict) and refused.value.body["type"] == "invalid_request_error"
    # Recorded (the test can see what was sent), but it spent no scripted behaviour.
    assert fake.requests[-1].body["previous_response_id"] == "resp_earlier"
    assert fake.request_count == 1
    status, _, raw = post(fake, {"model": "m", "input": "hi", "previous_response_id": None})
    assert status == 200 and Response.model_validate_json(raw).output_text == "scripted"


def test_malformed_requests(fake: FakeOpenAIUpstream) -> None:
    for body, mentions in (
        (b"{not json", "JSON"),
        (b"[]", "object"),
        ({"model": "m"}, "'input'"),
        ({"model": "m", "input": {"role": "user"}}, "'input'"),
        ({"model": "m", "input": "hi", "instructions": ["x"]}, "'instructions'"),
        ({"model": "m", "input": "hi", "tools": {"type": "function"}}, "'tools'"),
    ):
        status, headers, raw = post(fake, body)
        assert status == 400 and headers["Content-Type"] == "application/json"
        error = json.loads(raw)["error"]
        assert error["type"] == "invalid_request_error" and mentions in error["message"]
    assert fake.requests == [] and fake.request_count == 0


def test_scripted_errors_and_latency(fake: FakeOpenAIUpstream, client: openai.OpenAI) -> None:
    fake.script(
        Behaviour(status=500, error_message="boom"),
        Behaviour(status=429, retry_after=2),
        Behaviour(status=503),
        Behaviour(latency=0.2),
    )
    with pytest.raises(openai.InternalServerError) as server_error:
        client.responses.create(model="m", input="hi")
    assert server_error.value.body == {"message": "boom", "type": "server_error", "param": None, "code": None}
    with pytest.raises(openai.RateLimitError) as rate_limited:
        client.responses.create(model="m", input="hi")
    assert rate_limited.value.response.headers["retry-after"] == "2"
    with pytest.raises(openai.InternalServerError) as unavailable:  # streamed: the error before any event
        list(client.responses.create(model="m", input="hi", stream=True))
    assert unavailable.value.status_code == 503
    started = time.monotonic()
    assert client.responses.create(model="m", input="hi").output_text == "Fake answer to: hi"
    assert time.monotonic() - started >= 0.2
    assert len(fake.requests) == 4


def test_disconnect_mid_stream(fake: FakeOpenAIUpstream, client: openai.OpenAI) -> None:
    fake.script(Behaviour(disconnect_after=3))
    received: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        for event in client.responses.create(model="m", input=INPUT, stream=True):
            received.append(event)
    assert [e.type for e in received] == TEXT_OPENING + ["response.output_text.delta"] * 3
    assert [e.delta for e in received[4:]] == split_pieces(ANSWER, 20)[:3]
    assert fake.cancelled == 0  # the fake hung up, not the client


def test_disconnect_after_headers_and_not_streamed(fake: FakeOpenAIUpstream, client: openai.OpenAI) -> None:
    fake.script(Behaviour(disconnect_after=0), Behaviour(disconnect_after=0), Behaviour(disconnect_after=30))
    received: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        received.extend(client.responses.create(model="m", input="hi", stream=True))
    assert received == []
    with pytest.raises(openai.APIConnectionError):
        client.responses.create(model="m", input="hi")
    with pytest.raises(openai.APIConnectionError):  # past the last delta: cut before the .done events
        received.extend(client.responses.create(model="m", input="hi", stream=True))
    assert received[-1].type == "response.output_text.delta"


def test_garbage(fake: FakeOpenAIUpstream, client: openai.OpenAI) -> None:
    fake.script(Behaviour(garbage=True), Behaviour(garbage=True))
    with pytest.raises(ValueError, match="double quotes"):
        client.responses.create(model="m", input="hi")
    with pytest.raises(ValueError, match="double quotes"):
        list(client.responses.create(model="m", input="hi", stream=True))


def test_hang_and_a_client_closing_a_stream_are_counted(
    fake: FakeOpenAIUpstream, client: openai.OpenAI
) -> None:
    fake.script(Behaviour(hang=True), Behaviour(chunk_delay=0.05))
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).responses.create(model="m", input="hi")
    wait_for(lambda: fake.cancelled == 1)
    stream = client.responses.create(model="m", input="hi", stream=True)
    events = iter(stream)
    for _ in range(5):
        next(events)
    stream.close()
    wait_for(lambda: fake.cancelled == 2)


def test_first_chunk_delay_comes_after_the_headers(fake: FakeOpenAIUpstream, client: openai.OpenAI) -> None:
    fake.script(Behaviour(first_chunk_delay=0.4, chunks=2))
    started = time.monotonic()
    stream = client.responses.create(model="m", input="hi", stream=True)
    headers_at = time.monotonic() - started
    first = next(iter(stream))
    first_at = time.monotonic() - started
    stream.close()
    assert first.type == "response.created"
    assert headers_at < 0.3 and first_at >= 0.4

"""The Responses adapter: requests translated into chat requests, chat answers and streams rendered
as Responses objects and events (checked against the openai SDK's own types and stream
accumulator), stored responses continued with previous_response_id, and every refusal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.errors import GatewayError, InvalidRequest, NotFound, RateLimited, UpstreamTimeout
from gateway.inbound.response_store import StoredResponse, tenant_of
from gateway.inbound.responses import Responses, input_items_page
from gateway.inbound.responses_render import StoredResponsesUnavailable
from gateway.wire import Caller, ChatRequest, Completion, Usage

openai = pytest.importorskip("openai")
from openai.lib.streaming.responses._responses import ResponseStreamState  # noqa: E402
from openai.types.responses import Response, ResponseItemList, ResponseStreamEvent  # noqa: E402
from pydantic import TypeAdapter  # noqa: E402

STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
TEAM = Caller(team="team-a", key="key-1")


class InMemoryResponseStore:
    """The ResponseStore contract in a dict: reads are scoped to the tenant."""

    def __init__(self) -> None:
        self.responses: dict[tuple[str, str], StoredResponse] = {}

    async def put(self, stored: StoredResponse) -> None:
        self.responses[(stored.tenant, stored.id)] = stored

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        return self.responses.get((tenant, response_id))

    async def delete(self, tenant: str, response_id: str) -> bool:
        return self.responses.pop((tenant, response_id), None) is not None

    async def aclose(self) -> None:
        return None


class Chunks:
    """A ChatStream of SSE blocks; like the real ones, its usage is known once iteration ended."""

    first_byte_seconds = 0.0

    native = False

    def __init__(self, blocks: list[bytes], usage: Usage | None = None) -> None:
        self._blocks = blocks
        self._final_usage = usage
        self.usage: Usage | None = None

    async def _each(self) -> AsyncIterator[bytes]:
        for block in self._blocks:
            yield block
        self.usage = self._final_usage

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._each()

    async def aclose(self) -> None:
        return None


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "upstream-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


def tool_delta(index: int, arguments: str, call_id: str | None = None, name: str | None = None) -> bytes:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        call.update(id=call_id, type="function")
        call["function"]["name"] = name
    return chunk({"tool_calls": [call]})


def completion(message: dict[str, Any], finish: str = "stop", usage: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "upstream-model",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    return orjson.dumps(body)


USAGE = {
    "prompt_tokens": 10,
    "completion_tokens": 5,
    "total_tokens": 15,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 2},
}


def parse(
    body: dict[str, Any], store: InMemoryResponseStore | None = None, caller: Caller = TEAM
) -> ChatRequest:
    api = Responses(store or InMemoryResponseStore())
    return asyncio.run(api.parse(orjson.dumps(body), "req-1", caller))


def answer(
    body: dict[str, Any], chat_answer: bytes, store: InMemoryResponseStore, usage: Usage | None = None
) -> dict[str, Any]:
    api = Responses(store)

    async def run() -> bytes:
        request = await api.parse(orjson.dumps(body), "req-1", TEAM)
        return await api.body_of(request, Completion(chat_answer, usage, 0.1))

    rendered: dict[str, Any] = orjson.loads(asyncio.run(run()))
    Response.model_validate(rendered)
    return rendered


def stream(
    body: dict[str, Any],
    blocks: list[bytes],
    store: InMemoryResponseStore,
    usage: Usage | None = None,
    fail_with: GatewayError | None = None,
) -> list[bytes]:
    """The blocks the adapter sends for a streamed answer (its end, or its error)."""
    api = Responses(store)

    async def run() -> list[bytes]:
        request = await api.parse(orjson.dumps({**body, "stream": True}), "req-1", TEAM)
        outbound = api.stream_of(request, Chunks(blocks, usage))
        sent = [block async for block in outbound]
        sent.append(outbound.error(fail_with) if fail_with else await outbound.end())
        return sent

    return asyncio.run(run())


def events_of(sent: list[bytes]) -> list[dict[str, Any]]:
    """The events in the blocks, each checked: SSE framing, the SDK's event types, sequence numbers."""
    events = []
    for block in sent:
        assert block, "an empty block was sent"
        assert block.endswith(b"\n\n")
        for frame in block[:-2].split(b"\n\n"):
            name_line, data_line = frame.split(b"\n")
            data = orjson.loads(data_line.removeprefix(b"data: "))
            assert name_line == b"event: " + data["type"].encode()
            STREAM_EVENT.validate_python(data)
            events.append(data)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    return events


def accumulated(events: list[dict[str, Any]]) -> Any:
    """What the SDK's own stream accumulator makes of the events: the final parsed Response."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=openai.omit, text_format=openai.omit)
    for data in events:
        state.handle_event(STREAM_EVENT.validate_python(data))
    return state._completed_response


# Requests.


def test_a_string_input_is_one_user_message_and_the_request_is_a_chat_request() -> None:
    request = parse({"model": "gpt-x", "input": "hello"})
    assert request.body == {"model": "gpt-x", "messages": [{"role": "user", "content": "hello"}]}
    assert (request.request_id, request.stream, request.include_usage, request.api) == (
        "req-1",
        False,
        False,
        "responses",
    )
    [item] = request.inbound.input_items
    assert item["type"] == "message" and item["role"] == "user" and item["id"].startswith("msg_")
    assert item["content"] == [{"type": "input_text", "text": "hello"}]
    assert request.inbound.response_id.startswith("resp_")


def test_every_request_gets_its_own_response_id_even_with_the_same_request_id() -> None:
    first = parse({"model": "m", "input": "hi"})
    second = parse({"model": "m", "input": "hi"})
    assert first.inbound.response_id != second.inbound.response_id


def test_input_items_of_each_kind_become_chat_messages() -> None:
    data_url = "data:image/png;base64,iVBORw0KGgo="
    body = {
        "model": "m",
        "input": [
            {"role": "system", "content": "be brief"},
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "dev"}]},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "what is in"},
                    {"type": "input_image", "image_url": "https://x/cat.png", "detail": "high"},
                    {"type": "input_image", "image_url": data_url},
                ],
            },
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "hmm"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me"}]},
            {"type": "function_call", "call_id": "call_a", "name": "look", "arguments": '{"q":1}'},
            {"type": "function_call", "id": "fc_b", "call_id": "call_b", "name": "look", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_a", "output": "a cat"},
            {
                "type": "function_call_output",
                "call_id": "call_b",
                "output": [{"type": "input_text", "text": "b"}],
            },
            {"role": "user", "content": "thanks"},
        ],
    }
    messages = parse(body).body["messages"]
    assert messages == [
        {"role": "system", "content": "be brief"},
        {"role": "system", "content": "dev"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is in"},
                {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": data_url}},
            ],
        },
        {
            "role": "assistant",
            "content": "Let me",
            "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "look", "arguments": '{"q":1}'}},
                {"id": "call_b", "type": "function", "function": {"name": "look", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "a cat"},
        {"role": "tool", "tool_call_id": "call_b", "content": "b"},
        {"role": "user", "content": "thanks"},
    ]


def test_consecutive_function_calls_without_text_make_one_assistant_message() -> None:
    calls = [
        {"type": "function_call", "call_id": f"call_{n}", "name": "f", "arguments": "{}"} for n in range(2)
    ]
    messages = parse({"model": "m", "input": [{"role": "user", "content": "go"}, *calls]}).body["messages"]
    assert messages[1]["content"] is None
    assert [call["id"] for call in messages[1]["tool_calls"]] == ["call_0", "call_1"]
    assert len(messages) == 2


def test_input_items_are_kept_with_ids_as_the_input_items_list_shows_them() -> None:
    body = {
        "model": "m",
        "input": [
            {"role": "user", "content": "hi", "id": "msg_mine"},
            {"type": "message", "role": "assistant", "content": "hello"},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "ok"},
        ],
    }
    items = parse(body).inbound.input_items
    assert items[0]["id"] == "msg_mine"
    assert len({item["id"] for item in items}) == 4
    assert items[1]["content"] == [{"type": "output_text", "text": "hello", "annotations": []}]
    stored = StoredResponse("resp_1", "t", {}, items, [], 0.0)
    ResponseItemList.model_validate(input_items_page(stored, after=None, limit=20, order="asc"))


def test_instructions_lead_as_a_system_message_but_are_not_part_of_the_conversation() -> None:
    request = parse({"model": "m", "instructions": "You are terse.", "input": "hi"})
    assert request.body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hi"},
    ]
    assert request.inbound.conversation == [{"role": "user", "content": "hi"}]


def test_function_tools_and_tool_choice_become_chat_tools() -> None:
    tool = {
        "type": "function",
        "name": "weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    }
    body = {
        "model": "m",
        "input": "hi",
        "tools": [tool],
        "tool_choice": {"type": "function", "name": "weather"},
        "parallel_tool_calls": False,
    }
    chat = parse(body).body
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather in a city",
                "parameters": tool["parameters"],
                "strict": True,
            },
        }
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert chat["parallel_tool_calls"] is False
    assert parse({**body, "tool_choice": "required"}).body["tool_choice"] == "required"


def test_tool_choice_and_parallel_tool_calls_are_not_sent_without_tools() -> None:
    chat = parse({"model": "m", "input": "hi", "tool_choice": "none", "parallel_tool_calls": True}).body
    assert "tool_choice" not in chat and "parallel_tool_calls" not in chat and "tools" not in chat


@pytest.mark.parametrize(
    ("text", "response_format"),
    [
        ({"format": {"type": "text"}}, None),
        ({"format": {"type": "json_object"}}, {"type": "json_object"}),
        (
            {"format": {"type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": True}},
            {
                "type": "json_schema",
                "json_schema": {"name": "city", "schema": {"type": "object"}, "strict": True},
            },
        ),
    ],
)
def test_text_format_becomes_a_response_format(
    text: dict[str, Any], response_format: dict[str, Any] | None
) -> None:
    chat = parse({"model": "m", "input": "hi", "text": text}).body
    assert chat.get("response_format") == response_format


def test_sampling_and_reasoning_fields_are_translated_and_the_rest_are_not_forwarded() -> None:
    body = {
        "model": "m",
        "input": "hi",
        "max_output_tokens": 100,
        "temperature": 0.5,
        "top_p": 0.9,
        "user": "u-1",
        "reasoning": {"effort": "high", "summary": "auto"},
        "text": {"verbosity": "low"},
        "service_tier": "flex",
        "prompt_cache_key": "pck",
        "safety_identifier": "sid",
        "metadata": {"k": "v"},
        "include": ["reasoning.encrypted_content"],
        "truncation": "auto",
        "store": False,
        "top_logprobs": 2,
        "stream_options": {"include_obfuscation": False},
        "some_future_field": 1,
    }
    chat = parse(body).body
    assert chat == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 100,
        "temperature": 0.5,
        "top_p": 0.9,
        "user": "u-1",
        "reasoning_effort": "high",
        "verbosity": "low",
        "service_tier": "flex",
        "prompt_cache_key": "pck",
        "safety_identifier": "sid",
    }


def test_a_stream_request_asks_the_upstream_for_a_stream() -> None:
    request = parse({"model": "m", "input": "hi", "stream": True})
    assert request.stream is True and request.body["stream"] is True
    assert request.include_usage is False


def test_previous_response_id_continues_the_stored_conversation_after_the_instructions() -> None:
    store = InMemoryResponseStore()
    first = answer(
        {"model": "m", "instructions": "old rules", "input": "hi"}, completion({"content": "hello"}), store
    )
    request = parse(
        {
            "model": "m",
            "instructions": "new rules",
            "input": "and then?",
            "previous_response_id": first["id"],
        },
        store,
    )
    assert request.body["messages"] == [
        {"role": "system", "content": "new rules"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and then?"},
    ]
    assert request.inbound.previous_response_id == first["id"]


@pytest.mark.parametrize("caller", [Caller(team="team-b"), Caller(key="key-1"), Caller()])
def test_a_previous_response_that_is_missing_or_another_tenants_is_not_found(caller: Caller) -> None:
    store = InMemoryResponseStore()
    first = answer({"model": "m", "input": "hi"}, completion({"content": "hello"}), store)
    for response_id in (first["id"], "resp_nothing"):
        with pytest.raises(NotFound) as raised:
            parse({"model": "m", "input": "x", "previous_response_id": response_id}, store, caller)
        assert raised.value.status == 404
        assert raised.value.param == "previous_response_id"
        assert raised.value.message == f"Previous response with id '{response_id}' not found."


def test_the_tenant_is_the_team_else_the_key_else_nobody() -> None:
    assert tenant_of(Caller(team="t", key="k")) == "t"
    assert tenant_of(Caller(key="k")) == "k"
    assert tenant_of(Caller()) == ""


REFUSED_TOOLS = [
    "web_search",
    "web_search_preview",
    "file_search",
    "computer_use_preview",
    "code_interpreter",
    "image_generation",
    "mcp",
    "local_shell",
]
REFUSED_ITEMS = [
    "item_reference",
    "file_search_call",
    "web_search_call",
    "computer_call",
    "computer_call_output",
    "local_shell_call",
    "local_shell_call_output",
    "something_new",
]
USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": None}, "model"),
        ({"model": ""}, "model"),
        ({"model": 3}, "model"),
        ({"input": None}, "input"),
        ({"input": 5}, "input"),
        ({"input": []}, "input"),
        ({"input": ["hi"]}, "input.0"),
        ({"input": [{"type": 7}]}, "input.0.type"),
        *(({"input": [USER, {"type": kind, "id": "x"}]}, "input.1.type") for kind in REFUSED_ITEMS),
        ({"input": [{"content": "hi"}]}, "input.0.role"),
        ({"input": [{"role": "robot", "content": "hi"}]}, "input.0.role"),
        ({"input": [{"role": "user"}]}, "input.0.content"),
        ({"input": [{"role": "user", "content": 5}]}, "input.0.content"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input.0.content.0.type",
        ),
        ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input.0.content.0.text"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input.0.content.0.file_id",
        ),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input.0.content.0.image_url"),
        (
            {
                "input": [
                    {"role": "user", "content": [{"type": "input_image", "image_url": "u", "detail": "max"}]}
                ]
            },
            "input.0.content.0.detail",
        ),
        (
            {"input": [{"role": "system", "content": [{"type": "input_image", "image_url": "u"}]}]},
            "input.0.content.0.type",
        ),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input.0.call_id"),
        ({"input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]}, "input.0.name"),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]},
            "input.0.arguments",
        ),
        ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input.0.output"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": 5}]}, "input.0.output"),
        (
            {
                "input": [
                    {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image"}]}
                ]
            },
            "input.0.output.0.type",
        ),
        *(({"tools": [{"type": kind, "name": "x"}]}, "tools.0.type") for kind in REFUSED_TOOLS),
        ({"tools": [{"type": "function"}]}, "tools.0.name"),
        ({"tools": [{"type": "function", "name": "f", "parameters": []}]}, "tools.0.parameters"),
        ({"tools": {"type": "function"}}, "tools"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice.type"),
        ({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}}, "tool_choice.type"),
        ({"tool_choice": {"type": "function"}}, "tool_choice.name"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
        ({"text": {"format": {"type": "json_schema", "name": "n"}}}, "text.format.schema"),
        ({"text": {"verbosity": "loud"}}, "text.verbosity"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 2}, "top_p"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"max_output_tokens": "10"}, "max_output_tokens"),
        ({"max_output_tokens": True}, "max_output_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"store": "no"}, "store"),
        ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"reasoning": {"summary": "long"}}, "reasoning.summary"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"instructions": ["be nice"]}, "instructions"),
        ({"previous_response_id": 5}, "previous_response_id"),
        ({"truncation": "sometimes"}, "truncation"),
        ({"service_tier": "gold"}, "service_tier"),
        ({"background": True, "stream": True}, "stream"),
        ({"background": True, "store": False}, "store"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ],
)
def test_a_refused_request_names_the_field(fields: dict[str, Any], param: str) -> None:
    body = {key: value for key, value in {"model": "m", "input": "hi", **fields}.items() if value is not None}
    with pytest.raises(InvalidRequest) as raised:
        parse(body)
    assert raised.value.param == param
    assert raised.value.status == 400
    error = orjson.loads(Responses(InMemoryResponseStore()).error_body(raised.value))["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error")


@pytest.mark.parametrize("kind", REFUSED_TOOLS)
def test_a_refused_tool_is_named_in_the_message(kind: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse({"model": "m", "input": "hi", "tools": [{"type": kind}]})
    assert f"'{kind}'" in raised.value.message and "cannot be served" in raised.value.message


def test_a_body_that_is_not_a_json_object_is_refused() -> None:
    api = Responses(InMemoryResponseStore())
    for raw in (b"{not json", b"[1, 2]", b'"text"'):
        with pytest.raises(InvalidRequest):
            asyncio.run(api.parse(raw, "r", Caller()))


# Whole answers.


def test_a_text_answer_is_a_completed_response_with_the_request_echoed_and_usage() -> None:
    store = InMemoryResponseStore()
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    body = {
        "model": "gpt-x",
        "instructions": "be brief",
        "input": "hi",
        "temperature": 0.3,
        "tools": [tool],
        "metadata": {"k": "v"},
    }
    rendered = answer(body, completion({"content": "Hello there"}), store, Usage.from_openai(USAGE))
    assert rendered["object"] == "response" and rendered["id"].startswith("resp_")
    assert (rendered["status"], rendered["incomplete_details"], rendered["error"]) == (
        "completed",
        None,
        None,
    )
    assert (rendered["model"], rendered["instructions"], rendered["temperature"]) == (
        "gpt-x",
        "be brief",
        0.3,
    )
    assert rendered["tools"] == [{**tool, "description": None, "strict": None}]
    assert (rendered["tool_choice"], rendered["text"], rendered["metadata"]) == (
        "auto",
        {"format": {"type": "text"}},
        {"k": "v"},
    )
    assert (rendered["store"], rendered["parallel_tool_calls"], rendered["previous_response_id"]) == (
        True,
        True,
        None,
    )
    assert "output_text" not in rendered
    [message] = rendered["output"]
    assert message["type"] == "message" and message["id"].startswith("msg_")
    assert (message["role"], message["status"]) == ("assistant", "completed")
    assert message["content"] == [{"type": "output_text", "text": "Hello there", "annotations": []}]
    assert Response.model_validate(rendered).output_text == "Hello there"
    assert rendered["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 15,
    }


def test_usage_is_read_from_the_answer_when_the_completion_carries_none() -> None:
    rendered = answer(
        {"model": "m", "input": "hi"}, completion({"content": "x"}, usage=USAGE), InMemoryResponseStore()
    )
    assert rendered["usage"]["input_tokens"] == 10 and rendered["usage"]["output_tokens"] == 5


def test_an_answer_is_stored_with_its_input_items_and_conversation() -> None:
    store = InMemoryResponseStore()
    rendered = answer(
        {"model": "m", "instructions": "rules", "input": "hi"}, completion({"content": "yo"}), store
    )
    stored = asyncio.run(store.get("team-a", rendered["id"]))
    assert stored is not None
    assert (stored.id, stored.tenant, stored.response) == (rendered["id"], "team-a", rendered)
    assert stored.conversation == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert [item["content"] for item in stored.input_items] == [[{"type": "input_text", "text": "hi"}]]
    assert stored.created_at == rendered["created_at"]


def test_an_answer_with_store_off_is_not_stored() -> None:
    store = InMemoryResponseStore()
    rendered = answer({"model": "m", "input": "hi", "store": False}, completion({"content": "yo"}), store)
    assert rendered["store"] is False
    assert store.responses == {}


def test_tool_calls_are_function_call_items_and_their_outputs_continue_the_conversation() -> None:
    store = InMemoryResponseStore()
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
    ]
    tools = [{"type": "function", "name": name} for name in ("weather", "time")]
    first = answer(
        {"model": "m", "input": "weather?", "tools": tools},
        completion({"content": None, "tool_calls": calls}, finish="tool_calls"),
        store,
    )
    assert [item["type"] for item in first["output"]] == ["function_call", "function_call"]
    assert [(item["call_id"], item["name"], item["arguments"]) for item in first["output"]] == [
        ("call_1", "weather", '{"city":"Oslo"}'),
        ("call_2", "time", "{}"),
    ]
    assert all(item["status"] == "completed" and item["id"].startswith("fc_") for item in first["output"])
    outputs = [
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_2", "output": "noon"},
    ]
    request = parse(
        {"model": "m", "input": outputs, "tools": tools, "previous_response_id": first["id"]}, store
    )
    assert request.body["messages"] == [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
    ]


def test_an_answer_cut_at_max_tokens_is_incomplete() -> None:
    rendered = answer(
        {"model": "m", "input": "hi", "max_output_tokens": 5},
        completion({"content": "Once upon"}, finish="length"),
        InMemoryResponseStore(),
    )
    assert rendered["status"] == "incomplete"
    assert rendered["incomplete_details"] == {"reason": "max_output_tokens"}
    assert rendered["max_output_tokens"] == 5
    assert rendered["output"][0]["status"] == "incomplete"


def test_reasoning_content_becomes_a_reasoning_item_that_is_not_sent_back_upstream() -> None:
    store = InMemoryResponseStore()
    rendered = answer(
        {"model": "m", "input": "2+2?", "reasoning": {"effort": "low"}},
        completion({"content": "4", "reasoning_content": "two and two"}),
        store,
    )
    reasoning, message = rendered["output"]
    assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_")
    assert reasoning["summary"] == [{"type": "summary_text", "text": "two and two"}]
    assert message["content"][0]["text"] == "4"
    assert rendered["reasoning"] == {"effort": "low", "summary": None}
    stored = asyncio.run(store.get("team-a", rendered["id"]))
    assert stored is not None and stored.conversation[-1] == {"role": "assistant", "content": "4"}


def test_a_json_schema_request_echoes_its_format() -> None:
    text = {"format": {"type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": True}}
    rendered = answer(
        {"model": "m", "input": "hi", "text": text}, completion({"content": "{}"}), InMemoryResponseStore()
    )
    assert rendered["text"] == text


# Streams.

TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def test_a_text_stream_is_the_responses_event_sequence() -> None:
    store = InMemoryResponseStore()
    blocks = [
        chunk({"role": "assistant"}),
        chunk({"content": "Hel"}) + chunk({"content": "lo"}),
        chunk({}, "stop"),
    ]
    usage = Usage.from_openai(USAGE)
    sent = stream({"model": "m", "input": "hi"}, blocks, store, usage)
    events = events_of(sent)
    assert [event["type"] for event in events] == TEXT_EVENTS
    deltas = [event["delta"] for event in events if event["type"] == "response.output_text.delta"]
    assert "".join(deltas) == "Hello"
    assert events[6]["text"] == "Hello"
    created = events[0]["response"]
    assert (created["status"], created["output"], created["model"]) == ("in_progress", [], "m")
    completed = events[-1]["response"]
    assert completed["id"] == created["id"] and completed["status"] == "completed"
    assert completed["usage"]["input_tokens"] == 10 and completed["usage"]["output_tokens"] == 5
    final = accumulated(events)
    assert final.output_text == "Hello" and final.usage.total_tokens == 15
    stored = asyncio.run(store.get("team-a", completed["id"]))
    assert stored is not None and stored.response == completed
    assert stored.conversation[-1] == {"role": "assistant", "content": "Hello"}


def test_a_stream_never_sends_an_empty_block() -> None:
    blocks = [chunk({"role": "assistant"}), b": keep-alive\n\n", chunk({"content": "x"}), chunk({}, "stop")]
    sent = stream({"model": "m", "input": "hi"}, blocks, InMemoryResponseStore())
    # The preamble, the text, the end: the role, keep-alive and finish chunks render nothing.
    assert len(sent) == 3
    assert b"output_text.delta" in sent[1] and b"response.completed" in sent[2]


def test_reasoning_text_and_tool_calls_stream_as_their_items_in_order() -> None:
    store = InMemoryResponseStore()
    blocks = [
        chunk({"reasoning_content": "think"}),
        chunk({"reasoning_content": "ing"}),
        chunk({"content": "Checking."}),
        tool_delta(0, "", "call_a", "weather"),
        tool_delta(0, '{"city":'),
        tool_delta(0, '"Oslo"}'),
        tool_delta(1, "{}", "call_b", "time"),
        chunk({}, "tool_calls"),
    ]
    events = events_of(stream({"model": "m", "input": "hi"}, blocks, store))
    assert [event["type"] for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    completed = events[-1]["response"]
    assert [item["type"] for item in completed["output"]] == [
        "reasoning",
        "message",
        "function_call",
        "function_call",
    ]
    assert completed["output"][0]["summary"][0]["text"] == "thinking"
    calls = [(item["call_id"], item["name"], item["arguments"]) for item in completed["output"][2:]]
    assert calls == [("call_a", "weather", '{"city":"Oslo"}'), ("call_b", "time", "{}")]
    added = [event["item"] for event in events if event["type"] == "response.output_item.added"]
    assert added[2]["arguments"] == "" and added[2]["status"] == "in_progress"
    final = accumulated(events)
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call", "function_call"]
    assert final.output_text == "Checking."
    stored = asyncio.run(store.get("team-a", completed["id"]))
    assert stored is not None
    assert stored.conversation[-1] == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
            },
            {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": "{}"}},
        ],
    }


def test_interleaved_tool_call_deltas_and_calls_all_numbered_zero_come_out_whole() -> None:
    interleaved = [
        tool_delta(0, '{"a"', "call_a", "f"),
        tool_delta(1, '{"b"', "call_b", "g"),
        tool_delta(0, ":1}"),
        tool_delta(1, ":2}"),
    ]
    all_zero = [tool_delta(0, '{"a":1}', "call_a", "f"), tool_delta(0, '{"b":2}', "call_b", "g")]
    for blocks in (interleaved, all_zero):
        events = events_of(
            stream({"model": "m", "input": "hi"}, [*blocks, chunk({}, "tool_calls")], InMemoryResponseStore())
        )
        output = events[-1]["response"]["output"]
        assert [(item["call_id"], item["name"], item["arguments"]) for item in output] == [
            ("call_a", "f", '{"a":1}'),
            ("call_b", "g", '{"b":2}'),
        ]
        accumulated(events)


def test_a_stream_cut_at_max_tokens_ends_incomplete() -> None:
    blocks = [chunk({"content": "Once"}), chunk({}, "length")]
    events = events_of(stream({"model": "m", "input": "hi"}, blocks, InMemoryResponseStore()))
    assert events[-1]["type"] == "response.incomplete"
    response = events[-1]["response"]
    assert response["status"] == "incomplete" and response["incomplete_details"] == {
        "reason": "max_output_tokens"
    }
    assert response["output"][0]["status"] == "incomplete"


def test_a_stream_with_store_off_is_not_stored() -> None:
    store = InMemoryResponseStore()
    events = events_of(
        stream({"model": "m", "input": "hi", "store": False}, [chunk({"content": "x"})], store)
    )
    assert events[-1]["type"] == "response.completed"
    assert store.responses == {}


def test_an_error_midway_is_an_error_event_then_response_failed_and_nothing_is_stored() -> None:
    store = InMemoryResponseStore()
    failure = UpstreamTimeout("Deployment 'a' timed out in the middle of the stream.")
    sent = stream({"model": "m", "input": "hi"}, [chunk({"content": "Hal"})], store, fail_with=failure)
    events = events_of(sent)
    assert [event["type"] for event in events[-2:]] == ["error", "response.failed"]
    error = events[-2]
    assert (error["code"], error["message"], error["param"]) == ("upstream_timeout", failure.message, None)
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["id"] == events[0]["response"]["id"]
    assert failed["error"] == {"code": "server_error", "message": failure.message}
    assert (
        failed["output"][0]["content"][0]["text"] == "Hal" and failed["output"][0]["status"] == "incomplete"
    )
    accumulated(events)
    assert store.responses == {}


def test_an_error_before_any_event_still_starts_with_response_created() -> None:
    api = Responses(InMemoryResponseStore())

    async def run() -> bytes:
        request = await api.parse(orjson.dumps({"model": "m", "input": "hi", "stream": True}), "r", TEAM)
        return api.stream_of(request, Chunks([])).error(RateLimited("Slow down; try again in 2s."))

    events = events_of([asyncio.run(run())])
    assert [event["type"] for event in events] == [
        "response.created",
        "response.in_progress",
        "error",
        "response.failed",
    ]
    assert events[-1]["response"]["error"]["code"] == "rate_limit_exceeded"


class BrokenStore(InMemoryResponseStore):
    async def put(self, stored: StoredResponse) -> None:
        raise OSError("the disk is full")

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        raise OSError("the database is away")


def test_a_store_that_cannot_be_read_is_a_503_naming_previous_response_id() -> None:
    with pytest.raises(StoredResponsesUnavailable) as raised:
        parse({"model": "m", "input": "hi", "previous_response_id": "resp_1"}, BrokenStore())
    assert (raised.value.status, raised.value.param) == (503, "previous_response_id")
    assert raised.value.retryable


def test_an_answer_the_store_fails_to_keep_still_goes_out(caplog: pytest.LogCaptureFixture) -> None:
    rendered = answer({"model": "m", "input": "hi"}, completion({"content": "yo"}), BrokenStore())
    assert rendered["status"] == "completed"
    events = events_of(stream({"model": "m", "input": "hi"}, [chunk({"content": "yo"})], BrokenStore()))
    assert events[-1]["type"] == "response.completed"
    warnings = [record for record in caplog.records if record.message.startswith("could not store response")]
    assert len(warnings) == 2


# Input items pages.


def stored_with(count: int) -> StoredResponse:
    items = [
        {"id": f"msg_{n}", "type": "message", "role": "user", "status": "completed", "content": []}
        for n in range(count)
    ]
    return StoredResponse("resp_1", "t", {}, items, [], 0.0)


def test_input_items_are_listed_in_pages_in_either_order() -> None:
    stored = stored_with(5)
    first = input_items_page(stored, after=None, limit=2, order="asc")
    assert [item["id"] for item in first["data"]] == ["msg_0", "msg_1"]
    assert (first["object"], first["first_id"], first["last_id"], first["has_more"]) == (
        "list",
        "msg_0",
        "msg_1",
        True,
    )
    last = input_items_page(stored, after="msg_2", limit=5, order="asc")
    assert [item["id"] for item in last["data"]] == ["msg_3", "msg_4"] and last["has_more"] is False
    newest = input_items_page(stored, after=None, limit=3, order="desc")
    assert [item["id"] for item in newest["data"]] == ["msg_4", "msg_3", "msg_2"] and newest[
        "has_more"
    ] is True
    ResponseItemList.model_validate(first)


def test_an_empty_page_has_no_ids() -> None:
    page = input_items_page(stored_with(2), after="msg_1", limit=10, order="asc")
    assert page == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


@pytest.mark.parametrize(
    ("after", "limit", "order", "param"),
    [
        (None, 0, "asc", "limit"),
        (None, 101, "asc", "limit"),
        (None, 10, "up", "order"),
        ("msg_9", 10, "asc", "after"),
    ],
)
def test_a_wrong_page_request_names_the_parameter(
    after: str | None, limit: int, order: str, param: str
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        input_items_page(stored_with(2), after=after, limit=limit, order=order)
    assert raised.value.param == param


def test_errors_are_openai_error_bodies() -> None:
    error = NotFound("Previous response with id 'resp_x' not found.", param="previous_response_id")
    body = orjson.loads(Responses(InMemoryResponseStore()).error_body(error))
    assert body == {
        "error": {
            "message": error.message,
            "type": "invalid_request_error",
            "param": "previous_response_id",
            "code": "not_found",
        }
    }


# The official SDK as the client, end to end: what it sends is parsed, what comes back it reads.


def sdk_client(store: InMemoryResponseStore, upstream: list[bytes]) -> Any:
    """An openai client whose requests are served by the adapter; `upstream` is the chat answer: a
    whole completion, or the blocks of a stream."""
    import httpx2

    api = Responses(store)
    sent: list[dict[str, Any]] = []

    def serve(http_request: Any) -> Any:
        async def run() -> Any:
            request = await api.parse(http_request.content, "req-sdk", TEAM)
            sent.append(request.body)
            if not request.stream:
                body = await api.body_of(request, Completion(upstream[0], Usage.from_openai(USAGE), 0.1))
                return httpx2.Response(200, content=body, headers={"content-type": "application/json"})
            outbound = api.stream_of(request, Chunks(upstream, Usage.from_openai(USAGE)))
            blocks = [block async for block in outbound]
            blocks.append(await outbound.end())
            return httpx2.Response(
                200, content=b"".join(blocks), headers={"content-type": "text/event-stream"}
            )

        return asyncio.run(run())

    client = openai.OpenAI(
        api_key="sk-test",
        base_url="http://gateway.test/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(serve)),
        max_retries=0,
        _strict_response_validation=True,
    )
    client.sent = sent
    return client


def test_the_sdk_reads_a_whole_answer_and_continues_from_it() -> None:
    store = InMemoryResponseStore()
    client = sdk_client(store, [completion({"content": "Paris."})])
    first = client.responses.create(model="m", instructions="terse", input="Capital of France?")
    assert first.output_text == "Paris." and first.status == "completed" and first.usage.input_tokens == 10
    second = client.responses.create(model="m", input="And Spain?", previous_response_id=first.id)
    assert client.sent[1]["messages"] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And Spain?"},
    ]
    assert second.previous_response_id == first.id


def test_the_sdk_accumulates_a_streamed_tool_call() -> None:
    blocks = [
        chunk({"content": "Looking."}),
        tool_delta(0, '{"city":', "call_1", "weather"),
        tool_delta(0, '"Oslo"}'),
        chunk({}, "tool_calls"),
    ]
    client = sdk_client(InMemoryResponseStore(), blocks)
    tools = [{"type": "function", "name": "weather", "parameters": {"type": "object"}, "strict": False}]
    with client.responses.stream(model="m", input="weather in Oslo?", tools=tools) as events:
        types = [event.type for event in events]
        final = events.get_final_response()
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert final.output_text == "Looking."
    call = final.output[-1]
    assert (call.type, call.call_id, call.name, call.arguments) == (
        "function_call",
        "call_1",
        "weather",
        '{"city":"Oslo"}',
    )
    assert client.sent[0]["stream"] is True and client.sent[0]["tools"][0]["function"]["name"] == "weather"


def test_a_codex_cli_shaped_request_is_served() -> None:
    shell = {
        "type": "function",
        "name": "shell",
        "description": "Runs a shell command.",
        "strict": False,
        "parameters": {"type": "object", "properties": {"command": {"type": "array"}}},
    }
    body = {
        "model": "auto",
        "instructions": "You are a coding agent.",
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list files"}]},
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [{"type": "summary_text", "text": "use ls"}],
                "content": None,
                "encrypted_content": None,
            },
            {
                "type": "function_call",
                "id": None,
                "name": "shell",
                "arguments": '{"command":["ls"]}',
                "call_id": "c1",
            },
            {"type": "function_call_output", "call_id": "c1", "output": "README.md"},
        ],
        "tools": [shell],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0f8e2c1a",
        "text": {"verbosity": "medium"},
    }
    request = parse(body)
    assert [message["role"] for message in request.body["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
    ]
    assert request.body["tool_choice"] == "auto" and request.body["parallel_tool_calls"] is False
    assert request.body["reasoning_effort"] == "medium" and request.stream
    assert request.inbound.store is False


# Custom (freeform) tools, namespaces and the client-run tool search: what the Codex CLI offers.

APPLY_PATCH = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files with a patch. A FREEFORM tool: do not wrap the patch in JSON.",
    "format": {"type": "grammar", "syntax": "lark", "definition": 'start: "*** Begin Patch" LF'},
}
AGENTS = {
    "type": "namespace",
    "name": "agents",
    "description": "Sub-agents.",
    "tools": [
        {"type": "function", "name": "spawn", "parameters": {"type": "object"}, "strict": False},
        {"type": "custom", "name": "note"},
    ],
}
SEARCH_PARAMETERS = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}
TOOL_SEARCH = {
    "type": "tool_search",
    "execution": "client",
    "description": "Searches deferred tools.",
    "parameters": SEARCH_PARAMETERS,
}
FREE_TEXT = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "The tool's input, as free text (not JSON)."}},
    "required": ["input"],
    "additionalProperties": False,
}
PATCH = "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch\n"


def test_custom_namespaced_and_tool_search_tools_become_chat_functions() -> None:
    body = {
        "model": "m",
        "input": "hi",
        "tools": [APPLY_PATCH, AGENTS, TOOL_SEARCH],
        "tool_choice": {"type": "custom", "name": "apply_patch"},
    }
    request = parse(body)
    assert request.body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "apply_patch",
                "parameters": FREE_TEXT,
                "description": APPLY_PATCH["description"]
                + '\n\nThe `input` string must follow this lark grammar:\nstart: "*** Begin Patch" LF',
            },
        },
        {
            "type": "function",
            "function": {"name": "agents__spawn", "parameters": {"type": "object"}, "strict": False},
        },
        {"type": "function", "function": {"name": "agents__note", "parameters": FREE_TEXT}},
        {
            "type": "function",
            "function": {
                "name": "tool_search",
                "parameters": SEARCH_PARAMETERS,
                "description": "Searches deferred tools.",
            },
        },
    ]
    assert request.body["tool_choice"] == {"type": "function", "function": {"name": "apply_patch"}}
    custom_choice = parse({**body, "tool_choice": {"type": "custom", "name": "note", "namespace": "agents"}})
    assert custom_choice.body["tool_choice"] == {"type": "function", "function": {"name": "agents__note"}}


def test_calls_to_them_are_rendered_as_their_own_items_and_continue_the_conversation() -> None:
    store = InMemoryResponseStore()
    calls = [
        {
            "id": "call_p",
            "type": "function",
            "function": {"name": "apply_patch", "arguments": '{"input": "x"}'},
        },
        {"id": "call_s", "type": "function", "function": {"name": "agents__spawn", "arguments": '{"n":1}'}},
        {
            "id": "call_q",
            "type": "function",
            "function": {"name": "tool_search", "arguments": '{"query":"cron"}'},
        },
        {"id": "call_u", "type": "function", "function": {"name": "unknown", "arguments": "{}"}},
        {"id": "call_b", "type": "function", "function": {"name": "apply_patch", "arguments": PATCH}},
    ]
    body = {"model": "m", "input": "patch it", "tools": [APPLY_PATCH, AGENTS, TOOL_SEARCH]}
    first = answer(body, completion({"content": None, "tool_calls": calls}, finish="tool_calls"), store)
    patch, spawn, search, unknown, bare = first["output"]
    assert patch["type"] == "custom_tool_call" and patch["id"].startswith("ctc_")
    assert (patch["call_id"], patch["name"], patch["input"]) == ("call_p", "apply_patch", "x")
    assert (spawn["type"], spawn["name"], spawn["namespace"], spawn["arguments"]) == (
        "function_call",
        "spawn",
        "agents",
        '{"n":1}',
    )
    assert search["type"] == "tool_search_call" and search["id"].startswith("tsc_")
    assert (search["call_id"], search["arguments"], search["execution"]) == (
        "call_q",
        {"query": "cron"},
        "client",
    )
    assert (unknown["type"], unknown["name"]) == ("function_call", "unknown")
    assert bare["input"] == PATCH  # arguments that are not {"input": ...} are the input themselves
    cron = {"type": "function", "name": "cron", "parameters": {"type": "object"}}
    outputs = [
        {"type": "custom_tool_call_output", "call_id": "call_p", "output": "Done."},
        {"type": "function_call_output", "call_id": "call_s", "output": "spawned"},
        {"type": "tool_search_output", "call_id": "call_q", "execution": "client", "tools": [cron]},
        {"type": "function_call_output", "call_id": "call_u", "output": "?"},
        {
            "type": "custom_tool_call_output",
            "call_id": "call_b",
            "output": [{"type": "input_text", "text": "ok"}],
        },
    ]
    request = parse({**body, "input": outputs, "previous_response_id": first["id"]}, store)
    messages = request.body["messages"]
    assert messages[1]["tool_calls"] == [
        {
            "id": "call_p",
            "type": "function",
            "function": {"name": "apply_patch", "arguments": '{"input":"x"}'},
        },
        {"id": "call_s", "type": "function", "function": {"name": "agents__spawn", "arguments": '{"n":1}'}},
        {
            "id": "call_q",
            "type": "function",
            "function": {"name": "tool_search", "arguments": '{"query":"cron"}'},
        },
        {"id": "call_u", "type": "function", "function": {"name": "unknown", "arguments": "{}"}},
        {
            "id": "call_b",
            "type": "function",
            "function": {"name": "apply_patch", "arguments": orjson.dumps({"input": PATCH}).decode()},
        },
    ]
    assert messages[2:] == [
        {"role": "tool", "tool_call_id": "call_p", "content": "Done."},
        {"role": "tool", "tool_call_id": "call_s", "content": "spawned"},
        {"role": "tool", "tool_call_id": "call_q", "content": "Tools now available: cron."},
        {"role": "tool", "tool_call_id": "call_u", "content": "?"},
        {"role": "tool", "tool_call_id": "call_b", "content": "ok"},
    ]
    # The tool the search loaded is offered from then on; it is not echoed as a tool of the request.
    assert [tool["function"]["name"] for tool in request.body["tools"]][-1] == "cron"
    assert [tool["type"] for tool in request.inbound.echo["tools"]] == ["custom", "namespace", "tool_search"]


def test_the_items_of_a_conversation_sent_whole_become_chat_messages() -> None:
    items = [
        {"role": "user", "content": "go"},
        {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": PATCH},
        {"type": "custom_tool_call_output", "call_id": "c1", "output": "Done."},
        {"type": "function_call", "call_id": "c2", "name": "spawn", "namespace": "agents", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c2", "output": "ok"},
        {"type": "tool_search_call", "call_id": "c3", "execution": "client", "arguments": {"query": "x"}},
        {"type": "tool_search_output", "call_id": "c3", "execution": "client", "tools": [AGENTS]},
    ]
    request = parse({"model": "m", "input": items, "tools": [APPLY_PATCH, TOOL_SEARCH]})
    assert request.body["messages"] == [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "apply_patch", "arguments": orjson.dumps({"input": PATCH}).decode()},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "Done."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c2", "type": "function", "function": {"name": "agents__spawn", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c2", "content": "ok"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c3",
                    "type": "function",
                    "function": {"name": "tool_search", "arguments": '{"query":"x"}'},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "c3",
            "content": "Tools now available: agents__spawn, agents__note.",
        },
    ]
    names = [tool["function"]["name"] for tool in request.body["tools"]]
    assert names == ["apply_patch", "tool_search", "agents__spawn", "agents__note"]
    assert [item["type"] for item in request.inbound.input_items] == [
        "message",
        "custom_tool_call",
        "custom_tool_call_output",
        "function_call",
        "function_call_output",
        "tool_search_call",
        "tool_search_output",
    ]
    assert request.inbound.input_items[1]["input"] == PATCH
    assert request.inbound.input_items[3]["namespace"] == "agents"
    ResponseItemList.model_validate(
        {
            "object": "list",
            "data": request.inbound.input_items,
            "first_id": "a",
            "last_id": "b",
            "has_more": False,
        }
    )


def test_a_streamed_custom_tool_call_and_tool_search_are_their_items_with_their_events() -> None:
    store = InMemoryResponseStore()
    blocks = [
        tool_delta(0, '{"input": "*** Begin', "call_p", "apply_patch"),
        tool_delta(0, ' Patch\\n"}'),
        tool_delta(1, '{"query":', "call_q", "tool_search"),
        tool_delta(1, '"cron"}'),
        tool_delta(2, '{"n":1}', "call_s", "agents__spawn"),
        chunk({}, "tool_calls"),
    ]
    body = {"model": "m", "input": "hi", "tools": [APPLY_PATCH, AGENTS, TOOL_SEARCH]}
    events = events_of(stream(body, blocks, store))
    assert [event["type"] for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.output_item.added",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done",
        "response.output_item.done",
        "response.output_item.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = [event["item"] for event in events if event["type"] == "response.output_item.added"]
    assert [item["type"] for item in added] == ["custom_tool_call", "tool_search_call", "function_call"]
    assert added[0]["input"] == "" and added[1]["arguments"] == {}
    by_type = {event["type"]: event for event in events}
    assert by_type["response.custom_tool_call_input.done"]["input"] == "*** Begin Patch\n"
    assert by_type["response.function_call_arguments.done"]["name"] == "spawn"
    output = events[-1]["response"]["output"]
    assert [(item["type"], item["call_id"]) for item in output] == [
        ("custom_tool_call", "call_p"),
        ("tool_search_call", "call_q"),
        ("function_call", "call_s"),
    ]
    assert output[1]["arguments"] == {"query": "cron"} and output[2]["namespace"] == "agents"
    final = accumulated(events)
    assert [item.type for item in final.output] == ["custom_tool_call", "tool_search_call", "function_call"]
    stored = asyncio.run(store.get("team-a", events[-1]["response"]["id"]))
    assert stored is not None
    assert [call["function"]["name"] for call in stored.conversation[-1]["tool_calls"]] == [
        "apply_patch",
        "tool_search",
        "agents__spawn",
    ]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "tool_search"}]}, "tools.0.execution"),
        ({"tools": [{"type": "tool_search", "execution": "server"}]}, "tools.0.execution"),
        ({"tools": [{**AGENTS, "tools": [{"type": "web_search"}]}]}, "tools.0.tools.0.type"),
        ({"tools": [{**AGENTS, "tools": [AGENTS]}]}, "tools.0.tools.0.type"),
        ({"tools": [{"type": "namespace", "name": "n"}]}, "tools.0.tools"),
        ({"tools": [APPLY_PATCH, {"type": "function", "name": "apply_patch"}]}, "tools.1.name"),
        (
            {
                "tools": [
                    {"type": "function", "name": "a__b"},
                    {**AGENTS, "name": "a", "tools": [{"type": "custom", "name": "b"}]},
                ]
            },
            "tools.1.tools.0.name",
        ),
        ({"tools": [{"type": "custom", "name": "c", "format": {"type": "yaml"}}]}, "tools.0.format.type"),
        (
            {
                "tools": [
                    {
                        "type": "custom",
                        "name": "c",
                        "format": {"type": "grammar", "syntax": "ebnf", "definition": "x"},
                    }
                ]
            },
            "tools.0.format.syntax",
        ),
        (
            {"tools": [{"type": "custom", "name": "c", "format": {"type": "grammar"}}]},
            "tools.0.format.definition",
        ),
        ({"tool_choice": {"type": "custom"}}, "tool_choice.name"),
        ({"input": [USER, {"type": "custom_tool_call", "call_id": "c", "name": "n"}]}, "input.1.input"),
        ({"input": [USER, {"type": "custom_tool_call_output", "call_id": "c"}]}, "input.1.output"),
        (
            {
                "input": [
                    USER,
                    {"type": "tool_search_call", "call_id": "c", "execution": "server", "arguments": {}},
                ]
            },
            "input.1.execution",
        ),
        ({"input": [USER, {"type": "tool_search_call", "call_id": "c"}]}, "input.1.arguments"),
        ({"input": [USER, {"type": "tool_search_output", "call_id": "c"}]}, "input.1.tools"),
        (
            {"input": [USER, {"type": "tool_search_output", "call_id": "c", "tools": [{"type": "mcp"}]}]},
            "input.1.tools.0.type",
        ),
    ],
)
def test_what_these_tools_cannot_carry_is_refused_naming_the_field(
    fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse({"model": "m", "input": "hi", **fields})
    assert raised.value.param == param


def test_the_refusal_of_web_search_says_how_to_leave_it_out_of_codex() -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse({"model": "m", "input": "hi", "tools": [{"type": "web_search", "external_web_access": False}]})
    assert raised.value.param == "tools.0.type"
    assert 'web_search = "disabled"' in raised.value.message


def test_system_and_developer_text_parts_become_one_string() -> None:
    items = [
        {
            "role": "developer",
            "content": [{"type": "input_text", "text": "A"}, {"type": "input_text", "text": "B"}],
        },
        {"role": "user", "content": "hi"},
    ]
    request = asyncio.run(
        Responses(InMemoryResponseStore()).parse(orjson.dumps({"model": "m", "input": items}), "r", TEAM)
    )
    assert request.body["messages"][0] == {"role": "system", "content": "A\n\nB"}

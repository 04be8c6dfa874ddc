"""The Anthropic Messages adapter: requests translated into chat requests (and what is refused), chat
answers rendered back as Messages, streams as Anthropic's event sequence, errors in Anthropic's format."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.errors import (
    AuthenticationFailed,
    BodyTooLarge,
    Conflict,
    GatewayError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.inbound.anthropic_messages import AnthropicMessages, MessagesInbound, count_input_tokens
from gateway.tokens import TokenCounter
from gateway.wire import Caller, ChatRequest, Completion, Usage

HI = [{"role": "user", "content": "hi"}]
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER_TOOL = {"name": "weather", "description": "The weather in a city.", "input_schema": WEATHER_SCHEMA}


def request_of(**fields: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": HI, **fields}


def parse(body: object) -> ChatRequest:
    return asyncio.run(AnthropicMessages().parse(orjson.dumps(body), "req-1", Caller()))


def chat_messages(**fields: Any) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = parse(request_of(**fields)).body["messages"]
    return messages


def refusal(body: object) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as raised:
        parse(body)
    return raised.value


# --- requests ---------------------------------------------------------------------------------------


def test_the_adapter_names_its_api_and_path() -> None:
    api = AnthropicMessages()
    assert (api.name, api.operation, api.paths) == ("messages", "chat", frozenset({"/v1/messages"}))


def test_the_scalar_fields_are_translated_and_the_client_model_and_body_are_kept() -> None:
    sent = request_of(
        stop_sequences=["END", "STOP"],
        temperature=0.2,
        top_p=0.9,
        stream=True,
        metadata={"user_id": "u-42"},
        service_tier="auto",
    )
    request = parse(sent)
    assert request.body == {
        "model": "claude-sonnet-4-5",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 100,
        "stop": ["END", "STOP"],
        "temperature": 0.2,
        "top_p": 0.9,
        "stream": True,
        "user": "u-42",
    }
    assert (request.request_id, request.stream, request.include_usage, request.api) == (
        "req-1",
        True,
        False,
        "messages",
    )
    assert request.inbound == MessagesInbound(model="claude-sonnet-4-5", native_body=sent)


def test_a_request_without_stream_does_not_stream() -> None:
    request = parse(request_of())
    assert request.stream is False
    assert "stream" not in request.body


def test_a_system_string_becomes_a_leading_system_message() -> None:
    assert chat_messages(system="Be brief.")[0] == {"role": "system", "content": "Be brief."}


def test_system_text_blocks_become_one_system_message_and_cache_control_is_ignored() -> None:
    one = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    assert chat_messages(system=one)[0] == {"role": "system", "content": "Be brief."}
    two = [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]
    # One string, blocks apart by a blank line: llama.cpp's server (the local model) takes no parts there.
    assert chat_messages(system=two)[0] == {"role": "system", "content": "A\n\nB"}


def test_text_blocks_become_a_string_when_alone_and_parts_otherwise() -> None:
    single = [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
    assert chat_messages(messages=single) == [{"role": "user", "content": "hello"}]
    double = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert chat_messages(messages=double)[0]["content"] == [
        {"type": "text", "text": "a"},
        {"type": "text", "text": "b"},
    ]


def test_images_from_base64_and_url_become_image_url_parts() -> None:
    content = [
        {"type": "text", "text": "Compare these."},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    assert chat_messages(messages=[{"role": "user", "content": content}])[0]["content"] == [
        {"type": "text", "text": "Compare these."},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]


TOOL_TURNS = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "Two cities: two calls.", "signature": "c2ln"},
            {"type": "redacted_thinking", "data": "cmVkYWN0ZWQ="},
            {"type": "text", "text": "Looking both up."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}},
        ],
    },
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Here you are."},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18°C"},
            {
                "type": "tool_result",
                "tool_use_id": "toolu_2",
                "content": [{"type": "text", "text": "Service"}, {"type": "text", "text": "down"}],
                "is_error": True,
            },
        ],
    },
]


def test_tool_use_becomes_tool_calls_tool_results_come_first_and_thinking_is_dropped() -> None:
    messages = chat_messages(messages=TOOL_TURNS, tools=[WEATHER_TOOL])
    assert messages[1:] == [
        {
            "role": "assistant",
            "content": "Looking both up.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18°C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: Service\ndown"},
        {"role": "user", "content": "Here you are."},
    ]


def test_an_assistant_turn_of_only_tool_use_has_no_content_and_a_turn_of_only_results_no_user_message() -> (
    None
):
    turns = [
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]},
    ]
    assert chat_messages(messages=turns)[1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "t", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "t", "content": ""},
    ]


def test_the_thinking_setting_is_accepted_and_not_forwarded() -> None:
    for thinking in ({"type": "enabled", "budget_tokens": 2048}, {"type": "disabled"}):
        body = parse(request_of(thinking=thinking)).body
        assert "thinking" not in body
        assert set(body) == {"model", "messages", "max_tokens"}


def test_context_management_and_the_effort_are_accepted_and_not_forwarded() -> None:
    """What Claude Code sends with every request: edits that only trim what a chat upstream never gets
    (earlier thinking) or save room, and an effort hint, which chat upstreams have no setting for."""
    edits = [{"type": "clear_thinking_20251015", "keep": "all"}, {"type": "clear_tool_uses_20250919"}]
    body = parse(
        request_of(
            context_management={"edits": edits},
            output_config={"effort": "medium"},
            thinking={"type": "adaptive", "display": "omitted"},
        )
    ).body
    assert set(body) == {"model", "messages", "max_tokens"}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {"context_management": {"edits": [{"type": "compact_20260101"}]}},
            "context_management.edits.0.type",
        ),
        ({"context_management": {"edits": "all"}}, "context_management.edits"),
        ({"output_config": {"effort": "extreme"}}, "output_config.effort"),
        ({"output_config": {"format": {"type": "json_schema", "schema": {}}}}, "output_config.format"),
    ],
)
def test_what_context_management_and_output_config_cannot_carry_is_refused(
    fields: dict[str, Any], param: str
) -> None:
    assert refusal(request_of(**fields)).param == param


def test_a_system_turn_between_the_others_is_a_system_message_in_its_place() -> None:
    turns = [
        {"role": "user", "content": "hi"},
        {"role": "system", "content": [{"type": "text", "text": "# Environment", "cache_control": {}}]},
        {"role": "assistant", "content": "hello"},
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "and now?"},
    ]
    assert chat_messages(system="You are terse.", messages=turns) == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "# Environment"},
        {"role": "assistant", "content": "hello"},
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "and now?"},
    ]


@pytest.mark.parametrize(
    ("content", "param"),
    [
        ([{"type": "image", "source": {"type": "url", "url": "u"}}], "messages.1.content.0.type"),
        ([], "messages.1.content"),
        (7, "messages.1.content"),
    ],
)
def test_a_system_turn_holds_text_only(content: object, param: str) -> None:
    turns = [{"role": "user", "content": "hi"}, {"role": "system", "content": content}, *HI]
    assert refusal(request_of(messages=turns)).param == param


def test_custom_tools_become_functions() -> None:
    tools = [
        {**WEATHER_TOOL, "cache_control": {"type": "ephemeral"}},
        {"type": "custom", "name": "now", "input_schema": {"type": "object"}, "strict": True},
    ]
    assert parse(request_of(tools=tools)).body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "The weather in a city.",
                "parameters": WEATHER_SCHEMA,
            },
        },
        {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}, "strict": True}},
    ]


@pytest.mark.parametrize(
    ("tool_choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "none"}, "none", None),
        ({"type": "tool", "name": "weather"}, {"type": "function", "function": {"name": "weather"}}, None),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
        ({"type": "any", "disable_parallel_tool_use": False}, "required", None),
        (
            {"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
            {"type": "function", "function": {"name": "weather"}},
            False,
        ),
    ],
)
def test_tool_choice_is_translated(
    tool_choice: dict[str, Any], expected: object, parallel: bool | None
) -> None:
    body = parse(request_of(tools=[WEATHER_TOOL], tool_choice=tool_choice)).body
    assert body["tool_choice"] == expected
    assert body.get("parallel_tool_calls") is parallel


# --- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tool_type",
    [
        "web_search_20250305",
        "bash_20250124",
        "text_editor_20250728",
        "computer_20250124",
        "code_execution_20250522",
    ],
)
def test_a_server_tool_is_refused(tool_type: str) -> None:
    error = refusal(request_of(tools=[WEATHER_TOOL, {"type": tool_type, "name": "server"}]))
    assert error.param == "tools.1.type"
    assert tool_type in error.message
    assert "cannot be served by this gateway's upstreams" in error.message
    assert error.status == 400


def test_top_k_is_refused_as_inexpressible() -> None:
    error = refusal(request_of(top_k=40))
    assert error.param == "top_k"
    assert "'top_k' cannot be expressed to this gateway's upstreams" in error.message


def test_a_field_the_gateway_does_not_translate_is_refused_not_dropped() -> None:
    error = refusal(request_of(mcp_servers=[{"type": "url", "url": "https://mcp.example", "name": "m"}]))
    assert error.param == "mcp_servers"
    assert "cannot be expressed" in error.message


def block_turns(block: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": [{"type": "text", "text": "three"}, block]},
    ]


@pytest.mark.parametrize(
    "block",
    [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "A memo."}},
        {"type": "search_result", "source": "https://x", "title": "X", "content": []},
        {"type": "hologram", "data": "?"},
    ],
)
def test_an_inexpressible_or_unknown_block_is_refused_where_it_is(block: dict[str, Any]) -> None:
    error = refusal(request_of(messages=block_turns(block)))
    assert error.param == "messages.2.content.1.type"
    assert f"'{block['type']}'" in error.message
    assert "cannot be expressed" in error.message


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        (
            request_of(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [
                                    {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
                                ],
                            }
                        ],
                    }
                ]
            ),
            "messages.0.content.0.content.0.type",
            "Images inside a tool_result cannot be expressed",
        ),
        (
            request_of(
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                    }
                ]
            ),
            "messages.0.content.0.source.type",
            "'file' cannot be expressed",
        ),
        (
            request_of(
                messages=[
                    {"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {}}]},
                ]
            ),
            "messages.0.content.0.type",
            "only appear in an assistant turn",
        ),
        (
            request_of(
                messages=[
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]},
                    {"role": "user", "content": "b"},
                ]
            ),
            "messages.1.content.0.type",
            "only appear in a user turn",
        ),
        (
            request_of(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "{"}]),
            "messages.1.role",
            "prefill",
        ),
        (
            request_of(system=[{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]),
            "system.0.type",
            "only text blocks",
        ),
    ],
)
def test_what_chat_upstreams_cannot_take_is_refused(body: dict[str, Any], param: str, fragment: str) -> None:
    error = refusal(body)
    assert error.param == param
    assert fragment in error.message


def without(field: str) -> dict[str, Any]:
    body = request_of()
    del body[field]
    return body


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (without("max_tokens"), "max_tokens"),
        (without("model"), "model"),
        (without("messages"), "messages"),
        (request_of(model=""), "model"),
        (request_of(max_tokens="100"), "max_tokens"),
        (request_of(max_tokens=0), "max_tokens"),
        (request_of(max_tokens=True), "max_tokens"),
        (request_of(messages=[]), "messages"),
        (request_of(messages=[{"role": "system", "content": "x"}]), "messages.0.role"),
        (request_of(messages=[{"role": "user"}]), "messages.0.content"),
        (request_of(temperature="warm"), "temperature"),
        (request_of(temperature=1.5), "temperature"),
        (request_of(top_p=-0.1), "top_p"),
        (request_of(stream="yes"), "stream"),
        (request_of(stop_sequences="END"), "stop_sequences"),
        (request_of(metadata={"user_id": 42}), "metadata.user_id"),
        (request_of(tools=[{"name": "weather"}]), "tools.0.input_schema"),
        (request_of(tools=[{"input_schema": {}}]), "tools.0.name"),
        (request_of(tool_choice={"type": "sometimes"}), "tool_choice.type"),
        (request_of(tool_choice={"type": "tool"}), "tool_choice.name"),
        (request_of(thinking={"type": "enabled", "budget_tokens": "lots"}), "thinking.budget_tokens"),
        (request_of(system=7), "system"),
        (request_of(messages=[{"role": "user", "content": 7}]), "messages.0.content"),
        (request_of(messages=[{"role": "user", "content": []}]), "messages.0.content"),
        (request_of(messages=[{"role": "user", "content": ["hi"]}]), "messages.0.content.0"),
        (request_of(messages=[{"role": "user", "content": [{"text": "hi"}]}]), "messages.0.content.0.type"),
        (request_of(messages=[{"role": "user", "content": [{"type": "text"}]}]), "messages.0.content.0.text"),
        (
            request_of(
                messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "base64"}}]}]
            ),
            "messages.0.content.0.source.media_type",
        ),
        (
            request_of(messages=[{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]),
            "messages.0.content.0.tool_use_id",
        ),
        (
            request_of(
                messages=[
                    {"role": "user", "content": "a"},
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t", "name": "n", "input": "{}"}],
                    },
                    {"role": "user", "content": "b"},
                ]
            ),
            "messages.1.content.0.input",
        ),
    ],
)
def test_a_wrong_or_missing_field_is_named_in_the_error(body: dict[str, Any], param: str) -> None:
    error = refusal(body)
    assert error.param == param
    assert f"'{param}'" in error.message


def test_a_body_that_is_not_a_json_object_is_refused() -> None:
    for raw in (b"{not json", b"[1, 2]", b'"text"'):
        with pytest.raises(InvalidRequest) as raised:
            asyncio.run(AnthropicMessages().parse(raw, "r", Caller()))
        assert raised.value.status == 400


# --- whole answers ----------------------------------------------------------------------------------


def completion(message: dict[str, Any], finish: str | None = "stop", **extra: Any) -> Completion:
    body = {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "model": "upstream-model-7b",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
        **extra,
    }
    return Completion(orjson.dumps(body), Usage(12, 5, 17), 0.1)


def rendered(answer: Completion, request: ChatRequest | None = None) -> dict[str, Any]:
    request = request or parse(request_of())
    message: dict[str, Any] = orjson.loads(asyncio.run(AnthropicMessages().body_of(request, answer)))
    return message


def test_a_text_answer_is_a_message_under_the_client_model_name() -> None:
    assert rendered(completion({"content": "Hello!"})) == {
        "id": "msg_abc123",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 5},
    }


def test_tool_calls_become_tool_use_blocks_with_parsed_input() -> None:
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
        },
        {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": ""}},
    ]
    message = rendered(completion({"content": "Checking.", "tool_calls": calls}, "tool_calls"))
    assert message["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "now", "input": {}},
    ]
    assert message["stop_reason"] == "tool_use"


def test_tool_call_arguments_that_are_not_a_json_object_are_an_upstream_error() -> None:
    for arguments in ('{"city": "Par', "[1, 2]"):
        calls = [{"id": "c", "type": "function", "function": {"name": "weather", "arguments": arguments}}]
        with pytest.raises(UpstreamError):
            rendered(completion({"content": None, "tool_calls": calls}, "tool_calls"))


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_comes_first_as_a_thinking_block(field: str) -> None:
    message = rendered(completion({"content": "42.", field: "Six times seven."}))
    assert message["content"] == [
        {"type": "thinking", "thinking": "Six times seven.", "signature": ""},
        {"type": "text", "text": "42."},
    ]


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
        ("something_new", "end_turn"),
    ],
)
def test_each_finish_reason_has_its_stop_reason(finish: str | None, stop_reason: str) -> None:
    assert rendered(completion({"content": "x"}, finish))["stop_reason"] == stop_reason


def test_cached_prompt_tokens_are_reported_apart_from_the_input_tokens() -> None:
    answer = completion({"content": "x"})
    answer.usage = Usage(100, 7, 107, details={"prompt_tokens_details": {"cached_tokens": 64}})
    assert rendered(answer)["usage"] == {
        "input_tokens": 36,
        "output_tokens": 7,
        "cache_read_input_tokens": 64,
    }


def test_the_body_usage_and_the_request_id_stand_in_for_what_is_missing() -> None:
    body = {
        "choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    message = rendered(Completion(orjson.dumps(body), None, 0.1))
    assert message["id"] == "msg_req-1"
    assert message["usage"] == {"input_tokens": 3, "output_tokens": 1}


def test_the_answer_carries_the_model_the_client_asked_for_even_after_routing() -> None:
    request = parse(request_of(model="claude-opus-4-1"))
    request.body["model"] = "local-small"  # what routing may have done to the chat body
    assert rendered(completion({"content": "x"}), request)["model"] == "claude-opus-4-1"


def test_an_answer_without_a_choice_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError):
        rendered(Completion(b'{"id": "x", "choices": []}', None, 0.1))


# --- streams ----------------------------------------------------------------------------------------


class Blocks:
    """A ChatStream over given blocks; its usage is set once iteration has ended, as the real ones."""

    first_byte_seconds = 0.0

    native = False

    def __init__(self, blocks: list[bytes], usage: Usage | None = None) -> None:
        self._blocks = blocks
        self._final_usage = usage
        self.usage: Usage | None = None

    async def _each(self):  # type: ignore[no-untyped-def]
        for block in self._blocks:
            yield block
        self.usage = self._final_usage

    def __aiter__(self):  # type: ignore[no-untyped-def]
        return self._each()

    async def aclose(self) -> None:
        return None


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    body = {
        "id": "chatcmpl-s1",
        "object": "chat.completion.chunk",
        "model": "upstream-model-7b",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


def tool_delta(
    index: int, arguments: str, call_id: str | None = None, name: str | None = None
) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        call["id"] = call_id
        call["type"] = "function"
        call["function"]["name"] = name
    return {"tool_calls": [call]}


def play(blocks: list[bytes], usage: Usage | None = None) -> tuple[list[bytes], bytes]:
    """The blocks a stream yields for the given chat blocks, and its end."""
    outbound = AnthropicMessages().stream_of(parse(request_of(stream=True)), Blocks(blocks, usage))

    async def run() -> tuple[list[bytes], bytes]:
        yielded = [block async for block in outbound]
        return yielded, await outbound.end()

    return asyncio.run(run())


def events_in(data: bytes) -> list[dict[str, Any]]:
    """Each `event: <type>\\ndata: <json>` event, checked to name its own type."""
    events = []
    for raw in data.split(b"\n\n"):
        if not raw:
            continue
        name_line, data_line = raw.split(b"\n")
        assert name_line.startswith(b"event: ") and data_line.startswith(b"data: ")
        event = orjson.loads(data_line[len(b"data: ") :])
        assert event["type"] == name_line[len(b"event: ") :].decode()
        events.append(event)
    return events


TEXT_THEN_TWO_TOOLS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Let me "}) + chunk({"content": "check."}),
    chunk(tool_delta(0, "", "call_a", "weather")),
    chunk(tool_delta(0, '{"city": ')) + chunk(tool_delta(0, '"Paris"}')),
    chunk(tool_delta(1, '{"ci', "call_b", "weather")),
    chunk(tool_delta(1, 'ty": "Rome"}')),
    chunk({}, "tool_calls"),
]


def test_a_streamed_answer_of_text_then_two_tool_calls_is_anthropics_event_sequence() -> None:
    yielded, end = play(TEXT_THEN_TWO_TOOLS, Usage(20, 9, 29))
    events = events_in(b"".join(yielded) + end)
    assert [(e["type"], e.get("index")) for e in events] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("message_delta", None),
        ("message_stop", None),
    ]
    starts = {e["index"]: e["content_block"] for e in events if e["type"] == "content_block_start"}
    assert starts == {
        0: {"type": "text", "text": ""},
        1: {"type": "tool_use", "id": "call_a", "name": "weather", "input": {}},
        2: {"type": "tool_use", "id": "call_b", "name": "weather", "input": {}},
    }
    deltas = [e for e in events if e["type"] == "content_block_delta"]
    assert "".join(d["delta"]["text"] for d in deltas if d["index"] == 0) == "Let me check."
    for index, arguments in ((1, {"city": "Paris"}), (2, {"city": "Rome"})):
        fragments = [d["delta"] for d in deltas if d["index"] == index]
        assert {f["type"] for f in fragments} == {"input_json_delta"}
        assert orjson.loads("".join(f["partial_json"] for f in fragments)) == arguments
    start = events[0]["message"]
    assert start["id"] == "msg_s1" and start["model"] == "claude-sonnet-4-5" and start["content"] == []
    assert start["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert events[-2] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"input_tokens": 20, "output_tokens": 9},
    }
    assert events[-1] == {"type": "message_stop"}


def test_blocks_are_yielded_as_they_come_and_a_block_without_events_yields_nothing() -> None:
    blocks = [
        chunk({"role": "assistant"}),
        chunk({"content": "a"}),
        chunk({}),
        chunk({"content": "b"}, "stop"),
    ]
    yielded, _ = play(blocks)
    assert len(yielded) == 3 and all(yielded)
    assert [e["type"] for e in events_in(yielded[0])] == ["message_start"]
    assert [e["type"] for e in events_in(yielded[1])] == ["content_block_start", "content_block_delta"]
    assert [e["type"] for e in events_in(yielded[2])] == ["content_block_delta"]


def test_streamed_reasoning_is_a_thinking_block_before_the_text() -> None:
    blocks = [
        chunk({"reasoning_content": "Six "}),
        chunk({"reasoning_content": "sevens."}),
        chunk({"content": "42"}, "stop"),
    ]
    yielded, end = play(blocks)
    events = events_in(b"".join(yielded) + end)
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert starts == [{"type": "thinking", "thinking": "", "signature": ""}, {"type": "text", "text": ""}]
    thinking = [e["delta"] for e in events if e["type"] == "content_block_delta" and e["index"] == 0]
    assert thinking == [
        {"type": "thinking_delta", "thinking": "Six "},
        {"type": "thinking_delta", "thinking": "sevens."},
    ]
    assert events[-2]["delta"]["stop_reason"] == "end_turn"


def test_a_stream_cut_at_the_length_limit_ends_with_max_tokens_and_its_cached_usage() -> None:
    usage = Usage(50, 10, 60, details={"prompt_tokens_details": {"cached_tokens": 40}})
    _, end = play([chunk({"content": "Once upon"}, "length")], usage)
    delta = events_in(end)
    assert [e["type"] for e in delta] == ["content_block_stop", "message_delta", "message_stop"]
    assert delta[1]["delta"]["stop_reason"] == "max_tokens"
    assert delta[1]["usage"] == {"input_tokens": 10, "output_tokens": 10, "cache_read_input_tokens": 40}


def test_message_start_carries_the_usage_of_a_first_chunk_that_has_one() -> None:
    first = chunk({"content": "x"}, usage={"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9})
    yielded, _ = play([first])
    assert events_in(yielded[0])[0]["message"]["usage"] == {"input_tokens": 8, "output_tokens": 1}


def test_the_end_of_a_stream_that_sent_nothing_starts_the_message_and_reports_no_usage() -> None:
    yielded, end = play([])
    assert yielded == []
    events = events_in(end)
    assert [e["type"] for e in events] == ["message_start", "message_delta", "message_stop"]
    assert events[0]["message"]["id"] == "msg_req-1"
    assert events[1]["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert events[1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}


def test_a_stream_event_that_is_not_json_breaks_the_stream() -> None:
    with pytest.raises(UpstreamError):
        play([chunk({"content": "a"}), b"data: {oops\n\n"])


def test_an_error_on_a_started_stream_is_an_error_event() -> None:
    outbound = AnthropicMessages().stream_of(parse(request_of(stream=True)), Blocks([]))
    event = outbound.error(UpstreamTimeout("The upstream timed out."))
    assert event.startswith(b"event: error\ndata: ") and event.endswith(b"\n\n")
    assert events_in(event) == [
        {"type": "error", "error": {"type": "timeout_error", "message": "The upstream timed out."}}
    ]


# --- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "error_type"),
    [
        (InvalidRequest("bad"), "invalid_request_error"),
        (UpstreamRejected("bad", status=422), "invalid_request_error"),
        (Conflict("bad"), "invalid_request_error"),
        (AuthenticationFailed("bad"), "authentication_error"),
        (PermissionDenied("bad"), "permission_error"),
        (NotFound("bad"), "not_found_error"),
        (BodyTooLarge("bad"), "request_too_large"),
        (RateLimited("bad"), "rate_limit_error"),
        (GatewayError("bad"), "api_error"),
        (UpstreamError("bad"), "api_error"),
        (UpstreamUnavailable("bad"), "overloaded_error"),
        (UpstreamRejected("bad", status=529), "overloaded_error"),
        (UpstreamTimeout("bad"), "timeout_error"),
    ],
)
def test_errors_are_in_anthropics_format(error: GatewayError, error_type: str) -> None:
    assert orjson.loads(AnthropicMessages().error_body(error)) == {
        "type": "error",
        "error": {"type": error_type, "message": "bad"},
    }


# --- count_tokens -----------------------------------------------------------------------------------


class CharCounter(TokenCounter):
    """One token per character, so counts can be checked exactly."""

    def count_text(self, text: str) -> int:
        return len(text)


def test_count_input_tokens_counts_the_messages_the_tool_calls_and_the_tool_definitions() -> None:
    turns = [
        {"role": "user", "content": "Paris?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t", "name": "weather", "input": {"c": 1}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "18C"}]},
    ]
    raw = orjson.dumps({"model": "claude", "system": "Brief.", "messages": turns, "tools": [WEATHER_TOOL]})
    functions = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "The weather in a city.",
                "parameters": WEATHER_SCHEMA,
            },
        }
    ]
    expected = (3 + len("Brief.")) + (3 + len("Paris?")) + 3 + (3 + len("18C"))
    expected += len("weather" + '{"c":1}') + len(orjson.dumps(functions))
    assert count_input_tokens(raw, CharCounter()) == expected


def test_count_input_tokens_needs_no_max_tokens_and_counts_a_prefill() -> None:
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "{"}]
    assert (
        count_input_tokens(orjson.dumps({"model": "claude", "messages": turns}), CharCounter())
        == 3 + 2 + 3 + 1
    )


def test_count_input_tokens_refuses_what_parse_refuses() -> None:
    with pytest.raises(InvalidRequest) as raised:
        count_input_tokens(orjson.dumps({"model": "claude", "messages": HI, "top_k": 5}), CharCounter())
    assert raised.value.param == "top_k"
    with pytest.raises(InvalidRequest) as raised:
        count_input_tokens(b"[]", CharCounter())


def test_count_input_tokens_with_the_real_encoding_counts_tools_too() -> None:
    tokens = TokenCounter()
    plain = count_input_tokens(orjson.dumps({"model": "claude", "messages": HI}), tokens)
    with_tools = count_input_tokens(
        orjson.dumps({"model": "claude", "messages": HI, "tools": [WEATHER_TOOL]}), tokens
    )
    assert plain == 3 + tokens.count_text("hi")
    assert with_tools > plain

"""Anthropic's Messages API (`POST /v1/messages`) in front of OpenAI-compatible chat upstreams.

A Messages request is translated into a chat request, and the chat answer back into a Message (streams
included, see `gateway.inbound.anthropic_stream`). What cannot be expressed to a chat upstream is
refused with a 400 that says so, never dropped silently; the few exceptions are listed below.

Translated: `model` (kept as the client sent it: routing reads it), `max_tokens`, `system` (a string or
text blocks, as a leading system message), `messages` (a `system` turn between the others, which
Claude Code sends to its current models, as a system message in its place: text only, and never the
first turn), `stop_sequences` (as `stop`), `temperature`,
`top_p`, `stream`, `metadata.user_id` (as `user`), custom `tools` (as functions; `strict` kept) and
`tool_choice` (`auto`, `any` as "required", `tool` as a named function, `none`;
`disable_parallel_tool_use` as `parallel_tool_calls: false`). Content blocks: `text`; `image` from
base64 data (as a data URL) or a URL; `tool_use` in an assistant turn (as `tool_calls`); `tool_result`
in a user turn (one `tool` message each, before the rest of that turn, text only, `is_error` as an
"Error: " prefix).

Refused: `top_k`, any other top-level field not named here (`mcp_servers`, `container`, …), context
edits other than the two below, `output_config` keys other than `effort` (`format`: structured
output is not translated), server tools (`web_search_*`, `bash_*`, `text_editor_*`, `computer_*`,
`code_execution_*`, any `type` but "custom"), `document`, `search_result` and every other block type
not listed above, images inside a tool result, image sources other than base64 and URL, and a final
assistant turn (a prefill: chat upstreams start a new message instead of continuing it; a body that is
only counted, `count_input_tokens`, may end with one, and needs no `max_tokens`).

Accepted and not forwarded: `thinking` (chat upstreams have no such setting; answers simply carry no
thinking block unless the upstream reasons on its own), `thinking` and `redacted_thinking` blocks of
earlier assistant turns (Anthropic does not feed earlier turns' thinking back into the context either),
`cache_control` (on blocks, tools or the request) and `service_tier`, which change neither the answer
nor its meaning. Claude Code sends the next two with every request, and a 400 for them would stop it:
`context_management` with the edits `clear_thinking_20251015` (earlier thinking never reaches a chat
upstream anyway) and `clear_tool_uses_20250919` (it only saves room in a long context: the upstream
gets the whole conversation instead); and `output_config.effort` (an effort hint like `thinking`:
chat upstreams have no setting for it, and `reasoning_effort` is refused by the non-reasoning models
most of them serve). Beta headers (`anthropic-beta`) and the `?beta=true` query Claude Code adds are
not read. Answers carry no `context_management` report.

Answers are rendered by `gateway.inbound.anthropic_stream`, whole or streamed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Required

import orjson
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from gateway.errors import GatewayError, InvalidRequest
from gateway.inbound.adapter import OutboundStream
from gateway.inbound.anthropic_stream import MessagesStream, error_payload, message_of, sse_event
from gateway.inbound.json_body import json_object
from gateway.tokens import TokenCounter
from gateway.wire import Caller, ChatRequest, ChatStream, Completion

# Strict types; fields the gateway does not name are allowed here and checked by name afterwards.
_ALLOW_EXTRA = ConfigDict(extra="allow", strict=True)
_STRICT = ConfigDict(extra="forbid", strict=True)
_TRANSLATED = frozenset(
    {"model", "max_tokens", "messages", "system", "stop_sequences", "temperature", "top_p", "stream"}
    | {"metadata", "tools", "tool_choice", "thinking", "service_tier", "cache_control", "context_management"}
    | {"output_config"}
)
_CANNOT = "cannot be expressed to this gateway's upstreams"
_NonEmpty = Annotated[str, Field(min_length=1)]


@with_config(_ALLOW_EXTRA)
class _Message(TypedDict):
    role: Literal["user", "assistant", "system"]
    content: Any


@with_config(_ALLOW_EXTRA)
class _Metadata(TypedDict, total=False):
    user_id: str | None


@with_config(_ALLOW_EXTRA)
class _ToolChoice(TypedDict, total=False):
    type: Required[Literal["auto", "any", "tool", "none"]]
    name: _NonEmpty
    disable_parallel_tool_use: bool


@with_config(_ALLOW_EXTRA)
class _Thinking(TypedDict, total=False):
    type: Required[Literal["enabled", "disabled", "adaptive"]]
    budget_tokens: Annotated[int, Field(ge=1)]


@with_config(_ALLOW_EXTRA)
class _ContextEdit(TypedDict):
    # Only the edits that trim what a chat upstream never sees, or what only saves room (see the
    # module docstring); an edit of another type is refused.
    type: Literal["clear_thinking_20251015", "clear_tool_uses_20250919"]


@with_config(_ALLOW_EXTRA)
class _ContextManagement(TypedDict, total=False):
    edits: list[_ContextEdit]


@with_config(_STRICT)
class _OutputConfig(TypedDict, total=False):
    # Only the effort hint (see the module docstring); `format` and any other key are refused.
    effort: Literal["low", "medium", "high", "xhigh", "max"]


@with_config(_ALLOW_EXTRA)
class _Request(TypedDict, total=False):
    model: Required[_NonEmpty]
    messages: Required[Annotated[list[_Message], Field(min_length=1)]]
    max_tokens: Annotated[int, Field(ge=1)]
    system: Any
    stop_sequences: list[str] | None
    temperature: Annotated[float, Field(ge=0, le=1)] | None
    top_p: Annotated[float, Field(ge=0, le=1)] | None
    stream: bool | None
    metadata: _Metadata | None
    tools: list[dict[str, Any]] | None
    tool_choice: _ToolChoice | None
    thinking: _Thinking | None
    context_management: _ContextManagement | None
    output_config: _OutputConfig | None


@with_config(_ALLOW_EXTRA)
class _TextBlock(TypedDict):
    text: str


@with_config(_ALLOW_EXTRA)
class _ImageBlock(TypedDict):
    source: dict[str, Any]


@with_config(_ALLOW_EXTRA)
class _Base64Source(TypedDict):
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: _NonEmpty


@with_config(_ALLOW_EXTRA)
class _UrlSource(TypedDict):
    url: _NonEmpty


@with_config(_ALLOW_EXTRA)
class _ToolUseBlock(TypedDict):
    id: _NonEmpty
    name: _NonEmpty
    input: dict[str, Any]


@with_config(_ALLOW_EXTRA)
class _ToolResultBlock(TypedDict, total=False):
    tool_use_id: Required[_NonEmpty]
    content: Any
    is_error: bool


@with_config(_ALLOW_EXTRA)
class _CustomTool(TypedDict, total=False):
    name: Required[_NonEmpty]
    description: str
    input_schema: Required[dict[str, Any]]
    strict: bool


_REQUEST: TypeAdapter[_Request] = TypeAdapter(_Request)
_TEXT: TypeAdapter[_TextBlock] = TypeAdapter(_TextBlock)
_IMAGE: TypeAdapter[_ImageBlock] = TypeAdapter(_ImageBlock)
_BASE64: TypeAdapter[_Base64Source] = TypeAdapter(_Base64Source)
_URL: TypeAdapter[_UrlSource] = TypeAdapter(_UrlSource)
_TOOL_USE: TypeAdapter[_ToolUseBlock] = TypeAdapter(_ToolUseBlock)
_TOOL_RESULT: TypeAdapter[_ToolResultBlock] = TypeAdapter(_ToolResultBlock)
_CUSTOM_TOOL: TypeAdapter[_CustomTool] = TypeAdapter(_CustomTool)


@dataclass(frozen=True, slots=True)
class MessagesInbound:
    """What the adapter keeps of the client's request (`ChatRequest.inbound`): the model name the
    client asked for, which answers carry back, and the client's own body, which an Anthropic
    deployment is sent as it is (`providers/anthropic_native`)."""

    model: str
    native_body: dict[str, Any]
    # The client's anthropic-version and anthropic-beta, which an Anthropic deployment is sent too.
    native_headers: tuple[tuple[str, str], ...] = ()


class AnthropicMessages:
    name = "messages"
    operation = "chat"
    paths = frozenset({"/v1/messages"})

    async def parse(self, raw: bytes, request_id: str, caller: Caller) -> ChatRequest:
        client_body = json_object(raw)
        body = chat_body_of(client_body, counting=False)
        return ChatRequest(
            body=body,
            request_id=request_id,
            stream=bool(body.get("stream")),
            include_usage=False,
            api=self.name,
            inbound=MessagesInbound(body["model"], client_body, caller.api_headers),
        )

    async def body_of(self, request: ChatRequest, completion: Completion) -> bytes:
        if completion.native:
            return completion.body  # an Anthropic deployment's own answer, passed through
        return message_of(completion, _client_model(request), request.request_id)

    def stream_of(self, request: ChatRequest, stream: ChatStream) -> OutboundStream:
        if stream.native:
            return NativeEvents(stream)
        return MessagesStream(stream, _client_model(request), request.request_id)

    def error_body(self, error: GatewayError) -> bytes:
        return orjson.dumps(error_payload(error))


class NativeEvents:
    """An Anthropic deployment's own events, passed on as they came; the stream's end (held back by
    the provider so the endpoint records the answer first) is `message_stop`."""

    def __init__(self, stream: ChatStream) -> None:
        self._stream = stream

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream.__aiter__()

    async def end(self) -> bytes:
        return self._stream.ending

    def error(self, error: GatewayError) -> bytes:
        return sse_event(error_payload(error))


def count_input_tokens(raw: bytes, tokens: TokenCounter) -> int:
    """The input tokens of a `POST /v1/messages/count_tokens` body (a Messages body without the need
    for `max_tokens`), counted on its chat translation: the messages, the tool calls' names and
    arguments, and the tool definitions' JSON. Raises `InvalidRequest` as `parse` does."""
    body = chat_body_of(json_object(raw), counting=True)
    messages = body["messages"]
    total = tokens.count_messages(messages)
    for message in messages:
        for call in message.get("tool_calls") or ():
            total += tokens.count_text(call["function"]["name"] + call["function"]["arguments"])
    if body.get("tools"):
        total += tokens.count_text(orjson.dumps(body["tools"]).decode())
    return total


def chat_body_of(body: dict[str, Any], *, counting: bool) -> dict[str, Any]:
    """The chat request for a parsed Messages body; raises `InvalidRequest` naming the field. A body
    only counted (`count_tokens`) needs no `max_tokens` and may end with an assistant turn."""
    _validate(_REQUEST, body, "")
    _refuse_untranslated_fields(body)
    if not counting:
        _refuse_what_only_counting_allows(body)
    chat: dict[str, Any] = {"model": body["model"], "messages": _chat_messages(body)}
    if "max_tokens" in body:
        chat["max_tokens"] = body["max_tokens"]
    if body.get("stop_sequences"):
        chat["stop"] = body["stop_sequences"]
    for field in ("temperature", "top_p"):
        if body.get(field) is not None:
            chat[field] = body[field]
    if body.get("stream"):
        chat["stream"] = True
    user = (body.get("metadata") or {}).get("user_id")
    if user is not None:
        chat["user"] = user
    if body.get("tools"):
        chat["tools"] = _chat_tools(body["tools"])
    if body.get("tool_choice") is not None:
        _add_tool_choice(body["tool_choice"], chat)
    return chat


def _validate(adapter: TypeAdapter[Any], value: object, where: str) -> None:
    """Validate `value` with `adapter`; the first error becomes an `InvalidRequest` whose param is
    `where` followed by the error's location."""
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join([where, *map(str, first["loc"])] if where else map(str, first["loc"]))
        raise InvalidRequest(f"Invalid value for '{param}': {first['msg']}.", param=param) from exc


def _refuse(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _refuse_untranslated_fields(body: dict[str, Any]) -> None:
    for field in body:
        if field not in _TRANSLATED:
            raise _refuse(field, f"'{field}' {_CANNOT}; remove it from the request.")


def _refuse_what_only_counting_allows(body: dict[str, Any]) -> None:
    if "max_tokens" not in body:
        raise InvalidRequest("Invalid value for 'max_tokens': Field required.", param="max_tokens")
    last = len(body["messages"]) - 1
    if body["messages"][last]["role"] == "assistant":
        raise _refuse(
            f"messages.{last}.role",
            f"A final assistant turn (a prefill) {_CANNOT}: they answer with a new message instead.",
        )


def _chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = _system_messages(body.get("system"))
    for position, turn in enumerate(body["messages"]):
        where = f"messages.{position}.content"
        if turn["role"] == "user":
            messages.extend(_user_messages(turn["content"], where))
        elif turn["role"] == "assistant":
            messages.append(_assistant_message(turn["content"], where))
        else:
            messages.append(_system_turn(turn["content"], position))
    return messages


def _system_turn(content: object, position: int) -> dict[str, Any]:
    """A `system` turn between the others (Claude Code sends them): a chat system message in its place,
    of text only. The opening instructions go in `system`, so a conversation cannot start with one."""
    if position == 0:
        param = "messages.0.role"
        raise _refuse(
            param,
            f"Invalid value for '{param}': The first turn must be 'user' or 'assistant'; put "
            "opening instructions in 'system'.",
        )
    where = f"messages.{position}.content"
    if isinstance(content, str):
        return {"role": "system", "content": content}
    parts = []
    for block_position, block in enumerate(_blocks(content, where)):
        at = f"{where}.{block_position}"
        kind = _block_type(block, at)
        if kind != "text":
            raise _refuse(f"{at}.type", f"A system turn can only hold text blocks, not '{kind}'.")
        parts.append(_text_part(block, at))
    if not parts:
        raise _refuse(where, f"Invalid value for '{where}': A system turn must have at least one block.")
    return {"role": "system", "content": _content_of(parts)}


def _system_messages(system: object) -> list[dict[str, Any]]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise _refuse(
            "system", "Invalid value for 'system': Input should be a string or a list of text blocks."
        )
    parts = []
    for position, block in enumerate(system):
        where = f"system.{position}"
        kind = _block_type(block, where)
        if kind != "text":
            raise _refuse(f"{where}.type", f"System blocks of type '{kind}' {_CANNOT}; only text blocks can.")
        parts.append(_text_part(block, where))
    # One string: many chat servers (llama.cpp's among them) take no parts in a system message.
    return [{"role": "system", "content": "\n\n".join(part["text"] for part in parts)}] if parts else []


def _user_messages(content: object, where: str) -> list[dict[str, Any]]:
    """The chat messages for one user turn: a `tool` message per tool result, then the rest of it."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    blocks = _blocks(content, where)
    if not blocks:
        raise _refuse(where, f"Invalid value for '{where}': A user turn must have at least one block.")
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for position, block in enumerate(blocks):
        at = f"{where}.{position}"
        kind = _block_type(block, at)
        if kind == "text":
            parts.append(_text_part(block, at))
        elif kind == "image":
            parts.append(_image_part(block, at))
        elif kind == "tool_result":
            tool_messages.append(_tool_message(block, at))
        elif kind in ("tool_use", "thinking", "redacted_thinking"):
            raise _refuse(f"{at}.type", f"A '{kind}' block can only appear in an assistant turn.")
        else:
            raise _refuse(f"{at}.type", f"Content blocks of type '{kind}' {_CANNOT}.")
    if parts:
        tool_messages.append({"role": "user", "content": _content_of(parts)})
    return tool_messages


def _assistant_message(content: object, where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for position, block in enumerate(_blocks(content, where)):
        at = f"{where}.{position}"
        kind = _block_type(block, at)
        if kind == "text":
            parts.append(_text_part(block, at))
        elif kind == "tool_use":
            calls.append(_tool_call(block, at))
        elif kind in ("thinking", "redacted_thinking"):
            continue  # earlier turns' thinking is not part of the context
        elif kind in ("image", "tool_result"):
            raise _refuse(f"{at}.type", f"A '{kind}' block can only appear in a user turn.")
        else:
            raise _refuse(f"{at}.type", f"Content blocks of type '{kind}' {_CANNOT}.")
    message: dict[str, Any] = {
        "role": "assistant",
        "content": _content_of(parts) if parts or not calls else None,
    }
    if calls:
        message["tool_calls"] = calls
    return message


def _blocks(content: object, where: str) -> list[Any]:
    if not isinstance(content, list):
        raise _refuse(
            where, f"Invalid value for '{where}': Input should be a string or a list of content blocks."
        )
    return content


def _block_type(block: object, where: str) -> str:
    if not isinstance(block, dict):
        raise _refuse(where, f"Invalid value for '{where}': Input should be a content block object.")
    kind = block.get("type")
    if not isinstance(kind, str):
        param = f"{where}.type"
        raise _refuse(param, f"Invalid value for '{param}': A string naming the block type is required.")
    return kind


def _content_of(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A single text part as a plain string; anything else as the list of parts."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        text: str = parts[0]["text"]
        return text
    return parts if parts else ""


def _text_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    _validate(_TEXT, block, where)
    return {"type": "text", "text": block["text"]}


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    _validate(_IMAGE, block, where)
    source = block["source"]
    kind = source.get("type")
    if kind == "base64":
        _validate(_BASE64, source, f"{where}.source")
        url = f"data:{source['media_type']};base64,{source['data']}"
    elif kind == "url":
        _validate(_URL, source, f"{where}.source")
        url = source["url"]
    else:
        raise _refuse(f"{where}.source.type", f"Image sources of type '{kind}' {_CANNOT}; use base64 or url.")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_call(block: dict[str, Any], where: str) -> dict[str, Any]:
    _validate(_TOOL_USE, block, where)
    arguments = orjson.dumps(block["input"]).decode()
    return {
        "id": block["id"],
        "type": "function",
        "function": {"name": block["name"], "arguments": arguments},
    }


def _tool_message(block: dict[str, Any], where: str) -> dict[str, Any]:
    _validate(_TOOL_RESULT, block, where)
    text = _tool_result_text(block.get("content"), f"{where}.content")
    if block.get("is_error"):
        text = "Error: " + text
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}


def _tool_result_text(content: object, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for position, block in enumerate(_blocks(content, where)):
        at = f"{where}.{position}"
        kind = _block_type(block, at)
        if kind == "image":
            raise _refuse(
                f"{at}.type", f"Images inside a tool_result {_CANNOT}: chat tool messages carry text only."
            )
        if kind != "text":
            raise _refuse(f"{at}.type", f"Tool result blocks of type '{kind}' {_CANNOT}.")
        texts.append(_text_part(block, at)["text"])
    return "\n".join(texts)


def _chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    functions = []
    for position, tool in enumerate(tools):
        where = f"tools.{position}"
        kind = tool.get("type")
        if kind is not None and kind != "custom":
            message = f"The server tool '{kind}' cannot be served by this gateway's upstreams."
            raise _refuse(f"{where}.type", message + " Only custom tools can.")
        _validate(_CUSTOM_TOOL, tool, where)
        function: dict[str, Any] = {"name": tool["name"]}
        if tool.get("description") is not None:
            function["description"] = tool["description"]
        function["parameters"] = tool["input_schema"]
        if "strict" in tool:
            function["strict"] = tool["strict"]
        functions.append({"type": "function", "function": function})
    return functions


def _add_tool_choice(choice: dict[str, Any], chat: dict[str, Any]) -> None:
    kind = choice["type"]
    if kind == "tool":
        if "name" not in choice:
            raise _refuse("tool_choice.name", "Invalid value for 'tool_choice.name': Field required.")
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    if choice.get("disable_parallel_tool_use") and kind != "none":
        chat["parallel_tool_calls"] = False


def _client_model(request: ChatRequest) -> str:
    inbound = request.inbound
    return inbound.model if isinstance(inbound, MessagesInbound) else str(request.body.get("model", ""))

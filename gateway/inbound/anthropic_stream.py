"""Anthropic Messages answers rendered from OpenAI chat answers: the stream renderer, and whole answers
(`message_of`), which share its pieces (message id, stop reason, usage, error type).

A whole chat completion's choice 0 becomes a Message whose content is a `thinking` block if the message
has reasoning text, a `text` block if it has content, and a `tool_use` block per tool call. A tool call
whose arguments are not a JSON object (or a body that is not a chat completion with a choice) raises
`UpstreamError` rather than inventing an `input`: that output cannot be rendered losslessly. Empty
arguments are `{}`.

A chat chunk stream becomes Anthropic's event sequence: `message_start` at the first chunk, then for
each content block `content_block_start`, its deltas and `content_block_stop`, and at the end
`message_delta` (stop reason and usage) and `message_stop`. Reasoning deltas (`reasoning_content` or
`reasoning`) become a `thinking` block (with an empty signature: chat upstreams sign nothing), content
deltas a `text` block, and each tool call a `tool_use` block whose arguments go out as
`input_json_delta` fragments exactly as the upstream streamed them. A new block opens whenever the kind
changes or a new tool call index starts. Only choice 0 is rendered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.errors import GatewayError, UpstreamError
from gateway.wire import ChatStream, Completion, Usage


def stop_reason_of(finish_reason: object) -> str:
    """Anthropic's stop reason for a chat `finish_reason` (chat upstreams do not say which stop
    sequence matched, so a stop is always `end_turn`)."""
    if finish_reason == "length":
        return "max_tokens"
    if finish_reason in ("tool_calls", "function_call"):
        return "tool_use"
    if finish_reason == "content_filter":
        return "refusal"
    return "end_turn"


def message_id_of(chat_id: object, request_id: str) -> str:
    """`msg_` and the chat completion's id (without its `chatcmpl-`), or the request id when it has none."""
    if isinstance(chat_id, str) and chat_id:
        return "msg_" + chat_id.removeprefix("chatcmpl-")
    return "msg_" + request_id


def usage_of(usage: Usage | None) -> dict[str, int]:
    """Anthropic's usage for a chat usage. Chat `prompt_tokens` include the cached ones; Anthropic's
    `input_tokens` do not (they count what came after the cache), so cached tokens move to
    `cache_read_input_tokens`."""
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    details = usage.details.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if not isinstance(cached, int) or isinstance(cached, bool):
        return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}
    return {
        "input_tokens": max(usage.prompt_tokens - cached, 0),
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": cached,
    }


def error_type_of(status: int) -> str:
    """Anthropic's documented error type for an HTTP status (other 4xx are `invalid_request_error`)."""
    match status:
        case 401:
            return "authentication_error"
        case 402:
            return "billing_error"
        case 403:
            return "permission_error"
        case 404:
            return "not_found_error"
        case 413:
            return "request_too_large"
        case 429:
            return "rate_limit_error"
        case 503 | 529:
            return "overloaded_error"
        case 504:
            return "timeout_error"
    return "api_error" if status >= 500 else "invalid_request_error"


def error_payload(error: GatewayError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type_of(error.status), "message": error.message}}


def sse_event(payload: dict[str, Any]) -> bytes:
    """One event, named by its payload's type as Anthropic names them."""
    kind: str = payload["type"]
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def chunks_in(block: bytes) -> list[dict[str, Any]]:
    """The chat chunks in a block of complete SSE events; an event that is not a JSON object, or one
    that carries an upstream error, breaks the stream (never dropped silently)."""
    chunks = []
    for event in block.split(b"\n\n"):
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            data = line[len(b"data:") :].strip()
            if data == b"[DONE]":
                continue
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise UpstreamError("The upstream sent a stream event that is not JSON.") from exc
            if not isinstance(chunk, dict):
                raise UpstreamError("The upstream sent a stream event that is not a JSON object.")
            if "error" in chunk and not chunk.get("choices"):
                raise UpstreamError("The upstream reported an error in the middle of the stream.")
            chunks.append(chunk)
    return chunks


def first_choice(choices: object) -> dict[str, Any] | None:
    """Choice 0 of a chunk's or a completion's choices, if there is one."""
    if not isinstance(choices, list):
        return None
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            return choice
    return None


def reasoning_of(message: dict[str, Any]) -> str:
    """A chat message's or delta's reasoning text (`reasoning_content`, as vLLM and DeepSeek name it, or
    `reasoning`, as others do)."""
    text = message.get("reasoning_content") or message.get("reasoning")
    return text if isinstance(text, str) else ""


def message_of(completion: Completion, model: str, request_id: str) -> bytes:
    """A whole chat completion as an Anthropic Message body, under the client's `model` name."""
    chat = _completion_of(completion.body)
    choice = first_choice(chat.get("choices"))
    if choice is None:
        raise UpstreamError("The upstream answered a chat completion without a choice.")
    message = choice.get("message")
    usage = completion.usage
    if usage is None and isinstance(chat.get("usage"), dict):
        usage = Usage.from_openai(chat["usage"])
    answer = {
        "id": message_id_of(chat.get("id"), request_id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": _answer_blocks(message if isinstance(message, dict) else {}, request_id),
        "stop_reason": stop_reason_of(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": usage_of(usage),
    }
    return orjson.dumps(answer)


def _completion_of(body: bytes) -> dict[str, Any]:
    try:
        chat = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError("The upstream's answer is not JSON.") from exc
    if not isinstance(chat, dict):
        raise UpstreamError("The upstream's answer is not a chat completion object.")
    return chat


def _answer_blocks(message: dict[str, Any], request_id: str) -> list[dict[str, Any]]:
    """A chat answer's message as content blocks: thinking, then text, then one tool_use per call
    (a call without an id gets one made of the request id and its position)."""
    blocks: list[dict[str, Any]] = []
    reasoning = reasoning_of(message)
    if reasoning:
        blocks.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content") or message.get("refusal")
    if isinstance(text, str) and text:
        blocks.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    for position, call in enumerate(calls if isinstance(calls, list) else ()):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise UpstreamError("The upstream answered a tool call without a function.")
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{request_id}_{position}",
                "name": function.get("name") or "",
                "input": _tool_input(function.get("arguments")),
            }
        )
    return blocks


def _tool_input(arguments: object) -> dict[str, Any]:
    """A tool call's arguments as the object Anthropic's `input` must be ("" or none is `{}`)."""
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) else None
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise UpstreamError("The upstream answered a tool call whose arguments are not a JSON object.")
    return parsed


class MessagesStream:
    """One chat chunk stream rendered as Anthropic Messages events, as the chunks arrive."""

    def __init__(self, stream: ChatStream, model: str, request_id: str) -> None:
        self._stream = stream
        self._model = model
        self._request_id = request_id
        self._started = False
        self._index = -1  # the open (or last) content block's index
        self._kind: str | None = None  # the open block's kind: "thinking", "text", "tool_use"
        self._tool_index: int | None = None  # the chat tool call index of the open tool_use block
        self._finish_reason: object = None
        self._chunk_usage: Usage | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        async for block in self._stream:
            events: list[bytes] = []
            for chunk in chunks_in(block):
                self._translate(chunk, events)
            if events:
                yield b"".join(events)

    async def end(self) -> bytes:
        events: list[bytes] = []
        if not self._started:
            self._start({}, events)
        self._close_block(events)
        usage = self._stream.usage or self._chunk_usage
        delta = {"stop_reason": stop_reason_of(self._finish_reason), "stop_sequence": None}
        events.append(sse_event({"type": "message_delta", "delta": delta, "usage": usage_of(usage)}))
        events.append(sse_event({"type": "message_stop"}))
        return b"".join(events)

    def error(self, error: GatewayError) -> bytes:
        return sse_event(error_payload(error))

    def _translate(self, chunk: dict[str, Any], events: list[bytes]) -> None:
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._chunk_usage = Usage.from_openai(usage)
        if not self._started:
            self._start(chunk, events)
        choice = first_choice(chunk.get("choices"))
        if choice is None:
            return
        delta = choice.get("delta")
        if isinstance(delta, dict):
            self._translate_delta(delta, events)
        if choice.get("finish_reason") is not None:
            self._finish_reason = choice["finish_reason"]

    def _translate_delta(self, delta: dict[str, Any], events: list[bytes]) -> None:
        reasoning = reasoning_of(delta)
        if reasoning:
            self._thinking_delta(reasoning, events)
        for field in ("content", "refusal"):
            text = delta.get(field)
            if isinstance(text, str) and text:
                self._text_delta(text, events)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    self._tool_call_delta(call, events)

    def _start(self, chunk: dict[str, Any], events: list[bytes]) -> None:
        self._started = True
        message: dict[str, Any] = {
            "id": message_id_of(chunk.get("id"), self._request_id),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage_of(self._chunk_usage),
        }
        events.append(sse_event({"type": "message_start", "message": message}))

    def _thinking_delta(self, text: str, events: list[bytes]) -> None:
        if self._kind != "thinking":
            self._open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""}, events)
        self._block_delta({"type": "thinking_delta", "thinking": text}, events)

    def _text_delta(self, text: str, events: list[bytes]) -> None:
        if self._kind != "text":
            self._open_block("text", {"type": "text", "text": ""}, events)
        self._block_delta({"type": "text_delta", "text": text}, events)

    def _tool_call_delta(self, call: dict[str, Any], events: list[bytes]) -> None:
        index = call.get("index", 0)
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        if self._kind != "tool_use" or index != self._tool_index:
            tool_id = call.get("id") or f"toolu_{self._request_id}_{index}"
            name = function.get("name") or ""
            self._open_block(
                "tool_use", {"type": "tool_use", "id": tool_id, "name": name, "input": {}}, events
            )
            self._tool_index = index if isinstance(index, int) else None
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            self._block_delta({"type": "input_json_delta", "partial_json": arguments}, events)

    def _open_block(self, kind: str, content_block: dict[str, Any], events: list[bytes]) -> None:
        self._close_block(events)
        self._index += 1
        self._kind = kind
        start = {"type": "content_block_start", "index": self._index, "content_block": content_block}
        events.append(sse_event(start))

    def _block_delta(self, delta: dict[str, Any], events: list[bytes]) -> None:
        events.append(sse_event({"type": "content_block_delta", "index": self._index, "delta": delta}))

    def _close_block(self, events: list[bytes]) -> None:
        if self._kind is not None:
            events.append(sse_event({"type": "content_block_stop", "index": self._index}))
            self._kind = None
            self._tool_index = None

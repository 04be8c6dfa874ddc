"""The OpenAI Responses API (`POST /v1/responses`) served by chat completions upstreams.

A Responses request is translated into a chat request, and the chat answer back into a Response
object (`body_of`) or the Responses event stream (`stream_of`, `gateway.inbound.responses_stream`).

Translated:
    input                       a string → one user message; items → chat messages:
        message (role user/assistant/system/developer, with or without `"type": "message"`;
                 content a string or input_text/output_text/refusal/input_image parts, images as
                 URLs or base64 data URLs) → a chat message; developer becomes system (chat-only
                 upstreams rarely know the developer role)
        function_call           → an assistant message's tool_calls (consecutive calls, and calls
                                  right after an assistant message, join that one message); one
                                  with a `namespace` calls the function `namespace__name`
        custom_tool_call        → a tool call of the custom tool's function, arguments {"input": …}
        tool_search_call        → a tool call of the function `tool_search`, with its arguments
        function_call_output, custom_tool_call_output → a tool message (output a string, or
                                  input_text parts)
        tool_search_output      → a tool message naming the tools it loaded, which are offered to
                                  the upstream as chat tools from then on (in this request only:
                                  a continuation by previous_response_id must send them again)
    instructions                → the leading system message (not carried over by previous_response_id)
    previous_response_id        → the stored conversation, after the instructions, before this input
    tools                       → chat functions; tool_choice (a function or a custom tool) and
                                  parallel_tool_calls with them:
        function                → a function as it is
        custom (freeform)       → a function of one string parameter, `input`; a grammar its input
                                  must follow (lark or regex) is spelled out in the description, as
                                  chat upstreams cannot constrain the output to it
        namespace               → its function and custom tools, each named `namespace__name` (chat
                                  function names allow no dots)
        tool_search, run by the client (`execution: "client"`) → a function `tool_search` with the
                                  tool's description and parameters
    max_output_tokens → max_tokens; temperature, top_p, user as they are
    text.format json_object / json_schema → response_format; text.verbosity → verbosity
    reasoning.effort → reasoning_effort; service_tier, prompt_cache_key, safety_identifier as they are

A chat tool call is rendered as the item its tool answers with: a call of a custom tool's function as
a custom_tool_call whose `input` is the string in its arguments' `input` (arguments of another shape,
as a model that wrote the text bare gives, are the input themselves), a call of `tool_search` as a
tool_search_call (execution client) with its arguments parsed, a call of a namespaced function as a
function_call with `name` and `namespace` apart; anything else as a function_call as it came.

Refused (400, naming the field): input items that are not the above (item_reference, file_search_call,
web_search_call, computer_call…, local_shell_call…, a tool search the server ran, …), images by
file_id, files, hosted tools (web search, file search, computer use, code interpreter, image
generation, MCP, local shell, a tool search run by the server; the web search refusal says how to
leave it out of the Codex CLI, which offers it by default), a namespace holding anything but
function and custom tools, two tools offered under one chat name, tool_choice naming a hosted tool
or an allowed_tools list, `background: true`, `conversation` and `prompt` (templates); a
previous_response_id that is not stored, or is another tenant's, is 404.

Accepted but dropped: reasoning input items (chat upstreams take no reasoning back, and the
gateway never hands out encrypted reasoning, so `include: ["reasoning.encrypted_content"]`, which
the Codex CLI always sends with `store: false`, gets none), reasoning.summary, store (it decides
only whether the gateway stores the answer), metadata, include, truncation, top_logprobs,
max_tool_calls, stream_options, tools' `defer_loading` (deferred tools are offered from the
start) and any field the gateway does not know (the Codex CLI's `client_metadata`, …). The
Response echoes metadata, truncation, top_logprobs, max_tool_calls, reasoning and store as the
client sent them, and the tools of the request as they were understood.

Answers: the chat message's reasoning (`reasoning_content` or `reasoning`) becomes a reasoning item
whose one summary part is that text verbatim; its text a message item; each tool call the item its
tool answers with (above). finish_reason `length` makes the Response incomplete (max_output_tokens),
`content_filter` too (content_filter). With `store` on (the default) the answer is stored before
it is returned: the Response, this request's input items and the chat conversation so far. A store
that fails to keep an answer is logged and the answer goes out anyway; one that fails to read a
previous response is a 503 (`StoredResponsesUnavailable`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.errors import GatewayError, NotFound, UpstreamError
from gateway.inbound.adapter import OutboundStream
from gateway.inbound.json_body import json_object
from gateway.inbound.response_store import ResponseStore, StoredResponse, tenant_of
from gateway.inbound.responses_render import (
    INCOMPLETE,
    ResponsesInbound,
    StoredResponsesUnavailable,
    message_item,
    output_item_id,
    reasoning_item,
    response_object,
    status_of,
    store_answer,
    text_or,
    tool_call_item,
    tool_call_prefix,
    usage_object,
)
from gateway.inbound.responses_request import (
    chat_messages,
    input_items,
    invalid,
    optional_bool,
    optional_str,
    refuse_unsupported,
    translate_fields,
)
from gateway.inbound.responses_stream import ResponsesStream
from gateway.wire import Caller, ChatRequest, ChatStream, Completion, Usage


class Responses:
    name = "responses"
    operation = "chat"
    paths = frozenset({"/v1/responses"})

    def __init__(self, store: ResponseStore) -> None:
        self._store = store

    async def parse(
        self, raw: bytes, request_id: str, caller: Caller, *, response_id: str | None = None
    ) -> ChatRequest:
        """`response_id`: the id the answer is to have (a background response's, given when it was
        queued); a new one by default."""
        body = json_object(raw)
        refuse_unsupported(body)
        tenant = tenant_of(caller)
        # Not the request id: a client may send the same x-request-id twice.
        base = response_id.removeprefix("resp_") if response_id else secrets.token_hex(12)
        items = input_items(body, base)
        echo, chat, tools = translate_fields(body, items)
        previous_id = optional_str(body, "previous_response_id")
        earlier = await self._conversation_before(tenant, previous_id)
        conversation = [*earlier, *chat_messages(items)]
        instructions = echo["instructions"]
        chat["messages"] = [{"role": "system", "content": instructions}] if instructions else []
        chat["messages"].extend(conversation)
        if not chat["messages"]:
            raise invalid("input", "the request holds no message to answer")
        stream = bool(optional_bool(body, "stream"))
        if stream:
            chat["stream"] = True
        store = optional_bool(body, "store") is not False
        echo["store"] = store
        inbound = ResponsesInbound(
            response_id=f"resp_{base}",
            id_base=base,
            created_at=int(time.time()),
            echo=echo,
            input_items=items,
            conversation=conversation,
            tenant=tenant,
            store=store,
            previous_response_id=previous_id,
            tools=tools,
            client_body=body,
            earlier=earlier,
            # Queued as a background response (its id given): it says so when answered.
            background=optional_bool(body, "background") is True or response_id is not None,
        )
        return ChatRequest(chat, request_id, stream, include_usage=False, api=self.name, inbound=inbound)

    async def _conversation_before(self, tenant: str, previous_id: str | None) -> list[dict[str, Any]]:
        if previous_id is None:
            return []
        try:
            previous = await self._store.get(tenant, previous_id)
        except Exception as exc:  # the backend's own errors: the contract names none
            message = "Stored responses cannot be read now; try again shortly."
            raise StoredResponsesUnavailable(message, param="previous_response_id") from exc
        if previous is None:
            message = f"Previous response with id '{previous_id}' not found."
            raise NotFound(message, param="previous_response_id")
        # A copy: the messages are the store's own objects in a store that keeps them in memory.
        conversation: list[dict[str, Any]] = orjson.loads(orjson.dumps(previous.conversation))
        return conversation

    async def body_of(self, request: ChatRequest, completion: Completion) -> bytes:
        inbound = _inbound_of(request)
        if completion.native:  # an upstream that speaks the Responses API answered: passed on as it is
            await store_answer(self._store, inbound, _native_response(completion.body))
            return completion.body
        answer = _completion_json(completion.body)
        choice = _first_choice(answer)
        status, reason = status_of(choice.get("finish_reason"))
        message = choice.get("message")
        output = output_of_message(inbound, message if isinstance(message, dict) else {}, status)
        usage = completion.usage
        if usage is None and isinstance(answer.get("usage"), dict):
            usage = Usage.from_openai(answer["usage"])
        response = response_object(
            inbound, status=status, output=output, usage=usage_object(usage), incomplete_reason=reason
        )
        await store_answer(self._store, inbound, response)
        return orjson.dumps(response)

    def stream_of(self, request: ChatRequest, stream: ChatStream) -> OutboundStream:
        if stream.native:
            return NativeResponseEvents(_inbound_of(request), stream, self._store)
        return ResponsesStream(_inbound_of(request), stream, self._store)

    def error_body(self, error: GatewayError) -> bytes:
        return error.to_json()


# Stored responses, for GET /v1/responses/{id}, its input items, and DELETE.


def input_items_page(stored: StoredResponse, *, after: str | None, limit: int, order: str) -> dict[str, Any]:
    """One page of a stored response's input items as the API lists them (`order` "asc" is the
    order they were sent in; the API's default is "desc"); `after` is the id the page starts after."""
    if order not in ("asc", "desc"):
        raise invalid("order", "expected 'asc' or 'desc'")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
        raise invalid("limit", "expected an integer from 1 to 100")
    items = stored.input_items if order == "asc" else stored.input_items[::-1]
    start = 0
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise invalid("after", f"response '{stored.id}' has no input item '{after}'")
        start = ids.index(after) + 1
    page = items[start : start + limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": start + limit < len(items),
    }


def deleted_object(response_id: str) -> dict[str, Any]:
    """What DELETE /v1/responses/{id} answers once the response is gone."""
    return {"id": response_id, "object": "response", "deleted": True}


# The answer.


def output_of_message(
    inbound: ResponsesInbound, message: dict[str, Any], status: str
) -> list[dict[str, Any]]:
    """The output items for a chat message: its reasoning, its text, then one per tool call."""
    item_status = INCOMPLETE if status == INCOMPLETE else "completed"
    output: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        output.append(reasoning_item(output_item_id(inbound, "rs", len(output)), reasoning))
    text = "".join(part for part in (message.get("content"), message.get("refusal")) if isinstance(part, str))
    if text:
        output.append(message_item(output_item_id(inbound, "msg", len(output)), text, item_status))
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        if isinstance(call, dict):
            output.append(_tool_call_of(inbound, call, len(output), item_status))
    return output


def _tool_call_of(inbound: ResponsesInbound, call: dict[str, Any], index: int, status: str) -> dict[str, Any]:
    """A chat tool call as the item its tool answers with (see `tool_call_item`)."""
    function = call.get("function")
    function = function if isinstance(function, dict) else {}
    arguments = function.get("arguments", "")
    if not isinstance(arguments, str):
        arguments = orjson.dumps(arguments).decode()
    call_id = text_or(call.get("id"), f"call_{inbound.id_base}_{index}")
    name = text_or(function.get("name"), "")
    origin = inbound.tools.get(name)
    item_id = output_item_id(inbound, tool_call_prefix(origin), index)
    return tool_call_item(item_id, origin, call_id, name, arguments, status)


class NativeResponseEvents:
    """An upstream's own Responses events, passed on as they came; its last event (held back by the
    provider until the answer is recorded) is sent at the end, once the response in it is stored."""

    def __init__(self, inbound: ResponsesInbound, stream: ChatStream, store: ResponseStore) -> None:
        self._inbound = inbound
        self._stream = stream
        self._store = store
        self._sequence = -1

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream.__aiter__()

    async def end(self) -> bytes:
        ending = self._stream.ending
        start = ending.find(b"data:")
        try:
            event = orjson.loads(ending[start + 5 :])
        except orjson.JSONDecodeError as exc:
            raise UpstreamError("The upstream's last stream event was malformed.") from exc
        self._sequence = event.get("sequence_number", -1) if isinstance(event, dict) else -1
        response = event.get("response") if isinstance(event, dict) else None
        if isinstance(response, dict) and event.get("type") == "response.completed":
            await store_answer(self._store, self._inbound, response)
        return ending

    def error(self, error: GatewayError) -> bytes:
        payload = {"type": "error", "code": error.code or error.error_type, "message": error.message,
                   "param": error.param, "sequence_number": self._sequence + 1}  # fmt: skip
        return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"


def _native_response(body: bytes) -> dict[str, Any]:
    try:
        response = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError("The upstream's answer was not a Response object.") from exc
    if not isinstance(response, dict) or not isinstance(response.get("output"), list):
        raise UpstreamError("The upstream's answer was not a Response object.")
    return response


def _inbound_of(request: ChatRequest) -> ResponsesInbound:
    if not isinstance(request.inbound, ResponsesInbound):
        raise TypeError("The request was not parsed by the Responses adapter.")
    return request.inbound


def _completion_json(body: bytes) -> dict[str, Any]:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError("The upstream's answer is not valid JSON.") from exc
    if not isinstance(answer, dict):
        raise UpstreamError("The upstream's answer is not a chat completion.")
    return answer


def _first_choice(answer: dict[str, Any]) -> dict[str, Any]:
    choices = answer.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    return first if isinstance(first, dict) else {}

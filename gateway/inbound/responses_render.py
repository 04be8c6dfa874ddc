"""The Responses API's objects, built from chat answers: output items, usage, the Response object
itself, and what is stored of an answer for `previous_response_id`.

Shared by the whole-answer renderer (`gateway.inbound.responses`) and the stream renderer
(`gateway.inbound.responses_stream`), so both render and store an answer the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import GatewayError
from gateway.inbound.response_store import ResponseStore, StoredResponse
from gateway.inbound.responses_history import native_body
from gateway.wire import Usage

logger = logging.getLogger("gateway.inbound.responses")

COMPLETED = "completed"
INCOMPLETE = "incomplete"
IN_PROGRESS = "in_progress"
FAILED = "failed"

# Chat finish reasons that leave a Response incomplete, and the reason it gives.
_INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}

# What a chat tool stands for in the client's request (`ToolOrigin.kind`).
FUNCTION_TOOL = "function"
CUSTOM_TOOL = "custom"
TOOL_SEARCH = "tool_search"
# The chat function a client-executed tool search is offered as.
TOOL_SEARCH_NAME = "tool_search"
# Between a namespace and a tool's name in the chat function's name (chat names allow [A-Za-z0-9_-]).
NAMESPACE_SEPARATOR = "__"
# The one string parameter a custom (freeform) tool's chat function takes.
CUSTOM_INPUT = "input"
# The items that are tool calls, each standing for one chat tool call.
TOOL_CALL_ITEMS = frozenset({"function_call", "custom_tool_call", "tool_search_call"})


class StoredResponsesUnavailable(GatewayError):
    """The response store failed to read a previous response (its backend is away or busy)."""

    status = 503
    error_type = "server_error"
    code: str | None = "stored_responses_unavailable"

    @property
    def retryable(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class ToolOrigin:
    """The tool of the client's request that a chat function stands for: a function, a custom
    (freeform) tool or the client-executed tool search, by its own name and namespace."""

    kind: str  # FUNCTION_TOOL, CUSTOM_TOOL or TOOL_SEARCH
    name: str
    namespace: str | None = None


def chat_tool_name(name: str, namespace: str | None) -> str:
    """The chat function's name for a tool of the request (namespaced ones are `namespace__name`)."""
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace else name


@dataclass(frozen=True, slots=True)
class ResponsesInbound:
    """What the Responses adapter keeps of a client's request (`ChatRequest.inbound`) to render and
    store its answer."""

    response_id: str  # "resp_" + id_base
    id_base: str  # unique per request: the output items' ids are built on it
    created_at: int
    # The request fields a Response object repeats, `model` included, normalized with their defaults.
    echo: dict[str, Any]
    # This request's input items, normalized, each with an "id" (what GET .../input_items lists).
    input_items: list[dict[str, Any]]
    # The chat messages so far, instructions excluded: the previous response's conversation, then
    # this request's input.
    conversation: list[dict[str, Any]]
    tenant: str
    store: bool
    previous_response_id: str | None
    # The chat functions offered to the upstream, by name: what each stands for, so a call to one is
    # rendered as the item its tool answers with. A name not here is rendered as a function call.
    tools: Mapping[str, ToolOrigin] = field(default_factory=dict)
    # The client's body and the stored conversation it continues: what an upstream that speaks the
    # Responses API is sent instead is made from them only when one is called (`native_body`).
    client_body: dict[str, Any] = field(default_factory=dict)
    earlier: list[dict[str, Any]] = field(default_factory=list)
    # `background: true`: answered later, in spare capacity; the client polls GET /v1/responses/{id}.
    background: bool = False

    @property
    def native_body(self) -> dict[str, Any]:
        return native_body(self.client_body, self.earlier, self.previous_response_id)


def output_item_id(inbound: ResponsesInbound, prefix: str, output_index: int) -> str:
    return f"{prefix}_{inbound.id_base}_{output_index}"


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    """An assistant message item; `text` None gives the empty item a stream announces first."""
    content = [] if text is None else [output_text_part(text)]
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str, namespace: str | None = None
) -> dict[str, Any]:
    item = {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }
    if namespace:
        item["namespace"] = namespace
    return item


def custom_tool_call_item(
    item_id: str, call_id: str, name: str, text: str, status: str, namespace: str | None = None
) -> dict[str, Any]:
    item = {
        "id": item_id,
        "type": "custom_tool_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "input": text,
    }
    if namespace:
        item["namespace"] = namespace
    return item


def tool_search_call_item(item_id: str, call_id: str, arguments: object, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "tool_search_call",
        "status": status,
        "call_id": call_id,
        "arguments": arguments,
        "execution": "client",
    }


def tool_call_prefix(origin: ToolOrigin | None) -> str:
    """The id prefix of the item a call to this tool is rendered as."""
    kind = origin.kind if origin is not None else FUNCTION_TOOL
    return {CUSTOM_TOOL: "ctc", TOOL_SEARCH: "tsc"}.get(kind, "fc")


def tool_call_item(
    item_id: str, origin: ToolOrigin | None, call_id: str, chat_name: str, arguments: str, status: str
) -> dict[str, Any]:
    """A chat tool call as the item its tool answers with: a custom tool's call carries the string
    its one parameter holds, a tool search's call its arguments as JSON; a function (or a name the
    request did not offer) a function call."""
    if origin is None:
        return function_call_item(item_id, call_id, chat_name, arguments, status)
    if origin.kind == CUSTOM_TOOL:
        text = custom_input_of(arguments)
        return custom_tool_call_item(item_id, call_id, origin.name, text, status, origin.namespace)
    if origin.kind == TOOL_SEARCH:
        return tool_search_call_item(item_id, call_id, search_arguments_of(arguments), status)
    return function_call_item(item_id, call_id, origin.name, arguments, status, origin.namespace)


def custom_input_of(arguments: str) -> str:
    """A custom tool's input from its chat call's arguments: the string in `{"input": ...}`; arguments
    of another shape (a model that wrote the text bare) are taken as the input themselves."""
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    if isinstance(parsed, dict) and isinstance(parsed.get(CUSTOM_INPUT), str):
        text: str = parsed[CUSTOM_INPUT]
        return text
    return arguments


def search_arguments_of(arguments: str) -> object:
    """A tool search call's arguments (JSON in the Responses API): parsed; empty is `{}`, and text
    that is not JSON stays the string it is."""
    if not arguments:
        return {}
    try:
        parsed: object = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    return parsed


def chat_tool_call(item: dict[str, Any]) -> dict[str, Any]:
    """The chat tool call a tool call item (function, custom tool or tool search call) stands for."""
    kind = item["type"]
    if kind == "custom_tool_call":
        name = chat_tool_name(item["name"], item.get("namespace"))
        arguments = orjson.dumps({CUSTOM_INPUT: item["input"]}).decode()
    elif kind == "tool_search_call":
        name = TOOL_SEARCH_NAME
        found = item["arguments"]
        arguments = found if isinstance(found, str) else orjson.dumps(found).decode()
    else:
        name = chat_tool_name(item["name"], item.get("namespace"))
        arguments = item["arguments"]
    return {"id": item["call_id"], "type": "function", "function": {"name": name, "arguments": arguments}}


def reasoning_item(item_id: str, text: str | None) -> dict[str, Any]:
    """The upstream's reasoning text, verbatim, as the item's one summary part."""
    summary = [] if text is None else [summary_text_part(text)]
    return {"id": item_id, "type": "reasoning", "summary": summary}


def summary_text_part(text: str) -> dict[str, Any]:
    return {"type": "summary_text", "text": text}


def text_or(value: object, default: str) -> str:
    """`value` if it is a string, else `default` (for fields of an upstream's answer)."""
    return value if isinstance(value, str) else default


def status_of(finish_reason: object) -> tuple[str, str | None]:
    """The Response status for a chat finish reason, and the incomplete reason if any."""
    reason = _INCOMPLETE_REASONS.get(finish_reason) if isinstance(finish_reason, str) else None
    return (INCOMPLETE, reason) if reason else (COMPLETED, None)


def usage_object(usage: Usage | None) -> dict[str, Any] | None:
    """Chat usage in the Responses API's terms (cached and reasoning tokens from the details)."""
    if usage is None:
        return None
    prompt_details = usage.details.get("prompt_tokens_details") or {}
    completion_details = usage.details.get("completion_tokens_details") or {}
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": _count(prompt_details, "cached_tokens"),
            "cache_write_tokens": _count(prompt_details, "cache_write_tokens"),
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": _count(completion_details, "reasoning_tokens")},
        "total_tokens": usage.total_tokens or usage.prompt_tokens + usage.completion_tokens,
    }


def _count(details: object, key: str) -> int:
    value = details.get(key) if isinstance(details, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def response_object(
    inbound: ResponsesInbound,
    *,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    incomplete_reason: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Response object: the answer's output and usage beside the request's echoed fields."""
    response: dict[str, Any] = {
        "id": inbound.response_id,
        "object": "response",
        "created_at": inbound.created_at,
        "status": status,
        "background": inbound.background,
        "error": error,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        **inbound.echo,
        "output": output,
        "usage": usage,
    }
    if status == COMPLETED:
        response["completed_at"] = int(time.time())
    return response


def assistant_message(output: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat assistant message an answer's output items stand for (its text and tool calls;
    reasoning is left out, as chat upstreams take no reasoning back)."""
    texts = [
        part["text"]
        for item in output
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    ]
    calls = [chat_tool_call(item) for item in output if item["type"] in TOOL_CALL_ITEMS]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


async def store_answer(store: ResponseStore, inbound: ResponsesInbound, response: dict[str, Any]) -> None:
    """Keep the answer for `previous_response_id` and GET /v1/responses/{id}, unless `store` was off.

    A store that fails is logged and the answer goes out all the same: it was paid for, and a client
    that continues from it is told plainly that the previous response is not found."""
    if not inbound.store:
        return
    conversation = [*inbound.conversation, assistant_message(response["output"])]
    stored = StoredResponse(
        id=response.get("id") or inbound.response_id,
        tenant=inbound.tenant,
        response=response,
        input_items=inbound.input_items,
        conversation=conversation,
        created_at=float(inbound.created_at),
    )
    try:
        await store.put(stored)
    except Exception:  # the backend's own errors: the contract names none
        logger.warning("could not store response %s", inbound.response_id, exc_info=True)

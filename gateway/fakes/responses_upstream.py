"""OpenAI's Responses API (`POST /v1/responses`) for the fake OpenAI upstream: the request parsed, the
answer and its event stream built from it and a scripted `Behaviour`, and written out.

`FakeOpenAIUpstream._responses` records the request, takes the behaviour from the chat script's queue and
plays latency and errors; the rest is here. This module may not import the server (no import cycles,
tests/test_layers.py), so the server hands its abort helper in.

The fake keeps no state: a request naming a `previous_response_id` is refused, so a test passes only when
the gateway sends the whole conversation itself. Words count as tokens, as in the chat fake.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from gateway.fakes.script import (
    TOOL_ARGUMENTS,
    Behaviour,
    default_content,
    first_tool_name,
    message_text,
    split_pieces,
    word_count,
)

# The chat fake's fallback too, for a request without a model.
DEFAULT_MODEL = "fake-model"
JSON_HEADERS = {"Content-Type": "application/json"}
SSE_HEADERS = {"Content-Type": "text/event-stream"}
GARBAGE = b'{"id": "resp_garbage", this is not json'
STORES_NOTHING = "this fake stores no responses"

Abort = Callable[[web.BaseRequest], Awaitable[None]]


class ResponsesBadRequest(Exception):
    """The body is not a Responses request; answered with a 400 like OpenAI's."""


@dataclass(frozen=True, slots=True)
class ResponsesCall:
    """The parts of one Responses request that shape the answer."""

    number: int
    created_at: int
    model: str
    # A string input as the one user message it stands for; else the request's items as sent.
    input: list[Any]
    instructions: str | None = None
    tools: tuple[dict[str, Any], ...] = ()
    stream: bool = False
    max_output_tokens: int | None = None
    store: bool = True
    previous_response_id: str | None = None
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True

    @property
    def response_id(self) -> str:
        return f"resp_fake{self.number}"

    @property
    def message_id(self) -> str:
        return f"msg_fake{self.number}"

    @property
    def function_call_id(self) -> str:
        """The output item's id (`fc_…`); `call_id` is what the client answers with its output."""
        return f"fc_fake{self.number}"

    @property
    def call_id(self) -> str:
        return f"call_fake{self.number}"


def _type_name(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def parse_request(raw: bytes, number: int, model_name: str | None) -> tuple[dict[str, Any], ResponsesCall]:
    """Validate just enough of a Responses request to answer it; raises ResponsesBadRequest otherwise.

    `number` makes the ids (`resp_fake<N>`, `msg_fake<N>`, `call_fake<N>`); `model_name`, when set, is the
    model every answer names, as the chat fake's.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ResponsesBadRequest(f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(body, dict):
        raise ResponsesBadRequest("The request body must be a JSON object.")
    if "input" not in body:
        raise ResponsesBadRequest("Missing required parameter: 'input'.")
    given = body["input"]
    if isinstance(given, str):
        items: list[Any] = [{"role": "user", "content": given}]
    elif isinstance(given, list):
        items = given
    else:
        raise ResponsesBadRequest(
            "Invalid type for 'input': expected one of a string or array of input items, "
            f"but got {_type_name(given)} instead."
        )
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise ResponsesBadRequest(
            f"Invalid type for 'instructions': expected a string, but got {_type_name(instructions)} instead."
        )
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise ResponsesBadRequest(
            f"Invalid type for 'tools': expected an array of tools, but got {_type_name(tools)} instead."
        )
    model = body.get("model")
    limit = body.get("max_output_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        limit = None
    previous = body.get("previous_response_id")
    choice = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    call = ResponsesCall(
        number=number,
        created_at=int(time.time()),
        model=model_name or (model if isinstance(model, str) else DEFAULT_MODEL),
        input=items,
        instructions=instructions,
        # Function tools only: the answer echoes them, and only they can be called.
        tools=tuple(
            tool
            for tool in tools or ()
            if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("name"), str)
        ),
        stream=body.get("stream") is True,
        max_output_tokens=limit,
        store=body.get("store") is not False,
        previous_response_id=None if previous is None else str(previous),
        tool_choice=choice if isinstance(choice, str | dict) else "auto",
        parallel_tool_calls=parallel if isinstance(parallel, bool) else True,
    )
    return body, call


def refusal(call: ResponsesCall) -> str | None:
    """Why the fake refuses this well-formed request (a 400), or None: it cannot continue a stored one."""
    if call.previous_response_id is None:
        return None
    return f"Previous response with id '{call.previous_response_id}' not found: {STORES_NOTHING}."


def _messages(call: ResponsesCall) -> list[dict[str, Any]]:
    """The input's message items (`type` "message", or none with a `role`)."""
    return [
        item
        for item in call.input
        if isinstance(item, dict) and item.get("type", "message") == "message" and "role" in item
    ]


def _input_texts(call: ResponsesCall) -> Iterable[str]:
    """The text a model would read: instructions, message contents, function calls' arguments and their
    outputs. Other items (reasoning, unknown types) carry none."""
    if call.instructions:
        yield call.instructions
    for item in call.input:
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "message":
            yield message_text(item.get("content"))
        elif kind == "function_call" and isinstance(item.get("arguments"), str):
            yield item["arguments"]
        elif kind == "function_call_output":
            yield message_text(item.get("output"))


def input_tokens(call: ResponsesCall) -> int:
    """`usage.input_tokens`: the words of the instructions and of every input text (no per-item extra)."""
    return sum(word_count(text) for text in _input_texts(call))


def first_function_name(tools: Iterable[dict[str, Any]]) -> str:
    """The name of the first function tool, the one a scripted tool call targets (else the chat fake's
    fallback name)."""
    first = next(iter(tools), None)
    return str(first["name"]) if first is not None else first_tool_name(None)


def answer_text(call: ResponsesCall, behaviour: Behaviour) -> tuple[str, bool]:
    """The answer's text, and whether it was cut: as a real upstream, never more words (tokens) than the
    request's max_output_tokens. Unscripted, the chat fake's echo of the last user message."""
    content = behaviour.content if behaviour.content is not None else default_content(_messages(call))
    words = content.split()
    if call.max_output_tokens is not None and len(words) > call.max_output_tokens:
        return " ".join(words[: call.max_output_tokens]), True
    return content, False


def _usage(call: ResponsesCall, output: int) -> dict[str, Any]:
    counted = input_tokens(call)
    return {
        "input_tokens": counted,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": counted + output,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(call: ResponsesCall, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [_text_part(text)]
    item = {"id": call.message_id, "type": "message", "status": status, "role": "assistant"}
    return {**item, "content": content}


def _function_item(call: ResponsesCall, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": call.function_call_id,
        "type": "function_call",
        "status": status,
        "call_id": call.call_id,
        "name": first_function_name(call.tools),
        "arguments": arguments,
    }


def _envelope(
    call: ResponsesCall, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None
) -> dict[str, Any]:
    """A `response` object: what the request asked for echoed, the rest as OpenAI's defaults."""
    return {
        "id": call.response_id,
        "object": "response",
        "created_at": call.created_at,
        "status": status,
        "background": False,
        "completed_at": call.created_at if status == "completed" else None,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": call.instructions,
        "max_output_tokens": call.max_output_tokens,
        "max_tool_calls": None,
        "model": call.model,
        "output": output,
        "parallel_tool_calls": call.parallel_tool_calls,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": call.store,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": call.tool_choice,
        "tools": list(call.tools),
        "top_logprobs": 0,
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


def _finished(call: ResponsesCall, behaviour: Behaviour, produced: str, cut: bool) -> dict[str, Any]:
    """The final response around `produced`: the answer's text, or a tool call's arguments."""
    status = "incomplete" if cut else "completed"
    if behaviour.tool_call:
        item = _function_item(call, produced, "completed")
    else:
        item = _message_item(call, produced, status)
    usage = _usage(call, word_count(produced)) if behaviour.usage else None
    return _envelope(call, status, [item], usage)


def response_body(call: ResponsesCall, behaviour: Behaviour) -> dict[str, Any]:
    """The non-streamed answer: a full `response` with one output item, a message or (scripted
    `tool_call`) a function call to the first function tool with TOOL_ARGUMENTS.

    Cut by max_output_tokens, it is `incomplete` with reason `max_output_tokens`, as OpenAI's.
    """
    if behaviour.tool_call:
        return _finished(call, behaviour, TOOL_ARGUMENTS, cut=False)
    text, cut = answer_text(call, behaviour)
    return _finished(call, behaviour, text, cut)


def sse_event(kind: str, sequence_number: int, fields: dict[str, Any]) -> bytes:
    """One event as OpenAI frames it: an `event:` line naming the type, then the JSON `data:` line."""
    data = orjson.dumps({"type": kind, "sequence_number": sequence_number, **fields})
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


def stream_events(call: ResponsesCall, behaviour: Behaviour) -> tuple[bytes, list[bytes], bytes]:
    """SSE bytes of a streamed answer as (opening events, one entry per delta event, closing events).

    Opening: response.created, response.in_progress, response.output_item.added (and for a message
    response.content_part.added). Deltas: response.output_text.delta (or
    response.function_call_arguments.delta), `behaviour.chunks` of them. Closing: the matching .done
    events, response.output_item.done and response.completed (response.incomplete when max_output_tokens
    cut the text) with the full response and its usage. No `[DONE]`: the Responses API sends none.

    As the chat fake's, a text shorter than `chunks` characters is repeated to fill them, unless that would
    pass max_output_tokens (then fewer deltas); the final response holds exactly what the deltas add up to.
    """
    counter = itertools.count()

    def event(kind: str, **fields: Any) -> bytes:
        return sse_event(kind, next(counter), fields)

    opening_response = _envelope(call, "in_progress", [], None)
    opening = event("response.created", response=opening_response)
    opening += event("response.in_progress", response=opening_response)
    where = {"output_index": 0}
    if behaviour.tool_call:
        pieces = split_pieces(TOOL_ARGUMENTS, min(behaviour.chunks, len(TOOL_ARGUMENTS)))
        produced, cut = "".join(pieces), False
        item_id = call.function_call_id
        opening += event("response.output_item.added", item=_function_item(call, "", "in_progress"), **where)
        deltas = [
            event("response.function_call_arguments.delta", item_id=item_id, delta=piece, **where)
            for piece in pieces
        ]
        closing = event("response.function_call_arguments.done", item_id=item_id, arguments=produced, **where)
    else:
        text, cut = answer_text(call, behaviour)
        pieces = split_pieces(text, behaviour.chunks)
        if call.max_output_tokens is not None and word_count("".join(pieces)) > call.max_output_tokens:
            # Repeated past the limit: fewer pieces instead, as a real upstream never exceeds it.
            pieces = split_pieces(text, max(1, min(behaviour.chunks, len(text))))
        produced = "".join(pieces)
        part = {"item_id": call.message_id, **where, "content_index": 0}
        opening += event("response.output_item.added", item=_message_item(call, None, "in_progress"), **where)
        opening += event("response.content_part.added", **part, part=_text_part(""))
        deltas = [event("response.output_text.delta", **part, delta=piece, logprobs=[]) for piece in pieces]
        closing = event("response.output_text.done", **part, text=produced, logprobs=[])
        closing += event("response.content_part.done", **part, part=_text_part(produced))
    final = _finished(call, behaviour, produced, cut)
    closing += event("response.output_item.done", item=final["output"][0], **where)
    closing += event("response.incomplete" if cut else "response.completed", response=final)
    return opening, deltas, closing


async def answer(
    request: web.BaseRequest,
    call: ResponsesCall,
    behaviour: Behaviour,
    abort: Abort,
    went_away: Callable[[], None],
) -> web.StreamResponse:
    """Write the answer once latency and scripted errors are played: JSON, or the event stream paced by
    first_chunk_delay/chunk_delay; `garbage` sends invalid JSON; `disconnect_after=N` aborts the
    connection (through `abort`) after N delta events, 0 right after the headers (not streamed: half the
    body). `went_away` counts a client that hung up mid-stream."""
    b = behaviour
    if not call.stream:
        payload = GARBAGE if b.garbage else orjson.dumps(response_body(call, b))
        if b.disconnect_after is None:
            return web.Response(body=payload, headers=JSON_HEADERS)
        response = web.StreamResponse(headers=JSON_HEADERS)
        response.content_length = len(payload)
        await response.prepare(request)
        await response.write(payload[: len(payload) // 2])
        await abort(request)
        return response
    if b.is_plain:
        opening, deltas, closing = stream_events(call, b)
        return web.Response(body=b"".join((opening, *deltas, closing)), headers=SSE_HEADERS)
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)  # the headers now, so latency and first_chunk_delay differ
    try:
        await _pace(request, response, call, b, abort)
    except ConnectionResetError:
        went_away()
    return response


async def _pace(
    request: web.BaseRequest, response: web.StreamResponse, call: ResponsesCall, b: Behaviour, abort: Abort
) -> None:
    cut = b.disconnect_after
    if cut == 0:
        await abort(request)
        return
    if b.first_chunk_delay:
        await asyncio.sleep(b.first_chunk_delay)
    if b.garbage:
        await response.write(b"event: response.created\ndata: " + GARBAGE + b"\n\n")
        return
    opening, deltas, closing = stream_events(call, b)
    await response.write(opening)
    for index, delta in enumerate(deltas):
        if index == cut:
            await abort(request)
            return
        if index and b.chunk_delay:
            await asyncio.sleep(b.chunk_delay)
        await response.write(delta)
    if cut is not None:
        await abort(request)
        return
    await response.write(closing)

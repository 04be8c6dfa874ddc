"""A streamed chat answer (OpenAI chunks) rendered as the Responses API's event stream.

First, before any upstream chunk: response.created, response.in_progress. Then, as chunks come:

    reasoning deltas → a reasoning item: response.output_item.added,
        response.reasoning_summary_part.added, response.reasoning_summary_text.delta…, and at its
        end response.reasoning_summary_text.done, response.reasoning_summary_part.done,
        response.output_item.done
    content deltas → a message item: response.output_item.added, response.content_part.added,
        response.output_text.delta…, and at its end response.output_text.done,
        response.content_part.done, response.output_item.done
    tool call deltas → a function_call item each: response.output_item.added,
        response.function_call_arguments.delta…, and at its end
        response.function_call_arguments.done, response.output_item.done; a call of a custom
        tool's function is a custom_tool_call item instead, whose input is known only once the
        call's JSON arguments are whole: response.output_item.added, and at its end one
        response.custom_tool_call_input.delta with the whole input, .done, output_item.done;
        a call of the client's tool search a tool_search_call item (added, then done, its
        arguments parsed)

`end`: open items closed, the answer stored (unless `store` was off), then response.completed or
response.incomplete with the whole Response and its usage. `error`: an `error` event (what the
SDK surfaces), then response.failed (what the Codex CLI acts on; it ignores `error` events).

A reasoning or message item ends when an item of another kind starts; tool calls stay open until
something other than a tool call starts or the stream ends, so tool calls whose deltas interleave
(keyed by their chunk `index`, or by `id` where an upstream numbers every call 0) still come out
whole. Every event carries a `sequence_number`, counting from 0. Refusal deltas are rendered as
text, and choices other than the first are ignored (the Responses API has no `n`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.errors import GatewayError, RateLimited
from gateway.inbound.response_store import ResponseStore
from gateway.inbound.responses_render import (
    COMPLETED,
    CUSTOM_TOOL,
    FAILED,
    FUNCTION_TOOL,
    IN_PROGRESS,
    INCOMPLETE,
    ResponsesInbound,
    ToolOrigin,
    custom_input_of,
    message_item,
    output_item_id,
    output_text_part,
    reasoning_item,
    response_object,
    status_of,
    store_answer,
    summary_text_part,
    text_or,
    tool_call_item,
    tool_call_prefix,
    usage_object,
)
from gateway.wire import ChatStream

REASONING = "reasoning"
MESSAGE = "message"
FUNCTION_CALL = "function_call"


class _OpenItem:
    """An output item whose deltas are still coming."""

    __slots__ = ("call_id", "from_upstream", "id", "index", "kind", "name", "origin", "parts", "tool_key")

    def __init__(self, kind: str, index: int, item_id: str) -> None:
        self.kind = kind
        self.index = index
        self.id = item_id
        self.parts: list[str] = []
        self.call_id = ""
        self.name = ""
        self.tool_key: int | None = None
        # Whether the call id came from the upstream (then a delta with another id is another call).
        self.from_upstream = False
        # The request's tool a tool call's chat function stands for (None: rendered as a function).
        self.origin: ToolOrigin | None = None

    @property
    def streams_arguments(self) -> bool:
        """Whether argument deltas go out as they come: a function's do; a custom tool's input and a
        tool search's arguments are known only once the chat call's JSON is whole."""
        return self.origin is None or self.origin.kind == FUNCTION_TOOL

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def item(self, status: str) -> dict[str, Any]:
        """The item as it stands, with its text so far."""
        if self.kind == REASONING:
            return reasoning_item(self.id, self.text)
        if self.kind == MESSAGE:
            return message_item(self.id, self.text, status)
        return tool_call_item(self.id, self.origin, self.call_id, self.name, self.text, status)


class ResponsesStream:
    """The renderer of one streamed answer; its state lives from chunk to chunk."""

    __slots__ = (
        "_done",
        "_finish_reason",
        "_inbound",
        "_open",
        "_out",
        "_sequence",
        "_started",
        "_store",
        "_stream",
    )

    def __init__(self, inbound: ResponsesInbound, stream: ChatStream, store: ResponseStore) -> None:
        self._inbound = inbound
        self._stream = stream
        self._store = store
        self._sequence = 0
        self._started = False
        self._open: list[_OpenItem] = []
        self._done: list[dict[str, Any]] = []
        self._out: list[bytes] = []
        self._finish_reason: object = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        yield self._start()
        async for block in self._stream:
            self._read_block(block)
            rendered = self._flush()
            if rendered:
                yield rendered

    async def end(self) -> bytes:
        self._out.append(self._start())
        status, reason = status_of(self._finish_reason)
        self._close_open(status)
        response = response_object(
            self._inbound,
            status=status,
            output=self._done,
            usage=usage_object(self._stream.usage),
            incomplete_reason=reason,
        )
        await store_answer(self._store, self._inbound, response)
        event = "response.completed" if status == COMPLETED else "response.incomplete"
        self._emit(event, response=response)
        return self._flush()

    def error(self, error: GatewayError) -> bytes:
        self._out.append(self._start())
        self._emit("error", code=error.code, message=error.message, param=error.param)
        output = [*self._done, *(item.item(INCOMPLETE) for item in self._open)]
        failure = {"code": _failure_code(error), "message": error.message}
        response = response_object(self._inbound, status=FAILED, output=output, usage=None, error=failure)
        self._emit("response.failed", response=response)
        return self._flush()

    # Rendering events.

    def _start(self) -> bytes:
        """response.created and response.in_progress, the first time only."""
        if self._started:
            return b""
        self._started = True
        response = response_object(self._inbound, status=IN_PROGRESS, output=[], usage=None)
        return self._render("response.created", response=response) + self._render(
            "response.in_progress", response=response
        )

    def _render(self, event: str, **fields: Any) -> bytes:
        data = {"type": event, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _emit(self, event: str, **fields: Any) -> None:
        self._out.append(self._render(event, **fields))

    def _flush(self) -> bytes:
        rendered = b"".join(self._out)
        self._out.clear()
        return rendered

    # Reading chunks.

    def _read_block(self, block: bytes) -> None:
        for line in block.splitlines():
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if not payload or payload == b"[DONE]":
                continue
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if isinstance(chunk, dict):
                self._read_chunk(chunk)

    def _read_chunk(self, chunk: dict[str, Any]) -> None:
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._read_choice(choice)

    def _read_choice(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta")
        if isinstance(delta, dict):
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                self._on_exclusive(REASONING, reasoning)
            for key in ("content", "refusal"):
                text = delta.get(key)
                if isinstance(text, str) and text:
                    self._on_exclusive(MESSAGE, text)
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                if isinstance(call, dict):
                    self._on_tool_call(call)
        if choice.get("finish_reason"):
            self._finish_reason = choice["finish_reason"]

    # Items.

    def _on_exclusive(self, kind: str, text: str) -> None:
        """A reasoning or text delta: into the open item of its kind, else into a new one."""
        current = self._open[-1] if self._open else None
        if current is None or current.kind != kind:
            self._close_open(COMPLETED)
            current = self._open_reasoning() if kind == REASONING else self._open_message()
        current.parts.append(text)
        if kind == REASONING:
            self._emit(
                "response.reasoning_summary_text.delta",
                item_id=current.id,
                output_index=current.index,
                summary_index=0,
                delta=text,
            )
        else:
            self._emit(
                "response.output_text.delta",
                item_id=current.id,
                output_index=current.index,
                content_index=0,
                delta=text,
                logprobs=[],
            )

    def _on_tool_call(self, call: dict[str, Any]) -> None:
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        index = call.get("index") if isinstance(call.get("index"), int) else None
        call_id = text_or(call.get("id"), "")
        name = text_or(function.get("name"), "")
        item = self._open_tool_for(index, call_id) or self._open_function_call(index, call_id, name)
        if not item.name:
            item.name = name
            item.origin = self._inbound.tools.get(name)
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item.parts.append(arguments)
            if not item.streams_arguments:
                return
            self._emit(
                "response.function_call_arguments.delta",
                item_id=item.id,
                output_index=item.index,
                delta=arguments,
            )

    def _open_tool_for(self, index: int | None, call_id: str) -> _OpenItem | None:
        """The open function call a tool call delta continues, if any."""
        for item in reversed(self._open):
            if item.kind != FUNCTION_CALL:
                continue
            if call_id and item.from_upstream and call_id != item.call_id:
                continue
            if index is None or item.tool_key == index:
                return item
        return None

    def _new_item(self, kind: str, prefix: str) -> _OpenItem:
        index = len(self._done) + len(self._open)
        item = _OpenItem(kind, index, output_item_id(self._inbound, prefix, index))
        self._open.append(item)
        return item

    def _open_reasoning(self) -> _OpenItem:
        item = self._new_item(REASONING, "rs")
        self._emit("response.output_item.added", output_index=item.index, item=reasoning_item(item.id, None))
        self._emit(
            "response.reasoning_summary_part.added",
            item_id=item.id,
            output_index=item.index,
            summary_index=0,
            part=summary_text_part(""),
        )
        return item

    def _open_message(self) -> _OpenItem:
        item = self._new_item(MESSAGE, "msg")
        added = message_item(item.id, None, IN_PROGRESS)
        self._emit("response.output_item.added", output_index=item.index, item=added)
        self._emit(
            "response.content_part.added",
            item_id=item.id,
            output_index=item.index,
            content_index=0,
            part=output_text_part(""),
        )
        return item

    def _open_function_call(self, index: int | None, call_id: str, name: str) -> _OpenItem:
        if self._open and self._open[-1].kind != FUNCTION_CALL:
            self._close_open(COMPLETED)  # a reasoning or message item is only ever open alone
        origin = self._inbound.tools.get(name) if name else None
        item = self._new_item(FUNCTION_CALL, tool_call_prefix(origin))
        item.tool_key = index
        item.from_upstream = bool(call_id)
        item.call_id = call_id or f"call_{self._inbound.id_base}_{item.index}"
        item.name = name
        item.origin = origin
        self._emit("response.output_item.added", output_index=item.index, item=item.item(IN_PROGRESS))
        return item

    def _close_open(self, status: str) -> None:
        for item in self._open:
            self._close(item, status)
        self._open = []

    def _close(self, item: _OpenItem, status: str) -> None:
        """The events that end an item; it joins the finished output."""
        where = {"item_id": item.id, "output_index": item.index}
        text = item.text
        if item.kind == REASONING:
            self._emit("response.reasoning_summary_text.done", **where, summary_index=0, text=text)
            self._emit(
                "response.reasoning_summary_part.done", **where, summary_index=0, part=summary_text_part(text)
            )
        elif item.kind == MESSAGE:
            self._emit("response.output_text.done", **where, content_index=0, text=text, logprobs=[])
            self._emit("response.content_part.done", **where, content_index=0, part=output_text_part(text))
        elif item.origin is not None and item.origin.kind == CUSTOM_TOOL:
            whole = custom_input_of(text)
            if whole:
                self._emit("response.custom_tool_call_input.delta", **where, delta=whole)
            self._emit("response.custom_tool_call_input.done", **where, input=whole)
        elif item.streams_arguments:
            name = item.origin.name if item.origin is not None else item.name
            self._emit("response.function_call_arguments.done", **where, name=name, arguments=text)
        done = item.item(status)
        self._emit("response.output_item.done", output_index=item.index, item=done)
        self._done.append(done)


def _failure_code(error: GatewayError) -> str:
    """The Response error code for a failure (the Codex CLI retries `rate_limit_exceeded` after the
    delay the message names, and other failures as transient)."""
    return "rate_limit_exceeded" if isinstance(error, RateLimited) else "server_error"

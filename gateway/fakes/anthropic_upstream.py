"""A real HTTP server on 127.0.0.1 that speaks Anthropic's Messages API, scriptable per request.

It exists so the Anthropic path (litellm's translation included) is exercised over real sockets with
the real wire format, without a network or a key. Usage is deterministic so tests can assert it:
input_tokens counts the words in the system prompt and messages, output_tokens counts the deltas
the answer is cut into (`chunks`, or one per word).
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from aiohttp import web

ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

_WORD = re.compile(r"\s*\S+")


@dataclass(frozen=True, slots=True)
class AnthropicBehaviour:
    """How the fake answers one request.

    `status` other than 200 answers with Anthropic's error JSON. `latency` is slept before the
    response starts, `chunk_delay` between streamed events. `chunks` cuts the answer into that many
    deltas (0: one per word). `disconnect_after` aborts the connection after that many deltas (for a
    non-streaming request: before answering at all). `tool_use` answers with a tool_use block for the
    request's first tool, when the request has tools. `error_message` and `retry_after` (a header)
    go with an error status.
    """

    status: int = 200
    latency: float = 0.0
    content: str = "Hello from the fake Anthropic upstream."
    chunks: int = 0
    chunk_delay: float = 0.0
    disconnect_after: int | None = None
    tool_use: bool = False
    error_message: str = ""
    retry_after: float | None = None


class RecordedRequest(NamedTuple):
    """One request as received: lower-cased headers and the JSON body ({} if it was not JSON)."""

    headers: dict[str, str]
    body: dict[str, Any]


def _split(text: str, chunks: int) -> list[str]:
    if chunks <= 0:
        return _WORD.findall(text) or ([text] if text else [])
    size = len(text)
    return [text[i * size // chunks : (i + 1) * size // chunks] for i in range(chunks)]


def _words(value: Any) -> int:
    """Words in a system prompt or message content (a string or a list of content blocks)."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        total = 0
        for block in value:
            if isinstance(block, dict):
                total += _words(block.get("text", "")) + _words(block.get("content", ""))
        return total
    return 0


def _fake_input(schema: Any) -> dict[str, Any]:
    """Arguments for a tool call that satisfy the simple JSON schemas tests use."""
    placeholders = {"string": "fake", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}
    properties = schema.get("properties", {}) if isinstance(schema, dict) else {}
    return {
        name: placeholders.get(str(spec.get("type"))) if isinstance(spec, dict) else None
        for name, spec in properties.items()
    }


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _error(status: int, message: str, retry_after: float | None = None) -> web.Response:
    error_type = ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    body = {"type": "error", "error": {"type": error_type, "message": message or f"fake error {status}"}}
    headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else None
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


class FakeAnthropicUpstream:
    """`POST /v1/messages` on a real socket; behaviours from `script()` are used one per request."""

    def __init__(
        self, *, default: AnthropicBehaviour = AnthropicBehaviour(), api_key: str | None = None
    ) -> None:
        self.default = default
        self.api_key = api_key  # when set, any other x-api-key is refused with 401
        self.requests: list[RecordedRequest] = []
        self._script: deque[AnthropicBehaviour] = deque()
        self._ids: Iterator[int] = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def script(self, *behaviours: AnthropicBehaviour) -> None:
        self._script.extend(behaviours)

    def reset(self) -> None:
        """Forget recorded requests and scripted behaviours, so one server can serve many tests."""
        self._script.clear()
        self.requests.clear()

    def _next_behaviour(self) -> AnthropicBehaviour:
        try:
            return self._script.popleft()
        except IndexError:
            return self.default

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.base_url = f"http://{bound_host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        behaviour = self._next_behaviour()
        headers = {key.lower(): value for key, value in request.headers.items()}
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        self.requests.append(RecordedRequest(headers, body if isinstance(body, dict) else {}))

        key = headers.get("x-api-key")
        if not key:
            return _error(401, "x-api-key header is required")
        if self.api_key is not None and key != self.api_key:
            return _error(401, "invalid x-api-key")
        if "anthropic-version" not in headers:
            return _error(400, "anthropic-version: header is required")
        if not isinstance(body, dict):
            return _error(400, "request body is not valid JSON")
        problem = _validate(body)
        if problem:
            return _error(400, problem)

        if behaviour.latency:
            await asyncio.sleep(behaviour.latency)
        if behaviour.status != 200:
            return _error(behaviour.status, behaviour.error_message, behaviour.retry_after)

        message_id = f"msg_fake{next(self._ids):06d}"
        prompt = [body.get("system", ""), *(message.get("content") for message in body["messages"])]
        input_tokens = sum(_words(part) for part in prompt)
        tools = body.get("tools") or []
        tool = tools[0] if behaviour.tool_use and tools and isinstance(tools[0], dict) else None
        if body.get("stream"):
            try:
                return await self._stream(request, behaviour, body, message_id, input_tokens, tool)
            except ConnectionResetError:  # the client gave up (a timeout test); nothing left to say
                return web.Response()
        if behaviour.disconnect_after is not None:
            _abort(request)
            return web.Response()  # never sent: the connection is gone

        if tool is not None:
            arguments = _fake_input(tool.get("input_schema"))
            pieces = _split(orjson.dumps(arguments).decode(), behaviour.chunks or 3)
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": f"toolu_fake{message_id[-6:]}",
                "name": tool.get("name", ""),
                "input": arguments,
            }
            stop_reason = "tool_use"
        else:
            pieces = _split(behaviour.content, behaviour.chunks)
            block = {"type": "text", "text": behaviour.content}
            stop_reason = "end_turn"
        message = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [block],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": len(pieces)},
        }
        return web.Response(body=orjson.dumps(message), content_type="application/json")

    async def _stream(
        self,
        request: web.Request,
        behaviour: AnthropicBehaviour,
        body: dict[str, Any],
        message_id: str,
        input_tokens: int,
        tool: dict[str, Any] | None,
    ) -> web.StreamResponse:
        sse_headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        response = web.StreamResponse(headers=sse_headers)
        await response.prepare(request)
        start = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": body["model"],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        }
        await response.write(_sse("message_start", {"type": "message_start", "message": start}))
        if tool is not None:
            arguments = orjson.dumps(_fake_input(tool.get("input_schema"))).decode()
            pieces = _split(arguments, behaviour.chunks or 3)
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": f"toolu_fake{message_id[-6:]}",
                "name": tool.get("name", ""),
                "input": {},
            }
            delta_type, delta_field, stop_reason = "input_json_delta", "partial_json", "tool_use"
        else:
            pieces = _split(behaviour.content, behaviour.chunks)
            block = {"type": "text", "text": ""}
            delta_type, delta_field, stop_reason = "text_delta", "text", "end_turn"
        await response.write(
            _sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
        )
        await response.write(_sse("ping", {"type": "ping"}))
        for sent, piece in enumerate(pieces):
            if behaviour.disconnect_after is not None and sent >= behaviour.disconnect_after:
                break
            if behaviour.chunk_delay:
                await asyncio.sleep(behaviour.chunk_delay)
            delta = {"type": delta_type, delta_field: piece}
            await response.write(
                _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
            )
        if behaviour.disconnect_after is not None:
            _abort(request)
            return response
        await response.write(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
        message_delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": len(pieces)},
        }
        await response.write(_sse("message_delta", message_delta))
        await response.write(_sse("message_stop", {"type": "message_stop"}))
        await response.write_eof()
        return response


def _validate(body: dict[str, Any]) -> str:
    """The checks Anthropic makes that a translation bug would trip, as its error message or ''."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: Field required"
    for position, message in enumerate(messages):
        # Later turns may be system turns (Claude Code sends them between the others), never the first.
        roles = ("user", "assistant", "system") if position else ("user", "assistant")
        if not isinstance(message, dict) or message.get("role") not in roles:
            return "messages: roles must be 'user' or 'assistant' (or 'system' after the first)"
    return ""


def _abort(request: web.Request) -> None:
    """Drop the TCP connection without finishing the response, as a crashed upstream would."""
    if request.transport is not None:
        request.transport.abort()

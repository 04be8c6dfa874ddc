"""The chat completions API (`POST /v1/chat/completions`), OpenAI's format, which is also the gateway's
internal one: the client's body is validated and forwarded as it is, answers go back byte for byte.

The gateway validates the fields it relies on and the ones whose wrong type an upstream would
answer with a confusing error; everything else passes through to OpenAI-compatible upstreams
unchanged. Validation works on the parsed dict, which is then forwarded as it is, so the request
is never rebuilt from a model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal, Required

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from gateway.errors import GatewayError, InvalidRequest
from gateway.inbound.adapter import OutboundStream
from gateway.inbound.json_body import json_object
from gateway.wire import Caller, ChatRequest, ChatStream, Completion

_DONE = b"data: [DONE]\n\n"


# Validated as typed dicts (no model objects are built: half the cost of a BaseModel), strictly, with
# every field the gateway does not name passed through.
_PASS_THROUGH = ConfigDict(extra="allow", strict=True)


@with_config(_PASS_THROUGH)
class Message(TypedDict, total=False):
    role: Required[Literal["system", "developer", "user", "assistant", "tool", "function"]]
    content: str | list[dict[str, Any]] | None


@with_config(_PASS_THROUGH)
class StreamOptions(TypedDict, total=False):
    include_usage: bool


@with_config(_PASS_THROUGH)
class ChatCompletionRequest(TypedDict, total=False):
    model: Required[Annotated[str, Field(min_length=1)]]
    messages: Required[Annotated[list[Message], Field(min_length=1)]]
    stream: bool | None
    stream_options: StreamOptions | None
    n: Annotated[int, Field(ge=1, le=128)] | None
    max_tokens: Annotated[int, Field(ge=1)] | None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None
    temperature: Annotated[float, Field(ge=0, le=2)] | None
    top_p: Annotated[float, Field(ge=0, le=1)] | None
    seed: int | None
    tools: list[dict[str, Any]] | None
    tool_choice: str | dict[str, Any] | None
    response_format: dict[str, Any] | None
    user: str | None


CHAT_COMPLETION_REQUEST: TypeAdapter[ChatCompletionRequest] = TypeAdapter(ChatCompletionRequest)


def parse_chat_request(raw: bytes, *, default_model: str | None = None) -> dict[str, Any]:
    """Parse and validate a request body; raise `InvalidRequest` naming the offending field. The
    client's own dict is returned (forwarded as it is), not a copy."""
    body = json_object(raw)
    if default_model is not None:
        body.setdefault("model", default_model)
    try:
        CHAT_COMPLETION_REQUEST.validate_python(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"])
        raise InvalidRequest(f"Invalid value for '{param}': {first['msg']}.", param=param) from exc
    return body


class ChatCompletions:
    name = "chat.completions"
    operation = "chat"
    paths = frozenset({"/v1/chat/completions", "/chat/completions"})

    async def parse(self, raw: bytes, request_id: str, caller: Caller) -> ChatRequest:
        body = parse_chat_request(raw)
        options = body.get("stream_options")
        return ChatRequest(
            body=body,
            request_id=request_id,
            stream=bool(body.get("stream")),
            include_usage=bool(options and options.get("include_usage")),
            api=self.name,
        )

    async def body_of(self, request: ChatRequest, completion: Completion) -> bytes:
        return completion.body

    def stream_of(self, request: ChatRequest, stream: ChatStream) -> OutboundStream:
        return ChunkStream(stream)

    def error_body(self, error: GatewayError) -> bytes:
        return error.to_json()


class ChunkStream:
    """The upstream's chunks as they came, then `[DONE]`."""

    __slots__ = ("_stream",)

    def __init__(self, stream: ChatStream) -> None:
        self._stream = stream

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream.__aiter__()

    async def end(self) -> bytes:
        return _DONE

    def error(self, error: GatewayError) -> bytes:
        return b"data: " + error.to_json() + b"\n\n"

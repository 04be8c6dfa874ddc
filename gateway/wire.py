"""OpenAI wire format: validation of incoming chat requests.

The gateway validates the fields it relies on and the ones whose wrong type an upstream would
answer with a confusing error; everything else passes through to OpenAI-compatible upstreams
unchanged. Validation works on the parsed dict, which is then forwarded as it is, so the request
is never rebuilt from a model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import InvalidRequest


class _PassThrough(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class Message(_PassThrough):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(_PassThrough):
    include_usage: bool = False


class ChatCompletionRequest(_PassThrough):
    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[Message], Field(min_length=1)]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None


def parse_chat_request(
    raw: bytes, *, default_model: str | None = None
) -> tuple[dict[str, Any], ChatCompletionRequest]:
    """Parse and validate a request body; raise `InvalidRequest` naming the offending field."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc.msg} at position {exc.pos}.") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if default_model is not None:
        body.setdefault("model", default_model)
    try:
        validated = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"])
        raise InvalidRequest(f"Invalid value for '{param}': {first['msg']}.", param=param) from exc
    return body, validated

"""The legacy completions API (`POST /v1/completions`), OpenAI's format, through the same path as chat:
the prompt becomes one user message, the answer's text comes back as `choices[].text`, streams
included (`text_completion` chunks, then `[DONE]`).

What a chat upstream cannot do is refused with a 400 that says so: token-id prompts, several prompts
in one request, `suffix`, `echo`, `logprobs` and `best_of` above 1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Required

import orjson
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from gateway.errors import GatewayError, InvalidRequest, UpstreamError
from gateway.inbound.adapter import OutboundStream
from gateway.inbound.json_body import json_object
from gateway.wire import Caller, ChatRequest, ChatStream, Completion

_DONE = b"data: [DONE]\n\n"
# OpenAI's default for this API (chat's is the model's maximum).
DEFAULT_MAX_TOKENS = 16
# Sampling fields chat takes as they are.
_PASSED_ON = (
    "max_tokens", "temperature", "top_p", "n", "stop", "presence_penalty", "frequency_penalty",
    "logit_bias", "seed", "user", "stream", "stream_options",
)  # fmt: skip


@with_config(ConfigDict(extra="allow", strict=True))
class CompletionRequest(TypedDict, total=False):
    model: Required[Annotated[str, Field(min_length=1)]]
    prompt: Required[str | Annotated[list[str], Field(min_length=1, max_length=1)]]
    max_tokens: Annotated[int, Field(ge=1)] | None
    temperature: Annotated[float, Field(ge=0, le=2)] | None
    top_p: Annotated[float, Field(ge=0, le=1)] | None
    n: Annotated[int, Field(ge=1, le=128)] | None
    stream: bool | None
    stop: str | list[str] | None
    user: str


COMPLETION_REQUEST: TypeAdapter[CompletionRequest] = TypeAdapter(CompletionRequest)
_CANNOT = {
    "suffix": "fill-in-the-middle",
    "echo": "echoing the prompt",
    "logprobs": "log probabilities",
}


class Completions:
    name = "completions"
    operation = "text_completion"
    paths = frozenset({"/v1/completions", "/completions"})

    async def parse(self, raw: bytes, request_id: str, caller: Caller) -> ChatRequest:
        body = json_object(raw)
        if _token_id_prompt(body.get("prompt")):
            raise InvalidRequest(
                "Invalid value for 'prompt': token-id prompts cannot be expressed to chat upstreams "
                "(send the prompt as text).",
                param="prompt",
            )
        if isinstance(body.get("prompt"), list) and len(body["prompt"]) > 1:
            raise InvalidRequest(
                "Invalid value for 'prompt': one prompt a request (send several requests).", param="prompt"
            )
        try:
            COMPLETION_REQUEST.validate_python(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(part) for part in first["loc"][:1])
            raise InvalidRequest(f"Invalid value for '{param}': {first['msg']}.", param=param) from exc
        for field, what in _CANNOT.items():
            if body.get(field) not in (None, False):
                raise InvalidRequest(
                    f"'{field}' ({what}) cannot be expressed to chat upstreams.", param=field
                )
        if (body.get("best_of") or 1) != 1:
            raise InvalidRequest("'best_of' above 1 cannot be expressed to chat upstreams.", param="best_of")
        prompt = body["prompt"] if isinstance(body["prompt"], str) else body["prompt"][0]
        chat: dict[str, Any] = {"model": body["model"], "messages": [{"role": "user", "content": prompt}]}
        chat.update((field, body[field]) for field in _PASSED_ON if body.get(field) is not None)
        chat.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
        options = body.get("stream_options")
        return ChatRequest(
            body=chat,
            request_id=request_id,
            stream=bool(body.get("stream")),
            include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
            api=self.name,
        )

    async def body_of(self, request: ChatRequest, completion: Completion) -> bytes:
        try:
            answer = orjson.loads(completion.body)
            choices = [
                {
                    "text": choice["message"].get("content") or "",
                    "index": choice.get("index", index),
                    "logprobs": None,
                    "finish_reason": choice.get("finish_reason"),
                }
                for index, choice in enumerate(answer["choices"])
            ]
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamError("The upstream's answer was not a chat completion.") from exc
        text_completion = {
            "id": _completion_id(answer.get("id"), request.request_id),
            "object": "text_completion",
            "created": answer.get("created"),
            "model": answer.get("model"),
            "choices": choices,
        }
        if answer.get("system_fingerprint") is not None:
            text_completion["system_fingerprint"] = answer["system_fingerprint"]
        if answer.get("usage") is not None:
            text_completion["usage"] = answer["usage"]
        return orjson.dumps(text_completion)

    def stream_of(self, request: ChatRequest, stream: ChatStream) -> OutboundStream:
        return TextChunks(stream, request.request_id)

    def error_body(self, error: GatewayError) -> bytes:
        return error.to_json()


class TextChunks:
    """Chat chunks as `text_completion` chunks, then `[DONE]`."""

    def __init__(self, stream: ChatStream, request_id: str) -> None:
        self._stream = stream
        self._request_id = request_id

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        async for block in self._stream:
            out = b"".join(self._text_chunk(event) for event in block.split(b"\n\n") if event.strip())
            if out:
                yield out

    def _text_chunk(self, event: bytes) -> bytes:
        if not event.startswith(b"data: "):
            return b""
        try:
            chunk = orjson.loads(event[len(b"data: ") :])
        except orjson.JSONDecodeError as exc:
            raise UpstreamError("The upstream sent a malformed stream event.") from exc
        text_chunk: dict[str, Any] = {
            "id": _completion_id(chunk.get("id"), self._request_id),
            "object": "text_completion",
            "created": chunk.get("created"),
            "model": chunk.get("model"),
            "choices": [
                {
                    "text": (choice.get("delta") or {}).get("content") or "",
                    "index": choice.get("index", 0),
                    "logprobs": None,
                    "finish_reason": choice.get("finish_reason"),
                }
                for choice in chunk.get("choices") or ()
            ],
        }
        if chunk.get("system_fingerprint") is not None:
            text_chunk["system_fingerprint"] = chunk["system_fingerprint"]
        if chunk.get("usage") is not None:
            text_chunk["usage"] = chunk["usage"]
        return b"data: " + orjson.dumps(text_chunk) + b"\n\n"

    async def end(self) -> bytes:
        return _DONE

    def error(self, error: GatewayError) -> bytes:
        return b"data: " + error.to_json() + b"\n\n"


def _token_id_prompt(prompt: object) -> bool:
    """Token ids (`[1, 2]`) or lists of them (`[[1, 2], [3]]`): prompts only a completions model reads."""
    return _token_ids(prompt) or (
        isinstance(prompt, list) and bool(prompt) and all(_token_ids(item) for item in prompt)
    )


def _token_ids(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(token, int) and not isinstance(token, bool) for token in value)
    )


def _completion_id(chat_id: object, request_id: str) -> str:
    if isinstance(chat_id, str) and chat_id:
        return "cmpl-" + chat_id.removeprefix("chatcmpl-")
    return f"cmpl-{request_id}"

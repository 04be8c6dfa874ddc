"""The embeddings API (`POST /v1/embeddings`), OpenAI's format: validated, routed like any request (a
named route or deployment, or `model: auto` to the policy's `embeddings_route`), and answered by the
upstream's own body, byte for byte. Embeddings never stream.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Required

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from gateway.errors import GatewayError, InvalidRequest
from gateway.inbound.adapter import OutboundStream
from gateway.inbound.json_body import json_object
from gateway.tokens import TokenCounter
from gateway.wire import Caller, ChatRequest, ChatStream, Completion, embedding_texts

# OpenAI's own limits: 2,048 inputs a request.
MAX_INPUTS = 2048


@with_config(ConfigDict(extra="allow", strict=True))
class EmbeddingRequest(TypedDict, total=False):
    model: Required[Annotated[str, Field(min_length=1)]]
    # Checked by `check_input`: a union's errors would name its members rather than the place.
    input: Required[Any]
    encoding_format: Literal["float", "base64"]
    dimensions: Annotated[int, Field(ge=1)]
    user: str


EMBEDDING_REQUEST: TypeAdapter[EmbeddingRequest] = TypeAdapter(EmbeddingRequest)


def check_input(given: object) -> None:
    """A text, a list of texts, a list of token ids or a list of such lists; none of them empty."""
    if isinstance(given, str):
        if not given:
            raise InvalidRequest("Invalid value for 'input': an input may not be empty.", param="input")
        return
    if not isinstance(given, list) or not given:
        raise InvalidRequest(
            "Invalid value for 'input': a string, or a non-empty list of strings or of token ids.",
            param="input",
        )
    if len(given) > MAX_INPUTS:
        raise InvalidRequest(f"Invalid value for 'input': at most {MAX_INPUTS} inputs.", param="input")
    if all(isinstance(item, str) and item for item in given):
        return
    if all(_token_ids(item) for item in given) or _token_ids(given):
        return
    for index, item in enumerate(given):
        if not (isinstance(item, str) and item) and not _token_ids(item) and not isinstance(item, int):
            param = f"input.{index}"
            raise InvalidRequest(
                f"Invalid value for '{param}': not a non-empty string or token ids.", param=param
            )
    raise InvalidRequest("Invalid value for 'input': strings and token ids may not be mixed.", param="input")


def _token_ids(item: object) -> bool:
    return (
        isinstance(item, list)
        and bool(item)
        and all(isinstance(token, int) and not isinstance(token, bool) and token >= 0 for token in item)
    )


class Embeddings:
    name = "embeddings"
    operation = "embeddings"
    paths = frozenset({"/v1/embeddings", "/embeddings"})

    def __init__(self, tokens: TokenCounter) -> None:
        self._tokens = tokens

    async def parse(self, raw: bytes, request_id: str, caller: Caller) -> ChatRequest:
        body = json_object(raw)
        try:
            EMBEDDING_REQUEST.validate_python(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(part) for part in first["loc"])
            raise InvalidRequest(f"Invalid value for '{param}': {first['msg']}.", param=param) from exc
        check_input(body["input"])
        return ChatRequest(
            body=body, request_id=request_id, api=self.name, prompt_tokens=self._input_tokens(body)
        )

    def _input_tokens(self, body: dict[str, Any]) -> int:
        texts = embedding_texts(body)
        if texts is None:
            given = body["input"]
            return len(given) if isinstance(given[0], int) else sum(len(ids) for ids in given)
        return sum(self._tokens.count_text(text) for text in texts)

    async def body_of(self, request: ChatRequest, completion: Completion) -> bytes:
        return completion.body

    def stream_of(self, request: ChatRequest, stream: ChatStream) -> OutboundStream:
        raise AssertionError("never called: an embeddings request does not stream")

    def error_body(self, error: GatewayError) -> bytes:
        return error.to_json()

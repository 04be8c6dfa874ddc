"""The chat completions adapter: what it accepts and refuses, and that answers go back byte for byte."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.errors import InvalidRequest, RateLimited
from gateway.inbound.chat_completions import ChatCompletions
from gateway.wire import Caller, ChatRequest, Completion, Usage

MESSAGES = [{"role": "user", "content": "hi"}]


def parse(body: object) -> ChatRequest:
    return asyncio.run(ChatCompletions().parse(orjson.dumps(body), "req-1", Caller()))


class Blocks:
    usage = None
    first_byte_seconds = 0.0
    native = False

    def __init__(self, blocks: list[bytes]) -> None:
        self._blocks = blocks

    async def _each(self):  # type: ignore[no-untyped-def]
        for block in self._blocks:
            yield block

    def __aiter__(self):  # type: ignore[no-untyped-def]
        return self._each()

    async def aclose(self) -> None:
        return None


def test_the_body_is_kept_as_the_client_sent_it_with_the_fields_the_gateway_reads() -> None:
    body = {
        "model": "auto",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
        "vendor_extension": {"x": 1},
    }
    request = parse(body)
    assert request.body == body
    assert (request.request_id, request.stream, request.include_usage) == ("req-1", True, True)
    assert request.api == "chat.completions"


def test_a_plain_request_asks_for_no_stream_and_no_usage_chunk() -> None:
    request = parse({"model": "auto", "messages": MESSAGES})
    assert (request.stream, request.include_usage) == (False, False)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MESSAGES}, "model"),
        ({"model": "", "messages": MESSAGES}, "model"),
        ({"model": "auto", "messages": []}, "messages"),
        ({"model": "auto", "messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"model": "auto", "messages": MESSAGES, "temperature": "hot"}, "temperature"),
        ({"model": "auto", "messages": MESSAGES, "temperature": 3}, "temperature"),
        ({"model": "auto", "messages": MESSAGES, "n": 0}, "n"),
        ({"model": "auto", "messages": MESSAGES, "stream": "yes"}, "stream"),
        (
            {"model": "auto", "messages": MESSAGES, "stream_options": {"include_usage": "y"}},
            "stream_options.include_usage",
        ),
    ],
)
def test_a_wrong_field_is_named_in_the_error(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse(body)
    assert raised.value.param == param
    assert f"'{param}'" in raised.value.message


def test_a_body_that_is_not_a_json_object_is_refused() -> None:
    for raw in (b"{not json", b"[1, 2]", b'"text"'):
        with pytest.raises(InvalidRequest):
            asyncio.run(ChatCompletions().parse(raw, "r", Caller()))


def test_answers_and_errors_go_back_in_openai_format() -> None:
    api = ChatCompletions()
    body = b'{"id":"x","choices":[]}'
    request = parse({"model": "auto", "messages": MESSAGES})
    assert asyncio.run(api.body_of(request, Completion(body, Usage(1, 2, 3), 0.1))) == body
    error = RateLimited("Rate limit reached.", retry_after=3)
    assert orjson.loads(api.error_body(error))["error"]["type"] == error.error_type
    event = api.stream_of(request, Blocks([])).error(error)
    assert event.startswith(b"data: {") and event.endswith(b"\n\n")
    assert orjson.loads(event[len(b"data: ") :])["error"]["message"] == "Rate limit reached."


def test_a_stream_is_passed_on_block_by_block_and_ends_with_done() -> None:
    blocks = [b'data: {"a":1}\n\n', b'data: {"b":2}\n\ndata: {"c":3}\n\n']
    api = ChatCompletions()
    stream = Blocks(blocks)

    outbound = api.stream_of(parse({"model": "auto", "messages": MESSAGES}), stream)

    async def collect() -> list[bytes]:
        return [block async for block in outbound]

    assert asyncio.run(collect()) == blocks
    assert asyncio.run(outbound.end()) == b"data: [DONE]\n\n"

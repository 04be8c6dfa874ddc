"""The legacy completions adapter: the prompt as one user message with the sampling fields chat takes,
every refusal of what a chat upstream cannot do, and chat answers and streams rendered as
`text_completion` objects and chunks (checked against the openai SDK's own type)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.errors import InvalidRequest, RateLimited, UpstreamError
from gateway.inbound.completions import DEFAULT_MAX_TOKENS, Completions
from gateway.wire import Caller, ChatRequest, Completion, Usage

openai = pytest.importorskip("openai")
from openai.types import Completion as TextCompletion  # noqa: E402


def parse(body: object) -> ChatRequest:
    return asyncio.run(Completions().parse(orjson.dumps(body), "req-1", Caller()))


class Blocks:
    usage = None
    first_byte_seconds = 0.0
    native = False

    def __init__(self, blocks: list[bytes]) -> None:
        self._blocks = blocks

    async def _each(self) -> AsyncIterator[bytes]:
        for block in self._blocks:
            yield block

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._each()

    async def aclose(self) -> None:
        return None


def chat_answer(**overrides: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 7,
        "model": "upstream-model",
        "system_fingerprint": "fp_1",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello."}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
    }
    answer.update(overrides)
    return answer


def chunk(delta: dict[str, Any] | None, finish: str | None = None, **fields: Any) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-abc",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": "upstream-model",
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
        **fields,
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


def rendered(body: dict[str, Any]) -> dict[str, Any]:
    api = Completions()
    request = parse({"model": "auto", "prompt": "hi"})
    out: dict[str, Any] = orjson.loads(
        asyncio.run(api.body_of(request, Completion(orjson.dumps(body), Usage(4, 2, 6), 0.1)))
    )
    return out


def events_of(blocks: list[bytes]) -> list[dict[str, Any]]:
    request = parse({"model": "auto", "prompt": "hi", "stream": True})
    outbound = Completions().stream_of(request, Blocks(blocks))

    async def collect() -> list[bytes]:
        return [block async for block in outbound]

    events = []
    for block in asyncio.run(collect()):
        assert block.endswith(b"\n\n")
        for event in block.split(b"\n\n"):
            if event:
                assert event.startswith(b"data: ")
                events.append(orjson.loads(event[len(b"data: ") :]))
    return events


# Requests


def test_the_prompt_becomes_one_user_message_with_the_sampling_fields_chat_takes() -> None:
    request = parse(
        {
            "model": "auto",
            "prompt": "Once upon a time",
            "max_tokens": 40,
            "temperature": 0.5,
            "top_p": 0.9,
            "n": 2,
            "stop": ["\n"],
            "presence_penalty": 0.1,
            "frequency_penalty": 0.2,
            "logit_bias": {"50256": -100},
            "seed": 3,
            "user": "u-1",
            "echo": False,
            "best_of": 1,
            "logprobs": None,
            "vendor_extension": {"x": 1},
        }
    )
    assert request.body == {
        "model": "auto",
        "messages": [{"role": "user", "content": "Once upon a time"}],
        "max_tokens": 40,
        "temperature": 0.5,
        "top_p": 0.9,
        "n": 2,
        "stop": ["\n"],
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "logit_bias": {"50256": -100},
        "seed": 3,
        "user": "u-1",
    }
    assert (request.request_id, request.stream, request.include_usage) == ("req-1", False, False)
    assert request.api == "completions"


def test_without_max_tokens_the_answer_is_as_short_as_openais_default() -> None:
    assert parse({"model": "auto", "prompt": "hi"}).body["max_tokens"] == DEFAULT_MAX_TOKENS == 16


def test_a_list_of_one_prompt_is_that_prompt_and_a_stream_asks_for_usage_when_told() -> None:
    request = parse(
        {"model": "auto", "prompt": ["hi"], "stream": True, "stream_options": {"include_usage": True}}
    )
    assert request.body["messages"] == [{"role": "user", "content": "hi"}]
    assert request.body["stream"] is True and request.body["stream_options"] == {"include_usage": True}
    assert (request.stream, request.include_usage) == (True, True)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "hi"}, "model"),
        ({"model": "", "prompt": "hi"}, "model"),
        ({"model": "auto"}, "prompt"),
        ({"model": "auto", "prompt": 3}, "prompt"),
        ({"model": "auto", "prompt": []}, "prompt"),
        ({"model": "auto", "prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"model": "auto", "prompt": "hi", "temperature": "hot"}, "temperature"),
        ({"model": "auto", "prompt": "hi", "temperature": 3}, "temperature"),
        ({"model": "auto", "prompt": "hi", "top_p": 2}, "top_p"),
        ({"model": "auto", "prompt": "hi", "n": 0}, "n"),
        ({"model": "auto", "prompt": "hi", "stream": "yes"}, "stream"),
    ],
)
def test_a_wrong_field_is_named_in_the_error(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse(body)
    assert raised.value.param == param
    assert f"'{param}'" in raised.value.message


@pytest.mark.parametrize(
    ("field", "value", "param", "says"),
    [
        ("suffix", "}", "suffix", "fill-in-the-middle"),
        ("echo", True, "echo", "echoing the prompt"),
        ("logprobs", 2, "logprobs", "log probabilities"),
        ("best_of", 2, "best_of", "above 1"),
        ("prompt", [464, 3290], "prompt", "token-id prompts"),
        ("prompt", [[464, 3290], [318]], "prompt", "token-id prompts"),
        ("prompt", [[464]], "prompt", "token-id prompts"),
        ("prompt", ["one", "two"], "prompt", "one prompt a request"),
    ],
)
def test_what_a_chat_upstream_cannot_do_is_refused_and_says_why(
    field: str, value: object, param: str, says: str
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse({"model": "auto", "prompt": "hi", field: value})
    assert raised.value.param == param
    assert says in raised.value.message and f"'{param}'" in raised.value.message


def test_a_body_that_is_not_a_json_object_is_refused() -> None:
    for raw in (b"{not json", b"[1, 2]", b'"text"'):
        with pytest.raises(InvalidRequest):
            asyncio.run(Completions().parse(raw, "r", Caller()))


# Answers


def test_a_chat_answer_comes_back_as_a_text_completion() -> None:
    out = rendered(chat_answer())
    assert out == {
        "id": "cmpl-abc",
        "object": "text_completion",
        "created": 7,
        "model": "upstream-model",
        "choices": [{"text": "Hello.", "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "system_fingerprint": "fp_1",
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
    }
    parsed = TextCompletion.model_validate(out)
    assert parsed.choices[0].text == "Hello." and parsed.system_fingerprint == "fp_1"


def test_every_choice_is_rendered_and_an_empty_content_is_empty_text() -> None:
    choices = [
        {"index": 0, "message": {"role": "assistant", "content": "A"}, "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": None}, "finish_reason": "length"},
    ]
    out = rendered(chat_answer(choices=choices, usage=None, id=None, system_fingerprint=None))
    assert [(c["text"], c["index"], c["finish_reason"]) for c in out["choices"]] == [
        ("A", 0, "stop"),
        ("", 1, "length"),
    ]
    assert out["id"] == "cmpl-req-1"
    assert "usage" not in out and "system_fingerprint" not in out
    TextCompletion.model_validate(out)


@pytest.mark.parametrize(
    "body", [b"not json", b'{"choices": [{"text": "no message"}]}', b'{"id": "x"}', b'{"choices": 3}']
)
def test_an_answer_that_is_not_a_chat_completion_is_an_upstream_error(body: bytes) -> None:
    request = parse({"model": "auto", "prompt": "hi"})
    with pytest.raises(UpstreamError):
        asyncio.run(Completions().body_of(request, Completion(body, None, 0.1)))


def test_errors_go_back_in_openai_format_in_a_body_and_on_a_stream() -> None:
    api = Completions()
    error = RateLimited("Rate limit reached.", retry_after=3)
    assert orjson.loads(api.error_body(error))["error"]["type"] == error.error_type
    event = api.stream_of(parse({"model": "auto", "prompt": "hi"}), Blocks([])).error(error)
    assert event.startswith(b"data: {") and event.endswith(b"\n\n")
    assert orjson.loads(event[len(b"data: ") :])["error"]["message"] == "Rate limit reached."


# Streams


def test_chat_chunks_become_text_completion_chunks() -> None:
    usage = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    blocks = [
        chunk({"role": "assistant", "content": ""}, system_fingerprint="fp_1"),
        chunk({"content": "Hel"}) + chunk({"content": "lo."}),
        chunk({}, "stop"),
        chunk(None, usage=usage),
    ]
    events = events_of(blocks)
    assert [[c["text"] for c in event["choices"]] for event in events] == [[""], ["Hel"], ["lo."], [""], []]
    assert [c["finish_reason"] for event in events for c in event["choices"]] == [None, None, None, "stop"]
    assert all(event["id"] == "cmpl-abc" and event["object"] == "text_completion" for event in events)
    assert events[0]["system_fingerprint"] == "fp_1"
    assert events[-1]["usage"] == usage and "usage" not in events[0]
    # The SDK's type wants a finish reason, which OpenAI's own chunks leave null until the last.
    for event in (events[-2], events[-1]):
        TextCompletion.model_validate(event)


def test_a_stream_keeps_each_choices_index_and_drops_what_is_not_a_data_event() -> None:
    two = {
        "id": "chatcmpl-abc",
        "created": 7,
        "model": "m",
        "choices": [
            {"index": 0, "delta": {"content": "a"}, "finish_reason": None},
            {"index": 1, "delta": {"content": "b"}, "finish_reason": None},
        ],
    }
    blocks = [b": keep-alive\n\n", b"data: " + orjson.dumps(two) + b"\n\n"]
    [event] = events_of(blocks)
    assert [(c["index"], c["text"]) for c in event["choices"]] == [(0, "a"), (1, "b")]


def test_a_stream_ends_with_done_and_a_malformed_event_is_an_upstream_error() -> None:
    request = parse({"model": "auto", "prompt": "hi", "stream": True})
    assert asyncio.run(Completions().stream_of(request, Blocks([])).end()) == b"data: [DONE]\n\n"
    with pytest.raises(UpstreamError):
        events_of([b"data: {not json\n\n"])

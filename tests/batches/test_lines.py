"""Reading a batch's input file: the requests come out in order with their file line numbers, and each
kind of wrong file is refused with an error naming the line, the field and OpenAI's error code."""

from __future__ import annotations

import pytest

from gateway.batches.lines import MAX_REQUESTS, BatchInputError, BatchLine, parse_batch_input
from tests.batches.conftest import CHAT, input_file, jsonl, request_line


def refusal(content: bytes, endpoint: str = CHAT) -> BatchInputError:
    with pytest.raises(BatchInputError) as caught:
        parse_batch_input(content, endpoint)
    return caught.value


def test_the_requests_come_out_in_order_with_their_line_numbers() -> None:
    content = b"\xef\xbb\xbf" + jsonl(request_line(1)) + b"\n  \r\n" + jsonl(request_line(2)).rstrip(b"\n")
    lines = parse_batch_input(content, CHAT)
    assert lines == [
        BatchLine(1, "request-1", "POST", CHAT, request_line(1)["body"]),
        BatchLine(4, "request-2", "POST", CHAT, request_line(2)["body"]),  # blank lines keep their numbers
    ]


def test_crlf_line_ends_are_fine() -> None:
    assert len(parse_batch_input(input_file(3).replace(b"\n", b"\r\n"), CHAT)) == 3


def test_every_endpoint_is_accepted_for_its_own_lines() -> None:
    for endpoint in ("/v1/responses", "/v1/embeddings", "/v1/completions"):
        assert [line.url for line in parse_batch_input(input_file(2, endpoint), endpoint)] == [endpoint] * 2


@pytest.mark.parametrize(
    ("second_line", "code", "param", "message"),
    [
        (b'{"custom_id": "a", "method": "POST"', "invalid_json_line", None, "line 2: not valid JSON"),
        (b'["not", "an", "object"]', "invalid_json_line", None, "line 2: not a JSON object"),
        (b"\xff\xfe", "invalid_json_line", None, "line 2: not valid JSON"),
        (
            jsonl(request_line(2, custom_id=None)),
            "missing_custom_id",
            "custom_id",
            "line 2: custom_id must be",
        ),
        (
            jsonl({"method": "POST", "url": CHAT, "body": {}}),
            "missing_custom_id",
            "custom_id",
            "line 2: custom_id",
        ),
        (jsonl(request_line(2, custom_id="")), "missing_custom_id", "custom_id", "non-empty string"),
        (jsonl(request_line(2, custom_id=7)), "missing_custom_id", "custom_id", "line 2: custom_id"),
        (
            jsonl(request_line(2, custom_id="request-1")),
            "duplicate_custom_id",
            "custom_id",
            "line 2: custom_id 'request-1' is already used on line 1",
        ),
        (
            jsonl(request_line(2, method="GET")),
            "invalid_method",
            "method",
            "line 2: method must be 'POST', not 'GET'",
        ),
        (
            jsonl(request_line(2, url="/v1/embeddings")),
            "invalid_url",
            "url",
            "line 2: url '/v1/embeddings' is not the batch's endpoint '/v1/chat/completions'",
        ),
        (jsonl(request_line(2, body=[1])), "invalid_body", "body", "line 2: body must be a JSON object"),
        (jsonl(request_line(2, body=None)), "invalid_body", "body", "line 2: body must be a JSON object"),
    ],
)
def test_a_wrong_line_is_named(second_line: bytes, code: str, param: str | None, message: str) -> None:
    error = refusal(jsonl(request_line(1)) + second_line.rstrip(b"\n") + b"\n" + jsonl(request_line(3)))
    assert (error.code, error.line, error.param) == (code, 2, param)
    assert message in str(error)
    assert error.as_batch_error() == {"code": code, "line": 2, "message": error.message, "param": param}


def test_an_empty_file_is_refused() -> None:
    for content in (b"", b"\n\n  \n", b"\xef\xbb\xbf"):
        error = refusal(content)
        assert (error.code, error.line, error.message) == (
            "empty_file",
            None,
            "the input file has no requests",
        )


def test_at_most_50000_requests() -> None:
    assert len(parse_batch_input(input_file(MAX_REQUESTS), CHAT)) == MAX_REQUESTS
    error = refusal(input_file(MAX_REQUESTS + 1))
    assert (error.code, error.line) == ("too_many_requests", MAX_REQUESTS + 1)
    assert str(error) == "line 50001: the input file has more than 50000 requests"


def test_an_endpoint_not_supported_is_refused() -> None:
    error = refusal(input_file(1, "/v1/images/generations"), "/v1/images/generations")
    assert (error.code, error.param) == ("invalid_endpoint", "endpoint")


def test_a_file_over_200_mb_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    content = input_file(2)
    monkeypatch.setattr("gateway.batches.lines.MAX_FILE_BYTES", len(content) - 1)
    assert refusal(content).code == "file_too_large"

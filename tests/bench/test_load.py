"""The load generator's verdict on a streamed answer, in each inbound API's event format."""

from __future__ import annotations

import pytest

from gateway.bench.load import stream_verdict

CHAT = b'data: {"choices":[]}\n\ndata: {"choices":[],"usage":{"total_tokens":3}}\n\ndata: [DONE]\n\n'
MESSAGES = (
    b'event: message_start\ndata: {"type":"message_start"}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":2}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)
RESPONSES = (
    b'event: response.created\ndata: {"type":"response.created","response":{"usage":null}}\n\n'
    b"event: response.completed\n"
    b'data: {"type":"response.completed","response":{"usage":{"total_tokens":3}}}\n\n'
)


@pytest.mark.parametrize("body", [CHAT, MESSAGES, RESPONSES])
def test_a_finished_stream_with_usage_is_complete_in_each_api(body: bytes) -> None:
    assert stream_verdict(body) == (True, True)


@pytest.mark.parametrize("body", [CHAT, MESSAGES, RESPONSES])
def test_a_stream_cut_before_its_end_is_not_complete(body: bytes) -> None:
    cut = body[: body.rindex(b"\n\n", 0, len(body) - 2) + 2]
    assert stream_verdict(cut)[0] is False


def test_a_responses_stream_whose_response_has_no_usage_says_so() -> None:
    body = b'event: response.completed\ndata: {"type":"response.completed","response":{"usage":null}}\n\n'
    assert stream_verdict(body) == (True, False)

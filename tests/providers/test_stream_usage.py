"""What a cut stream produced, counted from what the client got, in each inbound API's events."""

from __future__ import annotations

from gateway.providers.stream_usage import usage_of_cut_stream
from gateway.tokens import TokenCounter

BODY = {"model": "auto", "messages": [{"role": "user", "content": "Count to five"}]}
CHAT = b'data: {"choices":[{"index":0,"delta":{"content":"one two"}}]}\n\n'
COMPLETIONS = b'data: {"object":"text_completion","choices":[{"index":0,"text":"one two"}]}\n\n'
MESSAGES = (
    b'event: message_start\ndata: {"type":"message_start","message":{}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"one two"}}\n\n'
)
RESPONSES = (
    b'event: response.created\ndata: {"type":"response.created","response":{}}\n\n'
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"one two"}\n\n'
)


def test_each_apis_deltas_count_the_same() -> None:
    tokens = TokenCounter()
    counted = [usage_of_cut_stream(tokens, BODY, sent) for sent in (CHAT, COMPLETIONS, MESSAGES, RESPONSES)]
    assert {usage.completion_tokens for usage in counted} == {tokens.count_text("one two")}
    assert all(usage.estimated and usage.prompt_tokens > 0 for usage in counted)


def test_tool_arguments_count_in_anthropics_and_the_responses_apis_events() -> None:
    tokens = TokenCounter()
    messages = (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"input_json_delta","partial_json":"{\\"harbour\\": \\"Brest\\"}"}}\n\n'
    )
    responses = (
        b"event: response.function_call_arguments.delta\n"
        b'data: {"type":"response.function_call_arguments.delta","delta":"{\\"harbour\\": \\"Brest\\"}"}\n\n'
    )
    expected = tokens.count_text('{"harbour": "Brest"}')
    assert usage_of_cut_stream(tokens, BODY, messages).completion_tokens == expected
    assert usage_of_cut_stream(tokens, BODY, responses).completion_tokens == expected

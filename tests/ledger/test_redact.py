"""What body logging keeps: the text, without e-mail addresses, API keys or card numbers."""

from __future__ import annotations

import orjson
import pytest

from gateway.ledger.redact import answer_text, logged_body, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to ana.lopez+work@example.co.uk today", "write to [EMAIL] today"),
        ("my key is sk-proj-AbCdEf0123456789xyzXYZ", "my key is [API_KEY]"),
        ("anthropic sk-ant-api03-AbCdEf0123456789xyz", "anthropic [API_KEY]"),
        ("aws AKIAIOSFODNN7EXAMPLE here", "aws [API_KEY] here"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload", "Authorization: Bearer [API_KEY]"),
        ('{"api_key": "abcdef0123456789abcdef"}', '{"api_key": "[API_KEY]"}'),
        ("password=hunter2hunter2hunter2", "password=[API_KEY]"),
        ("card 4111 1111 1111 1111 exp 12/28", "card [CARD] exp 12/28"),
        ("card 4111-1111-1111-1111", "card [CARD]"),
        ("amex 378282246310005", "amex [CARD]"),
        # Not a card: the Luhn check fails, so order numbers stay readable.
        ("order 1234567890123456", "order 1234567890123456"),
        ("call +1 415 555 0100", "call +1 415 555 0100"),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_logged_body_keeps_roles_and_redacted_text() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "I am bob@example.com"}]},
    ]
    logged = orjson.loads(logged_body(messages, "Hi [EMAIL]? Your card 4111111111111111 is noted."))
    assert logged == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "I am [EMAIL]"},
        ],
        "answer": "Hi [EMAIL]? Your card [CARD] is noted.",
    }


def test_answer_text_of_a_completion_and_of_a_stream() -> None:
    completion = b'{"choices":[{"index":0,"message":{"role":"assistant","content":"Hello there"}}]}'
    assert answer_text(completion) == "Hello there"
    stream = (
        b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
        b'data: {"choices":[{"index":1,"delta":{"content":"other choice"}}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{"content":"lo"}}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":1}}\n\n'
    )
    assert answer_text(stream) == "Hello"

"""Body logging for policies that turn it on: the prompt and the answer as text, with e-mail
addresses, API keys and card numbers replaced before anything is written."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from gateway.tokens import content_text

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# Provider and gateway keys by their prefixes (sk-…, sk-ant-…), AWS access keys, GitHub and Slack
# tokens.
API_KEY = re.compile(
    r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}"
    r"|\bAKIA[0-9A-Z]{16}\b"
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}"
    r"|\bxox[abpr]-[A-Za-z0-9-]{10,}"
)
# Any long secret introduced as one: `Bearer …`, `api_key: …`, `"token": "…"`; the label stays.
LABELLED_SECRET = re.compile(
    r"((?:bearer\s+|(?:api[_-]?key|secret|token|password)[\"']?\s*[:=]\s*[\"']?))[A-Za-z0-9._~+/=-]{16,}",
    re.IGNORECASE,
)
# 13 to 19 digits, optionally grouped by spaces or dashes; replaced only when the Luhn check passes,
# so order numbers and phone numbers stay readable.
CARD_CANDIDATE = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")


def redact(text: str) -> str:
    text = EMAIL.sub("[EMAIL]", text)
    text = API_KEY.sub("[API_KEY]", text)
    text = LABELLED_SECRET.sub(r"\1[API_KEY]", text)
    return CARD_CANDIDATE.sub(_card, text)


def _card(match: re.Match[str]) -> str:
    digits = [int(c) for c in match.group() if c.isdigit()]
    return "[CARD]" if _luhn(digits) else match.group()


def _luhn(digits: list[int]) -> bool:
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def logged_body(messages: Iterable[Any], answer: str | None) -> str:
    """The record's `body`: the messages' roles and text, and the answer's text, all redacted."""
    prompt = [
        {"role": str(message.get("role")), "content": redact(content_text(message.get("content")))}
        for message in messages
        if isinstance(message, Mapping)
    ]
    return orjson.dumps(
        {"messages": prompt, "answer": redact(answer) if answer is not None else None}
    ).decode()


def answer_text(body: bytes) -> str | None:
    """The first choice's text of a `chat.completion` body, or of a stream's SSE bytes."""
    if body.lstrip().startswith(b"{"):
        try:
            parsed = orjson.loads(body)
            return str(parsed["choices"][0]["message"].get("content") or "")
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            return None
    parts: list[str] = []
    for line in body.split(b"\n"):
        if not line.startswith(b"data: {"):
            continue
        try:
            chunk = orjson.loads(line[6:])
        except orjson.JSONDecodeError:
            continue
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                content = (choice.get("delta") or {}).get("content")
                if isinstance(content, str):
                    parts.append(content)
    return "".join(parts)

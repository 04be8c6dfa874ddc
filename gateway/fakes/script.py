"""What the fake OpenAI upstream does for one request, plus the deterministic text and token arithmetic.

Kept apart from the server so tests can compute expected content and token counts with the same code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

DEFAULT_PREFIX = "Fake answer to: "
TOOL_ARGUMENTS = '{"x": 1}'
FALLBACK_TOOL_NAME = "fake_tool"
TOKENS_PER_MESSAGE = 3


@dataclass(frozen=True, slots=True)
class Behaviour:
    """One scripted reaction of the fake upstream; the defaults are a quick, healthy answer."""

    status: int = 200
    error_message: str = "scripted failure"
    retry_after: float | None = None
    latency: float = 0.0
    content: str | None = None
    chunks: int = 20
    first_chunk_delay: float = 0.0
    chunk_delay: float = 0.0
    disconnect_after: int | None = None
    usage: bool = True
    hang: bool = False
    garbage: bool = False
    tool_call: bool = False

    def __post_init__(self) -> None:
        if self.chunks < 1:
            raise ValueError("chunks must be >= 1")
        if self.disconnect_after is not None and self.disconnect_after < 0:
            raise ValueError("disconnect_after must be >= 0")
        if min(self.latency, self.first_chunk_delay, self.chunk_delay) < 0:
            raise ValueError("delays must be >= 0")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError("retry_after must be >= 0")

    @property
    def is_plain(self) -> bool:
        """True when the answer can be built in one go (no timing, failure or tool tricks): the fast path."""
        return (
            self.status == 200
            and self.latency == 0
            and self.first_chunk_delay == 0
            and self.chunk_delay == 0
            and self.disconnect_after is None
            and not self.hang
            and not self.garbage
            and not self.tool_call
        )


def message_text(content: Any) -> str:
    """The text of a message `content`: a string, or the text parts of a list of parts; else empty."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _messages(messages: Any) -> Iterable[dict[str, Any]]:
    if not isinstance(messages, list):
        return ()
    return (m for m in messages if isinstance(m, dict))


def default_content(messages: Any) -> str:
    """The answer when none is scripted: derived from the last user message so echoes are checkable."""
    last = ""
    for message in _messages(messages):
        if message.get("role") == "user":
            last = message_text(message.get("content"))
    return DEFAULT_PREFIX + last[:40]


def prompt_tokens(messages: Any, tools: Any = None) -> int:
    """Whitespace-separated words across all message contents, plus 3 per message, plus the words
    (runs of letters and digits) of the tool definitions: upstreams bill those as prompt too."""
    counted = sum(
        len(message_text(m.get("content")).split()) + TOKENS_PER_MESSAGE for m in _messages(messages)
    )
    if tools:
        counted += len(re.findall(r"\w+", json.dumps(tools)))
    return counted


def word_count(text: str) -> int:
    """Completion tokens of a non-streamed answer: its whitespace-separated words."""
    return len(text.split())


def split_pieces(text: str, pieces: int) -> list[str]:
    """Split `text` into exactly `pieces` non-empty parts, repeating it (space-joined) when it is too short.

    So the joined stream is `text` itself whenever len(text) >= pieces.
    """
    if pieces < 1:
        return []
    base = text or "."
    while len(text) < pieces:
        text = f"{text} {base}" if text else base
    size = len(text)
    return [text[i * size // pieces : (i + 1) * size // pieces] for i in range(pieces)]


def streamed_text(behaviour: Behaviour, messages: Any) -> str:
    """What a client reassembles from a streamed content answer, for assertions in tests."""
    content = behaviour.content if behaviour.content is not None else default_content(messages)
    return "".join(split_pieces(content, behaviour.chunks))


def first_tool_name(tools: Any) -> str:
    """Name of the first function in the request's `tools`, the one a scripted tool call targets."""
    if isinstance(tools, list):
        for tool in tools:
            function = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                return str(function["name"])
    return FALLBACK_TOOL_NAME


def _error_kind(status: int) -> tuple[str, str | None]:
    if status == 429:
        return "requests", "rate_limit_exceeded"
    if status == 401:
        return "invalid_request_error", "invalid_api_key"
    if status == 404:
        return "invalid_request_error", "model_not_found"
    if status >= 500:
        return "server_error", None
    return "invalid_request_error", None


def error_body(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error JSON, with the type and code OpenAI uses for that status."""
    kind, code = _error_kind(status)
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}

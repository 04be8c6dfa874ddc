"""What a stream cut short used: the upstream billed the prompt and every token it produced up to
the cut, but its usage chunk (at the end) never came, so the gateway counts them from the chunks.

Only for streams that ended without usage (a client that left, an upstream that broke off): parsing
every chunk is kept off the path of streams that finish.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.tokens import TokenCounter
from gateway.wire import Usage


def usage_of_cut_stream(tokens: TokenCounter, body: dict[str, Any], sent: bytes) -> Usage:
    """The request's prompt (`body`: the chat request) and the text, tool-call arguments and reasoning
    in the SSE events `sent` (in whichever inbound API's format the client got them: OpenAI chat or
    legacy completions chunks, Anthropic's content block deltas, the Responses API's delta events),
    counted with tiktoken;
    marked estimated."""
    prompt = tokens.count_messages(body.get("messages") or ())
    completion = tokens.count_text("".join(_produced_text(sent)))
    return Usage(prompt, completion, prompt + completion, estimated=True)


def _produced_text(sent: bytes) -> list[str]:
    parts: list[str] = []
    for event in sent.split(b"\n\n"):
        start = event.find(b"data: {")
        if start < 0:
            continue
        try:
            chunk = orjson.loads(event[start + 6 :])
        except orjson.JSONDecodeError:
            continue
        if not isinstance(chunk, dict):
            continue
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                parts.extend(_delta_text(delta))
            elif isinstance(choice.get("text"), str):  # a legacy completions chunk
                parts.append(choice["text"])
        parts.extend(_event_delta_text(chunk))
    return parts


def _event_delta_text(event: dict[str, Any]) -> list[str]:
    """What an Anthropic `content_block_delta` or a Responses `*.delta` event produced."""
    kind, delta = event.get("type"), event.get("delta")
    if kind == "content_block_delta" and isinstance(delta, dict):
        return [
            delta[name] for name in ("text", "partial_json", "thinking") if isinstance(delta.get(name), str)
        ]
    if isinstance(kind, str) and kind.endswith(".delta") and isinstance(delta, str):
        return [delta]
    return []


def _delta_text(delta: dict[str, Any]) -> list[str]:
    texts = [
        delta[name]
        for name in ("content", "reasoning_content", "refusal")
        if isinstance(delta.get(name), str)
    ]
    for call in delta.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            texts.extend(
                value for value in (function.get("name"), function.get("arguments")) if isinstance(value, str)
            )
    return texts

"""A cached answer sent to a streaming client: the same shape as a live stream (a role chunk, the
content, the finish chunk, a usage chunk when asked), so clients cannot tell the difference."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.wire import Usage


class ReplayStream:
    """A `ChatStream` over a cached `chat.completion` body."""

    native = False
    ending = b""

    def __init__(self, body: bytes, include_usage: bool) -> None:
        self._completion: dict[str, Any] = orjson.loads(body)
        self._include_usage = include_usage
        usage = self._completion.get("usage")
        self.usage: Usage | None = Usage.from_openai(usage) if isinstance(usage, dict) else None
        self.first_byte_seconds = 0.0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        for event in replay_events(self._completion, self._include_usage):
            yield event

    async def aclose(self) -> None:
        return None


def replay_events(completion: dict[str, Any], include_usage: bool) -> list[bytes]:
    base = {
        "id": completion.get("id", "chatcmpl-cached"),
        "object": "chat.completion.chunk",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
    }
    if completion.get("system_fingerprint") is not None:
        base["system_fingerprint"] = completion["system_fingerprint"]
    choices = completion.get("choices") or []

    def event(chunk_choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return b"data: " + orjson.dumps({**base, "choices": chunk_choices, **extra}) + b"\n\n"

    def choice(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    indexes = [c.get("index", 0) for c in choices]
    events = [event([choice(i, {"role": "assistant", "content": ""}) for i in indexes])]
    for index, cached in zip(indexes, choices, strict=True):
        content = (cached.get("message") or {}).get("content") or ""
        if content:
            events.append(event([choice(index, {"content": content})]))
    finishes = [c.get("finish_reason") or "stop" for c in choices]
    events.append(event([choice(i, {}, f) for i, f in zip(indexes, finishes, strict=True)]))
    if include_usage and isinstance(completion.get("usage"), dict):
        events.append(event([], usage=completion["usage"]))
    return events

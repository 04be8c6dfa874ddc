"""Keeping streamed answers: a stream passed through to the client unchanged, whose chunks are added
up into the `chat.completion` body a non-streamed request would have received. Only a stream the
upstream finished properly is handed on to be kept; one that broke or was abandoned is not."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from gateway.wire import ChatStream, Usage

_DATA = b"data: "


class StreamTally:
    """The chunks of one stream, added up per choice."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None
        self.broken = False

    def add(self, block: bytes) -> None:
        for line in block.split(b"\n"):
            if not line.startswith(_DATA):
                continue
            try:
                chunk = orjson.loads(line[len(_DATA) :])
            except orjson.JSONDecodeError:
                self.broken = True
                continue
            if isinstance(chunk, dict):
                self._add_chunk(chunk)

    def _add_chunk(self, chunk: dict[str, Any]) -> None:
        for field in ("id", "created", "model", "system_fingerprint"):
            if field in chunk and field not in self.head:
                self.head[field] = chunk[field]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for part in chunk.get("choices") or ():
            if not isinstance(part, dict):
                continue
            choice = self.choices.setdefault(
                int(part.get("index") or 0), {"role": "assistant", "content": "", "finish_reason": None}
            )
            delta = part.get("delta") or {}
            if isinstance(delta.get("content"), str):
                choice["content"] += delta["content"]
            if delta.get("tool_calls") or delta.get("function_call"):
                # Tool-call deltas arrive in fragments; such answers are marked and not re-assembled.
                choice["tool_calls"] = True
            if part.get("finish_reason"):
                choice["finish_reason"] = part["finish_reason"]

    def completion_body(self, usage: Usage | None) -> bytes:
        choices = []
        for index in sorted(self.choices):
            choice = self.choices[index]
            message: dict[str, Any] = {"role": choice["role"], "content": choice["content"]}
            finish = choice["finish_reason"]
            if choice.get("tool_calls"):
                finish = "tool_calls"  # never kept unless re-assembled; see keepable()
            choices.append({"index": index, "message": message, "logprobs": None, "finish_reason": finish})
        body: dict[str, Any] = {
            "id": self.head.get("id", "chatcmpl-cached"),
            "object": "chat.completion",
            "created": self.head.get("created", 0),
            "model": self.head.get("model", ""),
            "choices": choices,
        }
        if self.head.get("system_fingerprint") is not None:
            body["system_fingerprint"] = self.head["system_fingerprint"]
        if self.usage is not None:
            body["usage"] = self.usage
        elif usage is not None:
            body["usage"] = {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            }
        return orjson.dumps(body)


class KeepingStream:
    """A `ChatStream` that hands its added-up answer to `keep` when the upstream finished it."""

    def __init__(self, stream: ChatStream, keep: Callable[[bytes, Usage | None], Awaitable[None]]) -> None:
        self._stream = stream
        self._keep = keep
        self.first_byte_seconds = stream.first_byte_seconds
        self.native = stream.native

    @property
    def ending(self) -> bytes:
        return self._stream.ending

    @property
    def usage(self) -> Usage | None:
        return self._stream.usage

    @usage.setter
    def usage(self, value: Usage | None) -> None:
        self._stream.usage = value

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._blocks()

    async def _blocks(self) -> AsyncIterator[bytes]:
        tally = StreamTally()
        async for block in self._stream:
            tally.add(block)
            yield block
        if not tally.broken and tally.choices:
            await self._keep(tally.completion_body(self._stream.usage), self._stream.usage)

    async def aclose(self) -> None:
        await self._stream.aclose()

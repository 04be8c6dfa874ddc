"""The one small interface every provider implements.

A provider turns the internal request (`gateway.wire.ChatRequest`) into an upstream call and gives back
OpenAI-format bytes: a whole `chat.completion` body, or a stream of complete SSE events. Errors from the
library underneath (aiohttp, litellm) are translated inside the provider into `gateway.errors`.
"""

from __future__ import annotations

from typing import Protocol

from gateway.config import Deployment
from gateway.wire import ChatRequest, ChatStream, Completion, Deadline


class Provider(Protocol):
    deployment: Deployment

    @property
    def available(self) -> bool:
        """False when the provider cannot be called at all (e.g. its key is not set)."""
        ...

    @property
    def unavailable_reason(self) -> str: ...

    async def complete(self, request: ChatRequest, deadline: Deadline) -> Completion: ...

    async def open_stream(self, request: ChatRequest, deadline: Deadline) -> ChatStream: ...

    async def aclose(self) -> None: ...

"""A deployment that speaks some inbound APIs itself: their requests go to it as the client sent them
(`NativeCalls`), every other request through the deployment's usual (translating) provider."""

from __future__ import annotations

from typing import Protocol

from gateway.providers.base import Provider
from gateway.wire import ChatRequest, ChatStream, Completion, Deadline


class NativeCalls(Protocol):
    async def complete(self, request: ChatRequest, deadline: Deadline) -> Completion: ...

    async def open_stream(self, request: ChatRequest, deadline: Deadline) -> ChatStream: ...


class NativeFirst:
    def __init__(self, apis: frozenset[str], native: NativeCalls, translated: Provider) -> None:
        self.deployment = translated.deployment
        self.apis = apis
        self._native = native
        self._translated = translated

    @property
    def available(self) -> bool:
        return self._translated.available

    @property
    def unavailable_reason(self) -> str:
        return self._translated.unavailable_reason

    async def complete(self, request: ChatRequest, deadline: Deadline) -> Completion:
        if request.api in self.apis:
            return await self._native.complete(request, deadline)
        return await self._translated.complete(request, deadline)

    async def open_stream(self, request: ChatRequest, deadline: Deadline) -> ChatStream:
        if request.api in self.apis:
            return await self._native.open_stream(request, deadline)
        return await self._translated.open_stream(request, deadline)

    async def aclose(self) -> None:
        await self._translated.aclose()

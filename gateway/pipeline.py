"""One chat request from start to end: resolve what `model` means, then call upstreams in order.

The policy engine, the cache and accounting slot in here as later steps; the HTTP layer only
parses, calls `ChatPipeline.answer` and writes what comes back.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.providers.base import ChatRequest, ChatStream, Completion, Deadline
from gateway.routing.catalog import Catalog
from gateway.routing.executor import Outcome, RouteExecutor


@dataclass(slots=True)
class Answer:
    route: str
    deployment: str
    fallback: str | None
    upstream_seconds: float
    completion: Completion | None = None
    stream: ChatStream | None = None


class ChatPipeline:
    def __init__(self, catalog: Catalog, executor: RouteExecutor, request_timeout: float) -> None:
        self.catalog = catalog
        self._executor = executor
        self._request_timeout = request_timeout

    async def answer(self, request: ChatRequest) -> Answer:
        target = self.catalog.resolve(request.body["model"])
        deadline = Deadline.after(self._request_timeout)
        if request.stream:
            streamed: Outcome[ChatStream] = await self._executor.run(
                target, lambda provider: provider.open_stream(request, deadline), deadline
            )
            return Answer(
                streamed.route,
                streamed.deployment,
                streamed.fallback,
                streamed.upstream_seconds,
                stream=streamed.result,
            )
        completed: Outcome[Completion] = await self._executor.run(
            target, lambda provider: provider.complete(request, deadline), deadline
        )
        return Answer(
            completed.route,
            completed.deployment,
            completed.fallback,
            completed.upstream_seconds,
            completion=completed.result,
        )

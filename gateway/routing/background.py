"""Calls made beside real traffic (shadow copies, cache audits): the plain copy of a request they
send, and a bound on how many run at once. Past the bound new ones are refused (the caller counts
them) rather than queued, so background calls can never hold back real traffic."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

from gateway.wire import ChatRequest


def plain_copy(request: ChatRequest) -> ChatRequest:
    """The request as a non-streamed call: its answer is read whole, never sent to a client."""
    body = {k: v for k, v in request.body.items() if k not in ("stream", "stream_options")}
    return replace(request, body=body, stream=False, include_usage=False)


class BoundedTasks:
    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def full(self) -> bool:
        return len(self._tasks) >= self._limit

    def start(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background (check `full` first: the bound is the caller's to count)."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Cancel whatever still runs and wait for it to end."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

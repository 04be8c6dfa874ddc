"""Where cached answers live. In-process for the embedded default: one LRU across namespaces, with a
time to live per entry and a cap on entries. (A Redis store shared by replicas comes with the semantic
layer; the interface is async for it.)"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    # The `chat.completion` body as the upstream sent it.
    body: bytes
    prompt_tokens: int
    completion_tokens: int
    route: str
    deployment: str
    expires_at: float


class CacheStore(Protocol):
    async def get(self, namespace: str, key: str) -> CachedAnswer | None: ...

    async def put(self, namespace: str, key: str, answer: CachedAnswer) -> None: ...

    async def invalidate(self, namespace: str | None = None, key: str | None = None) -> int:
        """Drop one entry, a namespace, or (no arguments) everything; how many were dropped."""
        ...


class InProcessCacheStore:
    def __init__(self, max_entries: int = 10_000) -> None:
        self._max = max_entries
        self._entries: OrderedDict[tuple[str, str], CachedAnswer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, namespace: str, key: str) -> CachedAnswer | None:
        found = self._entries.get((namespace, key))
        if found is None:
            return None
        if found.expires_at <= time.time():
            del self._entries[(namespace, key)]
            return None
        self._entries.move_to_end((namespace, key))
        return found

    async def put(self, namespace: str, key: str, answer: CachedAnswer) -> None:
        self._entries[(namespace, key)] = answer
        self._entries.move_to_end((namespace, key))
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)  # the least recently used

    async def invalidate(self, namespace: str | None = None, key: str | None = None) -> int:
        if namespace is None:
            dropped = len(self._entries)
            self._entries.clear()
            return dropped
        if key is not None:
            return 1 if self._entries.pop((namespace, key), None) is not None else 0
        doomed = [entry for entry in self._entries if entry[0] == namespace]
        for entry in doomed:
            del self._entries[entry]
        return len(doomed)

"""Where cached answers live, and the index of their questions' embeddings.

`InProcessCacheStore` is the embedded default: one LRU across namespaces, with a time to live per
entry and a cap on entries. `RedisCacheStore` (gateway.cache.redis_store) shares answers between
replicas. Both keep the semantic index in this process's memory; entries leave the index when they
leave the store: evicted, invalidated, or found expired by a lookup (expired entries not looked up
again stay until eviction pushes them out; the entry cap bounds them).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.cache.semantic_index import Neighbour, SemanticIndex, Vectors


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    # The `chat.completion` body as the upstream sent it (or as a stream's chunks added up to).
    body: bytes
    prompt_tokens: int
    completion_tokens: int
    route: str
    deployment: str
    expires_at: float
    # The context key and the last user turn: what the semantic layer matched and verifies against.
    context: str = ""
    question: str = ""


class CacheStore(Protocol):
    async def get(self, namespace: str, key: str) -> CachedAnswer | None: ...

    async def put(
        self, namespace: str, key: str, answer: CachedAnswer, vector: Vectors | None = None
    ) -> None:
        """Keep an answer under its exact key; with a vector, its question joins the semantic index."""
        ...

    def nearest(self, namespace: str, context: str, vector: Vectors, count: int = 4) -> list[Neighbour]:
        """Stored questions of this namespace and context near `vector`, nearest first (no I/O)."""
        ...

    async def invalidate(self, namespace: str | None = None, key: str | None = None) -> int:
        """Drop one entry, a namespace, or (no arguments) everything; how many were dropped."""
        ...


class InProcessCacheStore:
    def __init__(self, max_entries: int = 10_000) -> None:
        self._max = max_entries
        self._entries: OrderedDict[tuple[str, str], CachedAnswer] = OrderedDict()
        # Built with the first question that has a vector: a policy that caches exactly (or not at all)
        # never imports numpy and usearch.
        self._index: SemanticIndex | None = None

    @property
    def index(self) -> SemanticIndex:
        if self._index is None:
            from gateway.cache.semantic_index import SemanticIndex

            self._index = SemanticIndex()
        return self._index

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, namespace: str, key: str) -> CachedAnswer | None:
        found = self._entries.get((namespace, key))
        if found is None:
            return None
        if found.expires_at <= time.time():
            self._forget(namespace, key)
            return None
        self._entries.move_to_end((namespace, key))
        return found

    async def put(
        self, namespace: str, key: str, answer: CachedAnswer, vector: Vectors | None = None
    ) -> None:
        self._forget(namespace, key)
        self._entries[(namespace, key)] = answer
        if vector is not None:
            self.index.add(namespace, answer.context, key, vector)
        while len(self._entries) > self._max:
            (old_namespace, old_key), _ = next(iter(self._entries.items()))  # the least recently used
            self._forget(old_namespace, old_key)

    def nearest(self, namespace: str, context: str, vector: Vectors, count: int = 4) -> list[Neighbour]:
        if self._index is None:
            return []
        from gateway.cache.semantic_index import CANDIDATE_FLOOR

        return self._index.nearest(namespace, context, vector, count, CANDIDATE_FLOOR)

    async def invalidate(self, namespace: str | None = None, key: str | None = None) -> int:
        if namespace is None and key is not None:
            raise ValueError("an entry's key needs its namespace")
        if namespace is None:
            dropped = len(self._entries)
            self._entries.clear()
            if self._index is not None:
                self._index.drop()
            return dropped
        if key is not None:
            return 1 if self._forget(namespace, key) else 0
        doomed = [entry for entry in self._entries if entry[0] == namespace]
        for entry in doomed:
            del self._entries[entry]
        if self._index is not None:
            self._index.drop(namespace)
        return len(doomed)

    def _forget(self, namespace: str, key: str) -> bool:
        answer = self._entries.pop((namespace, key), None)
        if answer is None:
            return False
        if self._index is not None:
            self._index.remove(namespace, answer.context, key)
        return True

"""A semantic cache of many entries for the depth table's cache-hit row: a private redis-server,
filled from the bench process with the gateway's own writer (`RedisCacheStore`), which the row's
gateway then loads at start-up as any replica would (GATEWAY_REDIS_URL).

Filling through HTTP would cost one upstream call and one embedding per entry (~10 ms each). Here the
real questions are embedded once, and the rest of the entries are their vectors with noise as large
as the vector itself (cosine ~0.6 to the question they came from): distinct questions on the same
topics, all in one namespace and one context, so they share one HNSW graph as a busy cache would.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis.asyncio
import redis.exceptions

from gateway.bench.procs import Child, free_port, spawn
from gateway.cache.keys import cache_keys
from gateway.cache.redis_store import RedisCacheStore
from gateway.cache.semantic_index import DIMENSION
from gateway.cache.store import CachedAnswer
from gateway.embedding.embedder import Embedder, EmbedderMissing

# The gateway keeps its cache under `{GATEWAY_REDIS_PREFIX}cache:` (gateway.runtime).
REDIS_PREFIX = "bench:"
CACHE_PREFIX = f"{REDIS_PREFIX}cache:"
REDIS_STARTUP_SECONDS = 10.0
# Entries written at once (each is one Lua call); more only queues on the one Redis connection.
WRITES_IN_FLIGHT = 64
PROGRESS_EVERY = 20_000
# The embedder's input cut, as the gateway's own (gateway.policy.signals.LazyEmbedder).
EMBED_TOKENS = 128
# Noise per dimension for the entries made from a real question's vector (|noise| ~1.33: cosine ~0.6).
NOISE = 1.33 / np.sqrt(DIMENSION)


class FillFailed(Exception):
    """No redis-server, it did not start or answer, or there is no embedder to embed the questions."""


@dataclass(frozen=True, slots=True)
class FilledCache:
    entries: int
    real_questions: int
    embedding_seconds: float
    writing_seconds: float


def answer_body(text: str = "A cached answer of a plausible length for a short question. " * 4) -> bytes:
    message = {"role": "assistant", "content": text.strip()}
    return orjson.dumps(
        {"id": "chatcmpl-cached", "object": "chat.completion", "created": 0, "model": "fake-model",
         "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52}}
    )  # fmt: skip


async def start_redis(
    tmp: Path, env: dict[str, str], cpus: set[int] | None, stack: contextlib.ExitStack
) -> tuple[Child, str]:
    """A redis-server of the bench's own on a free port (no persistence); its URL."""
    server = shutil.which("redis-server")
    if server is None:
        raise FillFailed("no redis-server on PATH (the cache-hit row keeps its entries in Redis)")
    port = free_port()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    child = spawn("redis-server", argv, env=env, log=tmp / "redis.log", cpus=cpus, cwd=tmp)
    stack.callback(child.stop)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.asyncio.Redis(host="127.0.0.1", port=port, socket_timeout=1.0)
    try:
        deadline = time.monotonic() + REDIS_STARTUP_SECONDS
        while True:
            if not child.alive():
                raise FillFailed(child.failure("exited during start-up").summary)
            try:
                await client.ping()
                return child, url
            except (redis.exceptions.RedisError, OSError):
                if time.monotonic() > deadline:
                    raise FillFailed(f"redis-server on port {port} did not answer") from None
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()


def spread(
    real: np.ndarray[Any, np.dtype[np.float32]], count: int, rng: np.random.Generator
) -> tuple[np.ndarray[Any, np.dtype[np.float32]], np.ndarray[Any, np.dtype[np.intp]]]:
    """`count` unit vectors, each a real one (which: the second array) plus noise."""
    picks = rng.integers(0, len(real), count)
    vectors = real[picks] + rng.normal(0, NOISE, (count, DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), picks


async def fill(
    url: str,
    *,
    entries: int,
    max_entries: int,
    questions: Sequence[str],
    embedder_path: Path,
    namespace: str,
    route: str,
    deployment: str,
    body_of: Callable[[str], Mapping[str, Any]],
    ttl_seconds: float,
    report: Callable[[str], None],
) -> FilledCache:
    """Store `entries` answers: one per real question (with its own embedding), the rest made from
    them; all under the keys the gateway computes for `body_of(question)` on `route`."""
    if not questions:
        raise ValueError("no questions to store")
    started = time.perf_counter()
    try:
        embedder = Embedder(embedder_path, max_tokens=EMBED_TOKENS)
    except EmbedderMissing as exc:
        raise FillFailed(str(exc)) from None
    real = np.stack([embedder.embed_one(question) for question in questions]).astype(np.float32)
    embedded = time.perf_counter()
    report(f"  embedded {len(questions):,} stored questions in {embedded - started:.1f} s")
    synthetic = max(0, entries - len(questions))
    more, picks = spread(real, synthetic, np.random.default_rng(0))
    body = answer_body()
    client = redis.asyncio.Redis.from_url(url, socket_timeout=30.0)
    store = RedisCacheStore(client, CACHE_PREFIX, max_entries)
    expires = time.time() + ttl_seconds

    async def put(question: str, vector: np.ndarray[Any, np.dtype[np.float32]]) -> None:
        keys = cache_keys(body_of(question), namespace, route)
        assert keys is not None
        answer = CachedAnswer(body, 12, 40, route, deployment, expires, keys.context, keys.question)
        await store.put(namespace, keys.exact, answer, vector)

    try:
        pending: list[Any] = []
        for index in range(len(questions) + synthetic):
            if index < len(questions):
                pending.append(put(questions[index], real[index]))
            else:
                row = index - len(questions)
                # A distinct question (so a distinct exact key) on the topic of the one it came from.
                pending.append(put(f"{questions[int(picks[row])]} (variant {row})", more[row]))
            if len(pending) >= WRITES_IN_FLIGHT:
                await asyncio.gather(*pending)
                pending = []
            if (index + 1) % PROGRESS_EVERY == 0:
                report(f"  {index + 1:,}/{entries:,} entries written")
        await asyncio.gather(*pending)
        stored = await client.zcard(f"{CACHE_PREFIX}lru")
    finally:
        await store.aclose()
        await client.aclose()
    if stored < min(entries, max_entries):
        raise FillFailed(f"Redis holds {stored:,} cache entries, not {entries:,}")
    written = time.perf_counter()
    return FilledCache(stored, len(questions), embedded - started, written - embedded)

"""The answer cache shared through Redis: each store is a replica with its own client and index."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.cache.redis_store import RedisCacheStore
from gateway.cache.semantic_index import DIMENSION, Neighbour, Vectors
from gateway.cache.store import CachedAnswer
from gateway.fakes.background import BackgroundLoop
from tests.conftest import answers_ping, free_port

OpenReplica = Callable[..., RedisCacheStore]


def key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def unit(seed: int) -> Vectors:
    vector = np.random.default_rng(seed).standard_normal(DIMENSION).astype(np.float32)
    return vector / np.float32(np.linalg.norm(vector))


def answer(context: str = "ctx", ttl: float = 60.0, question: str = "q") -> CachedAnswer:
    return CachedAnswer(
        body=b'{"choices":[]}',
        prompt_tokens=3,
        completion_tokens=2,
        route="r",
        deployment="d",
        expires_at=time.time() + ttl,
        context=context,
        question=question,
    )


def nearest(
    bg: BackgroundLoop, store: RedisCacheStore, namespace: str, context: str, vector: Vectors
) -> list[Neighbour]:
    """Searched on the loop the index lives on (it is not thread-safe)."""

    async def search() -> list[Neighbour]:
        return store.nearest(namespace, context, vector)

    return bg.run(search())


def keys_near(
    bg: BackgroundLoop, store: RedisCacheStore, namespace: str, context: str, vector: Vectors
) -> list[str]:
    return [neighbour.key for neighbour in nearest(bg, store, namespace, context, vector)]


def eventually(check: Callable[[], bool], within: float = 3.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not hold within {within} s")
        time.sleep(0.02)


def client_for(url: str) -> redis.asyncio.Redis:
    # Short timeouts and no retries, as the gateway runs it: failures show at once.
    return redis.asyncio.Redis.from_url(
        url, socket_timeout=1.0, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )


@pytest.fixture
def open_replica(bg: BackgroundLoop, redis_url: str, redis_prefix: str) -> Iterator[OpenReplica]:
    """Opens a store with its own client, as another gateway process would; started unless told not."""
    opened: list[tuple[RedisCacheStore, redis.asyncio.Redis]] = []

    def open_replica(max_entries: int = 10_000, start: bool = True, url: str = redis_url) -> RedisCacheStore:
        async def open_() -> tuple[RedisCacheStore, redis.asyncio.Redis]:
            client = client_for(url)
            store = RedisCacheStore(client, redis_prefix, max_entries)
            if start:
                await store.start()
            return store, client

        store, client = bg.run(open_())
        opened.append((store, client))
        return store

    yield open_replica

    async def close(store: RedisCacheStore, client: redis.asyncio.Redis) -> None:
        await store.aclose()
        await client.aclose()

    for store, client in opened:
        bg.run(close(store, client))


def test_a_put_on_one_replica_is_a_hit_and_a_neighbour_on_another(
    open_replica: OpenReplica, bg: BackgroundLoop
) -> None:
    a, b = open_replica(), open_replica()
    stored, vector, k = answer(), unit(1), key("capital of France")
    bg.run(a.put("team:a", k, stored, vector))
    assert bg.run(b.get("team:a", k)) == stored
    # The writer's own index has it at once; the other's as soon as it reads the event.
    assert keys_near(bg, a, "team:a", "ctx", vector) == [k]
    eventually(lambda: keys_near(bg, b, "team:a", "ctx", vector) == [k], what="B finding A's question")
    [found] = nearest(bg, b, "team:a", "ctx", vector)
    assert found.cosine == pytest.approx(1.0, abs=0.01)


def test_tenants_do_not_see_each_others_entries(open_replica: OpenReplica, bg: BackgroundLoop) -> None:
    a, b = open_replica(), open_replica()
    vector, k = unit(2), key("q")
    bg.run(a.put("team:a", k, answer(), vector))
    eventually(lambda: keys_near(bg, b, "team:a", "ctx", vector) == [k], what="B hearing of the put")
    assert keys_near(bg, b, "team:b", "ctx", vector) == []
    assert bg.run(b.get("team:b", k)) is None
    assert bg.run(b.get("team:a", k)) is not None


def test_contexts_do_not_see_each_others_entries(open_replica: OpenReplica, bg: BackgroundLoop) -> None:
    a, b = open_replica(), open_replica()
    vector, k = unit(3), key("q")
    bg.run(a.put("team:a", k, answer(context="ctx-1"), vector))
    eventually(lambda: keys_near(bg, b, "team:a", "ctx-1", vector) == [k], what="B hearing of the put")
    assert keys_near(bg, b, "team:a", "ctx-2", vector) == []
    assert keys_near(bg, a, "team:a", "ctx-2", vector) == []


def test_a_replica_started_later_loads_the_index_from_redis(
    open_replica: OpenReplica, bg: BackgroundLoop
) -> None:
    writer = open_replica(start=False)
    bg.run(writer.put("team:a", key("one"), answer(), unit(4)))
    bg.run(writer.put("shared:faq", key("two"), answer(context="other"), unit(5)))
    bg.run(writer.put("team:a", key("exact only"), answer(), None))
    late = open_replica()
    # At once: these came from the scan, not from the stream (followed from after the puts).
    assert len(late.index) == 2
    assert keys_near(bg, late, "team:a", "ctx", unit(4)) == [key("one")]
    assert keys_near(bg, late, "shared:faq", "other", unit(5)) == [key("two")]
    assert bg.run(late.get("team:a", key("exact only"))) is not None


def test_entries_expire_at_their_time(open_replica: OpenReplica, bg: BackgroundLoop) -> None:
    store = open_replica()
    vector, k = unit(6), key("soon gone")
    bg.run(store.put("team:a", k, answer(ttl=1.0), vector))
    assert bg.run(store.get("team:a", k)) is not None
    time.sleep(1.5)
    assert bg.run(store.get("team:a", k)) is None
    # The miss also took it out of this replica's index.
    assert keys_near(bg, store, "team:a", "ctx", vector) == []


def test_the_oldest_entries_are_evicted_past_the_cap(open_replica: OpenReplica, bg: BackgroundLoop) -> None:
    a, b = open_replica(max_entries=3), open_replica(max_entries=3)
    names = [f"q{i}" for i in range(5)]
    for i, name in enumerate(names):
        bg.run(a.put("team:a" if i % 2 else "shared:faq", key(name), answer(), unit(10 + i)))
    kept = [
        bg.run(a.get("team:a" if i % 2 else "shared:faq", key(name))) is not None
        for i, name in enumerate(names)
    ]
    assert kept == [False, False, True, True, True]

    def indexed(store: RedisCacheStore) -> list[bool]:
        return [
            keys_near(bg, store, "team:a" if i % 2 else "shared:faq", "ctx", unit(10 + i)) == [key(name)]
            for i, name in enumerate(names)
        ]

    assert indexed(a) == kept
    eventually(lambda: indexed(b) == kept, what="B dropping the evicted questions")


def test_a_hit_makes_an_entry_young_again(open_replica: OpenReplica, bg: BackgroundLoop) -> None:
    store = open_replica(max_entries=3)
    for i in range(3):
        bg.run(store.put("team:a", key(f"q{i}"), answer(), unit(20 + i)))
    assert bg.run(store.get("team:a", key("q0"))) is not None
    for i in range(3, 5):
        bg.run(store.put("team:a", key(f"q{i}"), answer(), unit(20 + i)))
    kept = [bg.run(store.get("team:a", key(f"q{i}"))) is not None for i in range(5)]
    assert kept == [True, False, False, True, True]


def test_invalidation_by_entry_namespace_and_all_reaches_every_replica(
    open_replica: OpenReplica, bg: BackgroundLoop
) -> None:
    a, b = open_replica(), open_replica()
    # "team:a:b" starts like "team:a" followed by the separator: dropping team:a must not touch it.
    entries = [("team:a", "a1", 30), ("team:a", "a2", 31), ("team:a:b", "ab", 32), ("shared:faq", "faq", 33)]
    for namespace, name, seed in entries:
        bg.run(a.put(namespace, key(name), answer(), unit(seed)))

    def indexed(store: RedisCacheStore) -> list[str]:
        return [
            name for namespace, name, seed in entries if keys_near(bg, store, namespace, "ctx", unit(seed))
        ]

    eventually(lambda: indexed(b) == ["a1", "a2", "ab", "faq"], what="B hearing of the puts")

    assert bg.run(a.invalidate("team:a", key("a1"))) == 1
    assert bg.run(a.invalidate("team:a", key("a1"))) == 0
    assert bg.run(b.get("team:a", key("a1"))) is None
    assert indexed(a) == ["a2", "ab", "faq"]
    eventually(lambda: indexed(b) == ["a2", "ab", "faq"], what="B dropping the entry")

    assert bg.run(a.invalidate("team:a")) == 1
    assert bg.run(b.get("team:a", key("a2"))) is None
    assert bg.run(b.get("team:a:b", key("ab"))) is not None
    assert indexed(a) == ["ab", "faq"]
    eventually(lambda: indexed(b) == ["ab", "faq"], what="B dropping the namespace")

    assert bg.run(b.invalidate()) == 2
    assert [bg.run(a.get(namespace, key(name))) for namespace, name, _ in entries] == [None] * 4
    assert indexed(b) == []
    eventually(lambda: indexed(a) == [] and len(a.index) == 0, what="A dropping everything")


def test_a_replica_reloads_when_redis_lost_its_data(
    open_replica: OpenReplica, bg: BackgroundLoop, redis_url: str, redis_prefix: str
) -> None:
    """Redis restarted without persistence (or flushed) between two reads: no error, but the data and the
    stream are gone; the index must not keep answering from them."""
    store = open_replica()
    bg.run(store.put("team:a", key("old"), answer(), unit(40)))

    async def wipe() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            names = [name async for name in client.scan_iter(match=redis_prefix + "*")]
            await client.delete(*names)
        finally:
            await client.aclose()

    bg.run(wipe())
    eventually(lambda: keys_near(bg, store, "team:a", "ctx", unit(40)) == [], what="the index reloading")
    assert store.available


def test_a_replica_that_fell_behind_the_trimmed_stream_reloads(
    bg: BackgroundLoop, redis_url: str, redis_prefix: str
) -> None:
    """Events the stream no longer holds were missed: the index must be reloaded, not patched."""
    kept = 50

    async def open_() -> tuple[RedisCacheStore, redis.asyncio.Redis]:
        client = client_for(redis_url)
        store = RedisCacheStore(client, redis_prefix, events_kept=kept)
        await store.start()
        return store, client

    async def close(store: RedisCacheStore, client: redis.asyncio.Redis) -> None:
        await store.aclose()
        await client.aclose()

    async def write(count: int) -> None:
        client = client_for(redis_url)
        try:
            writer = RedisCacheStore(client, redis_prefix, events_kept=kept)
            for i in range(count):
                await writer.put("team:a", key(f"q{i}"), answer(), unit(100 + i))
        finally:
            await client.aclose()

    async def indexed(store: RedisCacheStore) -> int:
        return len(store.index)

    behind, client = bg.run(open_())
    try:
        # Hold the replica's loop while another process writes far more events than the stream keeps.
        stalled, written = threading.Event(), threading.Event()

        def stall() -> None:
            stalled.set()
            written.wait(10)

        bg.loop.call_soon_threadsafe(stall)
        stalled.wait(10)
        try:
            asyncio.run(write(400))
        finally:
            written.set()
        eventually(lambda: bg.run(indexed(behind)) == 400, what="the replica reloading all 400 questions")
    finally:
        bg.run(close(behind, client))


def test_misuse_is_refused(bg: BackgroundLoop, redis_url: str) -> None:
    async def check() -> None:
        decoding = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        try:
            with pytest.raises(ValueError, match="decode"):
                RedisCacheStore(decoding)
        finally:
            await decoding.aclose()
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            store = RedisCacheStore(client, "test:unused:")
            with pytest.raises(ValueError, match="':'"):
                await store.get("team:a", "a:b")
            with pytest.raises(ValueError, match="shape"):
                await store.put("team:a", key("q"), answer(), np.zeros(3, dtype=np.float32))
        finally:
            await client.aclose()

    bg.run(check())


class RedisServer:
    """A redis-server of the test's own, on a fixed port, to stop and start again."""

    def __init__(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            pytest.skip("no redis-server to start")
        self.command = [server, "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"]
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[Any] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([*self.command, "--port", str(self.port)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not answers_ping(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_an_outage_bypasses_the_cache_and_the_index_is_reloaded_after(
    open_replica: OpenReplica, own_redis: RedisServer, bg: BackgroundLoop, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_replica(url=own_redis.url)
    bg.run(store.put("team:a", key("before"), answer(), unit(50)))
    assert keys_near(bg, store, "team:a", "ctx", unit(50)) == [key("before")]

    with caplog.at_level(logging.WARNING, logger="gateway.cache"):
        own_redis.stop()
        for _ in range(3):
            assert bg.run(store.get("team:a", key("before"))) is None
            bg.run(store.put("team:a", key("during"), answer(), unit(51)))
            assert bg.run(store.invalidate("team:a")) == 0
        eventually(lambda: not store.available, what="the store noticing the outage")
        time.sleep(0.5)  # the follower keeps failing meanwhile
        # Memory still answers; `get` (which the caller asks next) keeps it from serving anything.
        assert keys_near(bg, store, "team:a", "ctx", unit(50)) == [key("before")]
        outage_warnings = [r for r in caplog.records if "unavailable while" in r.getMessage()]
        assert len(outage_warnings) == 1

        own_redis.start()  # empty: nothing persisted
        eventually(lambda: store.available, within=5.0, what="the store noticing Redis is back")

    # Reloaded from the empty Redis, not kept from before.
    assert keys_near(bg, store, "team:a", "ctx", unit(50)) == []

    def put_then_get() -> bool:
        # A pooled connection from before the restart may fail once more (no retries here): the store
        # then bypasses Redis again until its follower has read once more.
        bg.run(store.put("team:a", key("after"), answer(), unit(52)))
        return bg.run(store.get("team:a", key("after"))) is not None

    eventually(put_then_get, what="a put and a get after the outage")
    # And it follows the other replicas again.
    other = open_replica(url=own_redis.url, start=False)
    bg.run(other.put("team:a", key("theirs"), answer(), unit(53)))
    eventually(
        lambda: keys_near(bg, store, "team:a", "ctx", unit(53)) == [key("theirs")], what="the other's put"
    )

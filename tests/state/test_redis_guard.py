"""The one outage strategy of Redis's users, on real Redis servers (a dead port, a black-hole proxy): after
a failure nobody asks Redis for a moment, nor while the probe has not seen it answer; one user's failure
keeps every user away (counters, cache, key changes, circuits), each doing what an outage means for it;
and "counted by this replica alone" is said at most once a second."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import pytest
import redis.asyncio
import redis.exceptions

from gateway.cache.redis_store import RedisCacheStore
from gateway.cache.store import CachedAnswer
from gateway.config import CircuitBreakerConfig
from gateway.identity.key_changes import KeyChanges
from gateway.identity.keys import KeyChange
from gateway.limits.budget_counters import NANO_PER_USD, BudgetLine, CountersUnavailable, RedisBudgetCounters
from gateway.limits.fallback_counters import LocalFallback
from gateway.routing.health import CircuitState, DeploymentHealth
from gateway.routing.shared_circuits import SharedCircuits
from gateway.state.redis_client import RedisProbe, open_redis
from gateway.state.redis_guard import RedisGuard, RedisUnavailable
from tests.blackhole_proxy import BlackholeProxy
from tests.conftest import free_port


def counted(
    calls: list[str], name: str, attempt: Callable[[], Awaitable[object]]
) -> Callable[[], Awaitable[object]]:
    async def wrapped() -> object:
        calls.append(name)
        return await attempt()

    return wrapped


def test_after_a_failure_redis_is_not_asked_until_the_moment_is_over(redis_url: str) -> None:
    async def scenario() -> None:
        dead, live = open_redis(f"redis://127.0.0.1:{free_port()}/0"), open_redis(redis_url)
        guard, calls = RedisGuard(retry_after=0.3), list[str]()
        try:
            assert guard.away is None
            with pytest.raises(redis.exceptions.ConnectionError):  # raised as redis-py raised it
                await guard.call(dead.ping)
            with pytest.raises(RedisUnavailable, match="failed moments ago"):
                await guard.call(counted(calls, "ping", live.ping))
            assert calls == []  # not asked
            await asyncio.sleep(0.3)
            assert guard.away is None
            assert await guard.call(counted(calls, "ping", live.ping)) is True
            assert calls == ["ping"]
        finally:
            await dead.aclose()
            await live.aclose()

    asyncio.run(scenario())


def test_while_the_probe_has_not_seen_redis_answer_it_is_not_asked(redis_url: str) -> None:
    async def scenario() -> None:
        dead, live = open_redis(f"redis://127.0.0.1:{free_port()}/0"), open_redis(redis_url)
        probe = RedisProbe(dead, every=0.05)
        guard, calls = RedisGuard(lambda: probe.healthy), list[str]()
        probing = asyncio.create_task(probe.run())
        try:
            while probe.healthy:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            with pytest.raises(CountersUnavailable, match="does not answer its probe"):
                await guard.call(counted(calls, "ping", live.ping), CountersUnavailable)
            assert calls == []
        finally:
            probing.cancel()
            await asyncio.gather(probing, return_exceptions=True)
            await dead.aclose()
            await live.aclose()

    asyncio.run(scenario())


def answer() -> CachedAnswer:
    return CachedAnswer(b"{}", 1, 1, "r", "d", time.time() + 60, "ctx", "q")


def test_one_users_failure_on_a_hung_redis_keeps_every_user_away(redis_url: str, redis_prefix: str) -> None:
    """The cache meets a hung Redis and waits its 1 s timeout; the counters, key changes and the cache
    itself then do without Redis at once, each its own way, instead of each waiting its timeout."""
    target = urlsplit(redis_url)
    with BlackholeProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:

        async def scenario() -> tuple[float, float]:
            client = open_redis(f"redis://127.0.0.1:{proxy.port}/0")
            guard = RedisGuard()
            cache = RedisCacheStore(client, f"{redis_prefix}cache:", guard=guard)
            budgets = RedisBudgetCounters(client, f"{redis_prefix}budget:")
            fallback = LocalFallback(budgets, guard)
            changes = KeyChanges(client, redis_prefix, guard)
            line = BudgetLine("team daily budget", "team:t:day", NANO_PER_USD, time.time() + 3600)
            try:
                await fallback.shared(lambda: budgets.reserve([line], 1))
                proxy.hang()
                started = time.monotonic()
                assert await cache.get("team:t", "k") is None  # a miss
                waited = time.monotonic() - started
                started = time.monotonic()
                with pytest.raises(CountersUnavailable, match="failed moments ago"):
                    await fallback.shared(lambda: budgets.reserve([line], 1))
                assert await changes.publish(KeyChange("key_x", "revoke")) is False
                await cache.put("team:t", "k", answer())  # no write
                assert await cache.get("team:t", "k") is None
                return waited, time.monotonic() - started
            finally:
                proxy.resume()
                await client.aclose()

        waited, others = asyncio.run(scenario())
    assert waited >= 0.9, waited  # the hung call costs its timeout once…
    assert others < 0.5, others  # …not once per user


def test_circuits_are_per_process_while_redis_is_away(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        config = CircuitBreakerConfig(failure_threshold=1, cooldown_seconds=30.0)
        one_client, other_client = open_redis(redis_url), open_redis(redis_url)
        reachable = [False]
        one = SharedCircuits(one_client, redis_prefix)
        other = SharedCircuits(other_client, redis_prefix, 0.02, guard=RedisGuard(lambda: reachable[0]))
        one_health = DeploymentHealth(["big"], config, one.opened)
        other_health = DeploymentHealth(["big"], config, other.opened)
        following = asyncio.create_task(other.run(other_health, ["big"]))
        try:
            one.opened("big")
            await one.sync(one_health, ["big"])
            await asyncio.sleep(0.3)  # 15 intervals: Redis away, not asked
            assert other_health.breaker("big").state is CircuitState.CLOSED
            reachable[0] = True
            deadline = time.monotonic() + 5
            while other_health.breaker("big").state is not CircuitState.OPEN:
                assert time.monotonic() < deadline, "the other replica never heard of the open circuit"
                await asyncio.sleep(0.02)
        finally:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
            await one_client.aclose()
            await other_client.aclose()

    asyncio.run(scenario())


def test_counted_alone_is_said_at_most_once_a_second(caplog: pytest.LogCaptureFixture) -> None:
    guard = RedisGuard()
    with caplog.at_level(logging.WARNING, logger="gateway.state.redis"):
        for number in range(100):
            guard.counted_alone("budgets", f"request r{number}", "Redis failed moments ago")
        time.sleep(1.0)
        guard.counted_alone("rate limits", "request later", "Redis does not answer its probe")
    said = [record.getMessage() for record in caplog.records]
    assert said == [
        "budgets counted by this replica alone (request r0): Redis failed moments ago",
        "rate limits counted by this replica alone (request later): Redis does not answer its probe",
    ]

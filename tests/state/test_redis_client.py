"""The shared Redis client under a burst: callers wait for a pooled connection instead of failing."""

from __future__ import annotations

import asyncio

import redis.asyncio
import redis.exceptions

from gateway.state.redis_client import open_redis


def test_a_burst_larger_than_the_pool_waits_for_connections_instead_of_failing(
    redis_url: str, redis_prefix: str
) -> None:
    async def burst(client: redis.asyncio.Redis) -> list[int | BaseException]:
        try:
            # A Lua script that takes a moment, as the budget scripts do: connections stay busy.
            slow = client.register_script(
                "local x = 0 for i = 1, 20000 do x = x + i end return redis.call('INCR', KEYS[1])"
            )
            calls = (slow(keys=[f"{redis_prefix}burst"]) for _ in range(300))
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.aclose()

    counts = asyncio.run(burst(open_redis(redis_url, max_connections=4)))
    assert sorted(counts) == list(range(1, 301))

    # redis-py's default pool at the same size fails the burst instead: what made budgets fail open.
    plain = asyncio.run(burst(redis.asyncio.Redis.from_url(redis_url, max_connections=4)))
    refused = [outcome for outcome in plain if isinstance(outcome, redis.exceptions.MaxConnectionsError)]
    assert len(refused) > 200

"""The one Redis client a gateway process shares (counters, cache, circuits, key changes).

Its pool is bounded and *blocking*: under a burst, a caller waits (at most `pool_timeout`) for a
connection to come free instead of failing at once. redis-py's default pool raises "Too many
connections" as soon as its limit is reached, and a budget that treats that as an outage fails open
while Redis itself is healthy. Commands fail fast (`socket_timeout`) so a hung Redis costs little,
and are retried once at once (a pooled connection may have been dropped); the callers decide what
an unreachable Redis means.
"""

from __future__ import annotations

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

# Enough for the concurrency one replica admits: a counter script takes ~0.1 ms, so 64 connections
# carry several hundred thousand calls a second; a long-held one (the cache's stream follower) is
# one of them.
MAX_CONNECTIONS = 64
# How long a caller waits for a free connection before the call counts as failed.
POOL_TIMEOUT = 2.0
# How long one command (or connecting) may take.
COMMAND_TIMEOUT = 1.0


def open_redis(
    url: str,
    *,
    max_connections: int = MAX_CONNECTIONS,
    pool_timeout: float = POOL_TIMEOUT,
    command_timeout: float = COMMAND_TIMEOUT,
) -> redis.asyncio.Redis:
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_timeout=command_timeout,
        socket_connect_timeout=command_timeout,
        retry=Retry(NoBackoff(), 1),  # once more at once: a connection Redis dropped while idle
    )
    return redis.asyncio.Redis.from_pool(pool)

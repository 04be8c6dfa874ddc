"""The one Redis client a gateway process shares (counters, cache, circuits, key changes).

Its pool is bounded and *blocking*: under a burst, a caller waits (at most `pool_timeout`) for a
connection to come free instead of failing at once. redis-py's default pool raises "Too many
connections" as soon as its limit is reached, and a budget that treats that as an outage fails open
while Redis itself is healthy. Commands fail fast (`socket_timeout`) so a hung Redis costs little,
and are retried once at once (a pooled connection may have been dropped); the callers decide what
an unreachable Redis means.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio
import redis.exceptions
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
        # Once more at once after a connection Redis dropped while idle; never after a timeout.
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
    )
    return redis.asyncio.Redis.from_pool(pool)


# How often the probe pings, and how long a ping may take.
PROBE_EVERY = 1.0
PROBE_TIMEOUT = 1.0
logger = logging.getLogger("gateway.state.redis")


class RedisProbe:
    """Pings Redis in the background so that /readyz and the log say within seconds when it stops
    answering (or hangs), whether or not any request needs it; readers see the last outcome, no I/O."""

    def __init__(self, client: redis.asyncio.Redis, every: float = PROBE_EVERY) -> None:
        self._client = client
        self._every = every
        self.failing_since: float | None = None
        self.last_error: str | None = None

    @property
    def healthy(self) -> bool:
        return self.failing_since is None

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._client.ping(), PROBE_TIMEOUT)
                if self.failing_since is not None:
                    logger.warning("Redis answers again")
                self.failing_since, self.last_error = None, None
            except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
                if self.failing_since is None:
                    self.failing_since = time.time()
                    logger.warning("Redis does not answer: %r", exc)
                self.last_error = repr(exc)
            await asyncio.sleep(self._every)

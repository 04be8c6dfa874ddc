"""Circuit breakers shared by replicas through Redis: a circuit opened by one replica is open on all of them
within `interval` seconds, for the rest of its cooldown, so the others do not each pay the failures that
opened it.

A replica that opens a circuit writes `{prefix}{deployment}` with the cooldown as the key's lifetime; every
replica reads all deployments' keys each interval (one MGET) and opens the ones it finds, with the cooldown
the key has left. When the key expires, each replica's breaker lets its own probe through as usual. While
Redis is away, breakers work per process, as without Redis.
"""

from __future__ import annotations

import asyncio
import logging
import os

import redis.asyncio
from redis.exceptions import RedisError

from gateway.routing.health import DeploymentHealth

logger = logging.getLogger("gateway.routing.circuits")


class SharedCircuits:
    def __init__(self, client: redis.asyncio.Redis, prefix: str, interval: float = 0.5) -> None:
        self._client = client
        self._prefix = prefix
        self._interval = interval
        self._opened: set[str] = set()
        self._replica = os.urandom(6).hex()
        self._outage = False

    def opened(self, deployment: str) -> None:
        """This process opened a circuit (called by its breaker): the others hear of it at the next sync."""
        self._opened.add(deployment)

    async def run(self, health: DeploymentHealth, names: list[str]) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sync(health, names)
                if self._outage:
                    logger.warning("shared circuit breakers: Redis is back")
                self._outage = False
            except RedisError as exc:
                if not self._outage:
                    logger.warning(
                        "shared circuit breakers: Redis unavailable, circuits are per process: %s", exc
                    )
                self._outage = True

    async def sync(self, health: DeploymentHealth, names: list[str]) -> None:
        """Tell the circuits this process opened; open here the ones other replicas opened."""
        cooldown_ms = int(health.config.cooldown_seconds * 1000)
        opened, self._opened = self._opened, set()
        if opened:
            async with self._client.pipeline(transaction=False) as pipe:
                for name in opened:
                    pipe.set(self._prefix + name, self._replica, px=cooldown_ms)
                await pipe.execute()
        if not names:
            return
        keys = [self._prefix + name for name in names]
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.mget(keys)
            for key in keys:
                pipe.pttl(key)
            owners, *ttls = await pipe.execute()
        for name, owner, ttl in zip(names, owners, ttls, strict=True):
            if owner is not None and owner.decode() != self._replica and ttl > 0:
                health.breaker(name).open_from_elsewhere(ttl / 1000)

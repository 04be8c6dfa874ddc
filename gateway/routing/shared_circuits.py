"""Circuit breakers shared by replicas through Redis: a circuit opened by one replica is open on all of them
within `interval` seconds, for the rest of its cooldown, so the others do not each pay the failures that
opened it.

A replica that opens a circuit writes `{prefix}{deployment}` with the cooldown as the key's lifetime; every
replica reads all deployments' keys each interval (one MGET) and opens the ones it finds, with the cooldown
the key has left. When the key expires, each replica's breaker lets its own probe through as usual. While
Redis is away (a sync failed, or the process's `RedisGuard` says so: then it is not even asked), breakers
work per process, as without Redis. A sync is background work: its failures are its own, not noted by the
guard (the probe is the background's judge).
"""

from __future__ import annotations

import asyncio
import logging
import os

import redis.asyncio

from gateway.routing.health import DeploymentHealth
from gateway.state.redis_guard import REDIS_ERRORS, RedisGuard

logger = logging.getLogger("gateway.routing.circuits")


class SharedCircuits:
    def __init__(
        self,
        client: redis.asyncio.Redis,
        prefix: str,
        interval: float = 0.5,
        *,
        guard: RedisGuard | None = None,
    ) -> None:
        self._client = client
        # The process's one outage strategy (a guard of these circuits' own when none is given).
        self._guard = guard if guard is not None else RedisGuard()
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
            away = self._guard.away
            if away is not None:
                self._unavailable(away)
                continue
            try:
                await self.sync(health, names)
                if self._outage:
                    logger.warning("shared circuit breakers: Redis is back")
                self._outage = False
            except REDIS_ERRORS as exc:
                self._unavailable(exc)

    def _unavailable(self, why: object) -> None:
        """Redis is away: circuits are per process until it is back (said once per outage)."""
        if not self._outage:
            logger.warning("shared circuit breakers: Redis unavailable, circuits are per process: %s", why)
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

"""Capacity shared by every replica through Redis (`redis_gate.RedisGate`), and what happens while
Redis is away: each replica then keeps its deployments' limits on its own (`LocalGate`), so a
deployment may run up to `limit` requests per replica for that while, rather than none at all or an
unbounded number. The outage is the process's one Redis guard's (`state/redis_guard.py`): a call
that fails turns this replica to its own gates until the guard says Redis answers again."""

from __future__ import annotations

import logging

import redis.asyncio

from gateway.capacity.capacity import Capacity, local_gates
from gateway.capacity.gate import CapacityGate, LocalGate, Outlook, Slot
from gateway.capacity.redis_gate import RedisGate
from gateway.config import GatewayConfig
from gateway.state.redis_guard import RedisGuard, RedisUnavailable

logger = logging.getLogger("gateway.capacity")


class FailoverGate:
    """The shared gate while Redis answers, this replica's own while it does not."""

    def __init__(self, shared: RedisGate, local: LocalGate, guard: RedisGuard) -> None:
        self.name, self.limit, self.queue_limit = local.name, local.limit, local.queue_limit
        self._shared = shared
        self._local = local
        self._guard = guard

    async def acquire(self, priority: str, wait_at_most: float) -> Slot:
        if self._guard.away is None:
            try:
                return await self._shared.acquire(priority, wait_at_most)
            except RedisUnavailable as exc:
                self._guard.counted_alone(f"The capacity of {self.name}", "a request", exc)
        return await self._local.acquire(priority, wait_at_most)

    async def outlook(self, priority: str) -> Outlook:
        if self._guard.away is None:
            try:
                return await self._shared.outlook(priority)
            except RedisUnavailable:
                pass
        return await self._local.outlook(priority)

    async def aclose(self) -> None:
        await self._shared.aclose()
        await self._local.aclose()


def shared_capacity(
    config: GatewayConfig, client: redis.asyncio.Redis, prefix: str, guard: RedisGuard
) -> Capacity:
    """Every limited deployment's gate shared through Redis, with the same limits kept locally for
    while Redis is away."""
    gates: dict[str, CapacityGate] = {}
    for name, local in local_gates(config).items():
        shared = RedisGate(
            client, prefix, name, local.limit, local.queue_limit, local.ageing_seconds, local.deferred_limit,
            guard=guard,
        )  # fmt: skip
        gates[name] = FailoverGate(shared, local, guard)
    return Capacity(gates)

"""A deployment's capacity shared by every replica through one Redis: at most `limit` requests run at once
across all of them, and the rest wait in one priority queue, ordered and bounded as `LocalGate` orders and
bounds its own. The smallest ageing key `enqueued_at + rank * ageing_seconds` runs next, whichever replica
it waits on. `queue_limit` bounds the interactive and standard waiters together (the main queue) and
`deferred_limit` the deferrable ones; when an interactive request finds the main queue full, the standard
waiter that started waiting last (on any replica) is displaced: it leaves the queue, its `acquire` raises
QueueFull, and the interactive one waits in its stead. Only with no standard waiter to displace is the
interactive one refused; a standard one finding the main queue full is refused (it displaces nobody), and
a deferrable one when `deferred_limit` deferrable requests wait.

Keys, under `{prefix}capacity:{name}:`

- `holders`: a sorted set of the slots held, each scored by the end of its lease (microseconds, Redis's
  clock). A replica's heartbeat extends the leases of the slots it holds every `lease_seconds / 3`; a
  slot whose lease ended (its replica crashed, or lost Redis for a whole lease) counts no more.
- `waiters`: a sorted set of the waiting requests, scored by their ageing key (microseconds), fixed when
  each starts waiting.
- `waiting:0`, `waiting:1`, `waiting:2`: the same waiters by class (interactive, standard, deferrable),
  each scored by the end of its own lease: a waiter's replica renews it each time it polls (every
  `poll_seconds`), and one not renewed in time (min(3 s, `lease_seconds`), at least five polls) is
  dropped, so a crashed replica's waiters do not block the queue. Counting them gives `Outlook.ahead`
  and each queue's length at once.
- `arrivals:1`: the standard waiters again, scored by when each started waiting (microseconds): the
  highest is the one an interactive request displaces.
- `evicted`: the waiters displaced and not yet told, each scored by when its record ends
  (EVICTED_KEPT_SECONDS on); a displaced waiter's next poll finds itself there and raises QueueFull.
- Channel `grants`: the ids of the waiters just given a slot, space-separated, and `evicted:{id}` for
  a waiter just displaced (its replica then polls at once rather than at its next poll).

A member is `{rank}:{replica}:{sequence}`, the same id from the moment it waits until it releases.
Every key lives an hour after its last write, so a removed deployment leaves nothing behind.

Scripts. Each call is one Lua script (EVALSHA) reading Redis's clock (`TIME`), so every replica's
waiters are ordered by one clock. Each first drops the holders and waiters whose lease ended (and the
records of displaced waiters that were never told), then *promotes*: while fewer than `limit` hold a
slot, the waiter with the smallest key leaves the queue and holds one, and its id is published on
`grants`. A slot is handed over inside the script that frees it, so a newcomer never takes a slot a
waiter was due. The scripts: acquire (grant at once when a slot is free and nobody waits; else refuse
when the request's queue is full, or, for an interactive request, displace the newest standard waiter
when there is one; else enqueue: one call either way, the displacement atomic with the enqueue); wait
(a waiter's poll: granted yet? displaced? renews its lease, and puts it back with its old key if it was
dropped while its replica could not reach Redis); leave (a waiter that stopped waiting, or a slot
released: out of the queue and the holders, and the slot to the next); heartbeat; outlook.

Waking. A waiter sleeps until the gate's subscriber (one pub/sub connection per gate, started by the
first wait and stopped when nobody has waited here for SUBSCRIBER_IDLE_SECONDS) hears its id on
`grants` (granted) or `evicted:` and its id (polls now, and learns it was displaced), or until its next
poll, whichever comes first: a lost message costs a poll interval, never a stranded waiter.

Failure modes.

- Redis unreachable, slow or refusing, for `acquire` and `outlook` (calls made for a request, through
  the process's `RedisGuard`): `RedisUnavailable` is raised, and the caller uses this process's own
  `LocalGate` until Redis is back. A waiter that lost Redis mid-wait raises it too; what it left in
  Redis expires with its lease.
- A released slot goes back in the background (`release` is synchronous); when that fails, the slot
  comes back when its lease ends, since this replica stopped renewing it. Heartbeats and the
  subscriber keep their failures to themselves (logged once an outage), as background work does.
- A replica that crashes: its slots come back after at most `lease_seconds`, its waiters drop out after
  their lease; a waiter promoted just before its replica died holds the slot for one more lease. A
  displaced waiter whose replica crashed before telling it leaves its record for EVICTED_KEPT_SECONDS.
- A replica that stalls longer than a lease (a blocked event loop) loses its slots in Redis while its
  requests still run, so the deployment briefly runs more than `limit`; the heartbeat logs it.
- A grant that races a waiter's timeout or cancellation: the leave script finds the waiter among the
  holders and hands the slot on. A waiter displaced as its wait runs out or is cancelled raises
  QueueTimeout or CancelledError instead, and the leave script drops its record.

Every replica must give a deployment the same `limit`, `queue_limit`, `deferred_limit` and
`ageing_seconds` (each script uses its caller's), and run this version of the scripts (the keys of
earlier ones differ). The gate does not own `client`: `aclose` releases what this replica holds and
stops the background tasks, and leaves the client open.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.capacity.gate import (
    DEFAULT_AGEING_SECONDS,
    DEFAULT_DEFERRED_LIMIT,
    Outlook,
    QueueFull,
    QueueTimeout,
    ServiceTime,
)
from gateway.capacity.priority import RANK
from gateway.state.redis_guard import REDIS_ERRORS, RedisGuard, RedisUnavailable

# How often a waiter asks Redis whether it holds a slot yet (the fallback to a grant message).
POLL_SECONDS = 0.1
# A waiter's lease is this (or the holders' lease when shorter), and at least this many polls.
WAITER_LEASE_SECONDS = 3.0
POLLS_PER_WAITER_LEASE = 5
# The subscriber stops when nobody has waited on this replica for this long (it pins a connection).
SUBSCRIBER_IDLE_SECONDS = 30.0
# Each wait for a grant message; a quiet subscription is pinged after PING_EVERY and counts as lost
# without an answer within PING_TIMEOUT.
LISTEN_SECONDS = 0.5
PING_EVERY = 2.0
PING_TIMEOUT = 2.0
CLOSE_TIMEOUT = 2.0
# Back-off between attempts to subscribe: doubles from the first to the last.
FIRST_RETRY = 0.1
LAST_RETRY = 2.0
# Every key lives this long after its last write (or two leases, when longer).
KEYS_KEPT_SECONDS = 3600.0
# A displaced waiter's record waits this long for the waiter's poll (then its replica is gone).
EVICTED_KEPT_SECONDS = 60.0
# What the acquire and wait scripts answer first.
WAITING, GRANTED, FULL, EVICTED = 0, 1, 2, 3
# What a grants message says of a waiter displaced from the queue (before its id).
EVICTED_PREFIX = "evicted:"
DEFERRABLE = RANK["deferrable"]
logger = logging.getLogger("gateway.capacity.redis")

# KEYS: holders, waiters, the standard waiters by arrival, the displaced waiters, then the waiters'
# leases by class (rank 0 first).
# ARGV: how long keys live (ms), limit, a holder's lease (µs), the grants channel, then each script's own.
PRELUDE = """
local holders, waiters, arrivals, evicted = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local keep, limit, lease, channel = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local STANDARD = 1

local function rank_of(id)
    return tonumber(string.sub(id, 1, 1))
end

-- The waiters of one class, each scored by the end of its lease.
local function class(rank)
    return KEYS[5 + rank]
end

local function touch(key)
    redis.call('PEXPIRE', key, keep)
end

local function unqueue(id)
    redis.call('ZREM', waiters, id)
    redis.call('ZREM', class(rank_of(id)), id)
    if rank_of(id) == STANDARD then
        redis.call('ZREM', arrivals, id)
    end
end

-- Holders and waiters whose lease ended count no more; nor records no displaced waiter came to read.
local function expire()
    redis.call('ZREMRANGEBYSCORE', holders, '-inf', now)
    redis.call('ZREMRANGEBYSCORE', evicted, '-inf', now)
    for rank = 0, #KEYS - 5 do
        local gone = redis.call('ZRANGEBYSCORE', class(rank), '-inf', now)
        if #gone > 0 then
            for _, id in ipairs(gone) do
                redis.call('ZREM', waiters, id)
                if rank == STANDARD then
                    redis.call('ZREM', arrivals, id)
                end
            end
            redis.call('ZREMRANGEBYSCORE', class(rank), '-inf', now)
        end
    end
end

-- Free slots go to the waiters with the smallest keys; their replicas hear it on the channel.
local function promote()
    local free = limit - redis.call('ZCARD', holders)
    if free <= 0 then
        return {}
    end
    local chosen = redis.call('ZRANGE', waiters, 0, free - 1)
    if #chosen > 0 then
        for _, id in ipairs(chosen) do
            unqueue(id)
            redis.call('ZADD', holders, now + lease, id)
        end
        touch(holders)
        redis.call('PUBLISH', channel, table.concat(chosen, ' '))
    end
    return chosen
end

-- Slots held, waiters of this class or a more urgent one, all waiters.
local function counts(rank)
    local ahead = 0
    for r = 0, rank do
        ahead = ahead + redis.call('ZCARD', class(r))
    end
    return {redis.call('ZCARD', holders), ahead, redis.call('ZCARD', waiters)}
end
"""

# ARGV[5..]: the id, its rank, ageing per class (µs), the main queue's limit (interactive and standard
# together), a waiter's lease (µs), the deferrable waiters' limit, how long a displaced waiter's record
# is kept (µs).
# Returns {GRANTED}, {FULL, held, ahead, waiting, waiting in its queue} or
# {WAITING, ageing key, arrival}; an interactive request that finds the main queue full displaces the
# standard waiter that arrived last (records it, tells its replica) and waits in its stead.
ACQUIRE_SCRIPT = (
    PRELUDE
    + """
local id, rank = ARGV[5], tonumber(ARGV[6])
local queue_limit, deferred_limit = tonumber(ARGV[8]), tonumber(ARGV[10])
expire()
promote()
if redis.call('ZCARD', holders) < limit then
    redis.call('ZADD', holders, now + lease, id)
    touch(holders)
    return {1}
end
local function full(queued)
    local c = counts(rank)
    return {2, c[1], c[2], c[3], queued}
end
if rank > STANDARD then
    local queued = redis.call('ZCARD', class(rank))
    if queued >= deferred_limit then
        return full(queued)
    end
else
    local queued = redis.call('ZCARD', class(0)) + redis.call('ZCARD', class(STANDARD))
    if queued >= queue_limit then
        if rank == STANDARD then
            return full(queued)
        end
        local victim = nil
        while true do
            local newest = redis.call('ZREVRANGE', arrivals, 0, 0)
            if #newest == 0 then
                break
            end
            if redis.call('ZSCORE', class(STANDARD), newest[1]) then
                victim = newest[1]
                break
            end
            redis.call('ZREM', arrivals, newest[1])  -- not waiting any more
        end
        if victim == nil then
            return full(queued)
        end
        unqueue(victim)
        redis.call('ZADD', evicted, now + tonumber(ARGV[11]), victim)
        touch(evicted)
        redis.call('PUBLISH', channel, 'evicted:' .. victim)  -- EVICTED_PREFIX
    end
end
local key = now + rank * tonumber(ARGV[7])
redis.call('ZREM', evicted, id)  -- a record left for an earlier process of this replica's name
redis.call('ZADD', waiters, key, id)
redis.call('ZADD', class(rank), now + tonumber(ARGV[9]), id)
touch(waiters)
touch(class(rank))
if rank == STANDARD then
    redis.call('ZADD', arrivals, now, id)
    touch(arrivals)
end
return {0, key, now}
"""
)

# ARGV[5..]: the id, its ageing key, a waiter's lease (µs), its arrival (µs).
# Returns {GRANTED} once it holds a slot, {EVICTED, held, ahead, waiting} (counts for its class) when it
# was displaced from the queue, else {WAITING}.
WAIT_SCRIPT = (
    PRELUDE
    + """
local id = ARGV[5]
local rank = rank_of(id)
expire()
if redis.call('ZSCORE', holders, id) then
    return {1}
end
if redis.call('ZREM', evicted, id) == 1 then
    local c = counts(rank)
    return {3, c[1], c[2], c[3]}
end
redis.call('ZADD', waiters, ARGV[6], id)
redis.call('ZADD', class(rank), now + tonumber(ARGV[7]), id)
touch(waiters)
touch(class(rank))
if rank == STANDARD then
    redis.call('ZADD', arrivals, ARGV[8], id)
    touch(arrivals)
end
for _, granted in ipairs(promote()) do
    if granted == id then
        return {1}
    end
end
return {0}
"""
)

# ARGV[5]: the id. Returns {1 when it held a slot else 0, held, ahead, waiting} (counts for its class).
LEAVE_SCRIPT = (
    PRELUDE
    + """
local id = ARGV[5]
expire()
unqueue(id)
redis.call('ZREM', evicted, id)
local held = redis.call('ZREM', holders, id)
promote()
local c = counts(rank_of(id))
return {held, c[1], c[2], c[3]}
"""
)

# ARGV[5..]: the ids this replica holds. Returns those no longer held (their lease ended).
HEARTBEAT_SCRIPT = (
    PRELUDE
    + """
expire()
local lost = {}
for i = 5, #ARGV do
    if redis.call('ZSCORE', holders, ARGV[i]) then
        redis.call('ZADD', holders, now + lease, ARGV[i])
    else
        table.insert(lost, ARGV[i])
    end
end
touch(holders)
promote()
return lost
"""
)

# ARGV[5]: a rank. Returns {held, ahead, waiting}.
OUTLOOK_SCRIPT = (
    PRELUDE
    + """
expire()
promote()
return counts(tonumber(ARGV[5]))
"""
)


class LostSubscription(RedisError):
    """Redis stopped answering the subscription's pings."""


@dataclass(slots=True)
class RedisSlot:
    gate: RedisGate
    id: str
    granted_at: float
    queued_seconds: float = 0.0
    released: bool = False

    def release(self) -> None:
        """Give the slot back (in the background; idempotent)."""
        if not self.released:
            self.released = True
            self.gate._released(self)


def _microseconds(seconds: float) -> int:
    return round(seconds * 1_000_000)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisGate:
    """One deployment's gate, shared with every replica that opens one of the same `name` on the same
    Redis and `prefix`."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        prefix: str,
        name: str,
        limit: int,
        queue_limit: int,
        ageing_seconds: float = DEFAULT_AGEING_SECONDS,
        deferred_limit: int = DEFAULT_DEFERRED_LIMIT,
        *,
        lease_seconds: float = 10.0,
        replica: str | None = None,
        poll_seconds: float = POLL_SECONDS,
        guard: RedisGuard | None = None,
    ) -> None:
        if lease_seconds <= 0 or poll_seconds <= 0:
            raise ValueError(
                f"lease_seconds and poll_seconds must be positive: {lease_seconds}, {poll_seconds}"
            )
        self.replica = replica if replica is not None else os.urandom(6).hex()
        if not self.replica or any(character.isspace() for character in self.replica):
            raise ValueError(f"a replica's name must be non-empty and without spaces: {self.replica!r}")
        self.name = name
        self.limit = limit
        self.queue_limit = queue_limit
        self.ageing_seconds = ageing_seconds
        self.deferred_limit = deferred_limit
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.waiter_lease_seconds = max(
            min(WAITER_LEASE_SECONDS, lease_seconds), POLLS_PER_WAITER_LEASE * poll_seconds
        )
        # This replica's own hold times (what its predictions read).
        self.service = ServiceTime()
        self._client = client
        # The process's one outage strategy (a guard of this gate's own when none is given).
        self._guard = guard if guard is not None else RedisGuard()
        base = f"{prefix}capacity:{name}:"
        self.channel = base + "grants"
        self._keys = [
            base + "holders",
            base + "waiters",
            base + "arrivals:1",
            base + "evicted",
            *(f"{base}waiting:{rank}" for rank in range(len(RANK))),
        ]
        kept = max(KEYS_KEPT_SECONDS, 2 * lease_seconds, 2 * self.waiter_lease_seconds)
        self._common: list[str | int] = [
            math.ceil(kept * 1000),
            limit,
            _microseconds(lease_seconds),
            self.channel,
        ]
        self._ageing_us = _microseconds(ageing_seconds)
        self._waiter_lease_us = _microseconds(self.waiter_lease_seconds)
        self._evicted_kept_us = _microseconds(EVICTED_KEPT_SECONDS)
        self._acquire = client.register_script(ACQUIRE_SCRIPT)
        self._wait = client.register_script(WAIT_SCRIPT)
        self._leave = client.register_script(LEAVE_SCRIPT)
        self._heartbeat_script = client.register_script(HEARTBEAT_SCRIPT)
        self._outlook = client.register_script(OUTLOOK_SCRIPT)
        self._sequence = itertools.count()
        # Slots this replica holds (the heartbeat renews them), and its waiters' wake-ups by id: True
        # when granted, False when told it was displaced (its poll then says so).
        self._held: set[str] = set()
        self._wakers: dict[str, asyncio.Future[bool]] = {}
        self._last_wait = time.monotonic()
        # Background work: releases, leaves, the heartbeat and the subscriber (kept from the collector).
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._subscriber: asyncio.Task[None] | None = None
        self._background_failing = False
        self._closed = False

    async def acquire(self, priority: str, wait_at_most: float) -> RedisSlot:
        """A slot for a request of this class, waiting at most `wait_at_most` seconds; raises QueueFull
        when its queue (every replica's waiters) is full or it was displaced from it by an interactive
        request, QueueTimeout when the wait ran out and RedisUnavailable when Redis does not answer."""
        rank = RANK[priority]
        started = time.monotonic()
        if self._closed:
            raise RedisUnavailable(f"capacity gate '{self.name}' is closed")
        away = self._guard.away
        if away is not None:
            raise RedisUnavailable(f"capacity gate '{self.name}': {away}")
        slot_id = f"{rank}:{self.replica}:{next(self._sequence)}"
        # Listening before enqueueing: a grant published at once finds its waiter.
        self._wakers[slot_id] = asyncio.get_running_loop().create_future()
        try:
            args: list[str | int] = [
                slot_id, rank, self._ageing_us, self.queue_limit, self._waiter_lease_us,
                self.deferred_limit, self._evicted_kept_us,
            ]  # fmt: skip
            reply = await self._run(self._acquire, args, "acquiring a slot")
            if int(reply[0]) == GRANTED:
                return self._hold(slot_id, 0.0)
            if int(reply[0]) == FULL:
                in_flight, ahead, waiting, queued = (int(value) for value in reply[1:5])
                full = (
                    f"{queued} deferrable requests are waiting, their limit"
                    if rank == DEFERRABLE
                    else f"{queued} are waiting, its queue's limit"
                )
                raise QueueFull(
                    f"Deployment '{self.name}' is running {in_flight} of {self.limit} and {full}.",
                    retry_after=self._outlook_of(in_flight, ahead, waiting).predicted_wait,
                )
            self._start_subscriber()
            try:
                await self._wait_for_grant(slot_id, int(reply[1]), int(reply[2]), wait_at_most)
            except TimeoutError:
                raise await self._timed_out(slot_id, wait_at_most) from None
            return self._hold(slot_id, time.monotonic() - started)
        except asyncio.CancelledError:
            # Out of the queue (or, when a grant raced the cancellation, the slot to the next) before
            # the cancellation goes on; the leave finishes even if this is cancelled again.
            if not self._closed:
                await asyncio.shield(self._spawn(self._leave_quietly(slot_id)))
            raise
        except RedisUnavailable:
            # Redis may have enqueued or granted before it stopped answering; whatever it holds expires
            # with its lease if this does not get through either. Not awaited: the caller moves on.
            if not self._closed:
                self._spawn(self._leave_quietly(slot_id))
            raise
        finally:
            del self._wakers[slot_id]
            self._last_wait = time.monotonic()

    async def outlook(self, priority: str) -> Outlook:
        reply = await self._run(self._outlook, [RANK[priority]], "reading the outlook")
        return self._outlook_of(int(reply[0]), int(reply[1]), int(reply[2]))

    async def aclose(self) -> None:
        """Stop the background tasks, take this replica's waiters out of the queue (their `acquire`
        raises CancelledError, as LocalGate's do) and give back the slots it still holds."""
        self._closed = True
        for task in (self._subscriber, self._heartbeat):
            if task is not None:
                task.cancel()
        leaving = [*self._wakers, *self._held]
        self._held.clear()
        for slot_id in leaving:
            self._spawn(self._leave_quietly(slot_id))
        for future in self._wakers.values():
            future.cancel()
        while pending := [task for task in self._tasks if not task.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    def _outlook_of(self, in_flight: int, ahead: int, waiting: int) -> Outlook:
        return Outlook(self.limit, in_flight, ahead, waiting, self.service.mean)

    async def _wait_for_grant(self, slot_id: str, key: int, arrival: int, wait_at_most: float) -> None:
        """Until the subscriber or a poll says this waiter holds a slot; TimeoutError at the deadline,
        QueueFull when a poll says it was displaced from the queue."""
        deadline = time.monotonic() + max(0.0, wait_at_most)
        args: list[str | int] = [slot_id, key, self._waiter_lease_us, arrival]
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            woken = self._wakers[slot_id]
            await asyncio.wait((woken,), timeout=min(self.poll_seconds, remaining))
            if woken.done():
                if woken.result():  # CancelledError when the gate closed
                    return
                # Told it was displaced: the poll, now, says so (and a fresh wake-up for what follows).
                self._wakers[slot_id] = asyncio.get_running_loop().create_future()
            reply = await self._run(self._wait, args, "waiting for a slot")
            if int(reply[0]) == GRANTED:
                return
            if int(reply[0]) == EVICTED:
                in_flight, ahead, waiting = (int(value) for value in reply[1:4])
                raise QueueFull(
                    f"Deployment '{self.name}' is full: this request gave its place in the queue to a "
                    "more urgent one.",
                    retry_after=self._outlook_of(in_flight, ahead, waiting).predicted_wait,
                )

    async def _timed_out(self, slot_id: str, wait_at_most: float) -> QueueTimeout:
        try:
            reply = await self._run(self._leave, [slot_id], "leaving the queue")
        except RedisUnavailable as exc:
            logger.debug(
                "capacity gate %s: a timed-out waiter stays until its lease ends: %s", self.name, exc
            )
            return QueueTimeout(
                f"Deployment '{self.name}' had no free slot within {wait_at_most:.1f} s.",
                retry_after=self.service.mean,
            )
        in_flight, ahead, waiting = (int(value) for value in reply[1:4])
        return QueueTimeout(
            f"Deployment '{self.name}' had no free slot within {wait_at_most:.1f} s ({waiting} waiting).",
            retry_after=self._outlook_of(in_flight, ahead, waiting).predicted_wait,
        )

    def _hold(self, slot_id: str, queued_seconds: float) -> RedisSlot:
        self._held.add(slot_id)
        if self._heartbeat is None and not self._closed:
            self._heartbeat = self._spawn(self._beat())
        return RedisSlot(self, slot_id, time.monotonic(), queued_seconds)

    def _released(self, slot: RedisSlot) -> None:
        self.service.add(time.monotonic() - slot.granted_at)
        if slot.id not in self._held:  # lost with its lease, or given back by aclose
            return
        self._held.discard(slot.id)
        try:
            self._spawn(self._leave_quietly(slot.id))
        except RuntimeError:  # no running loop: the slot comes back when its lease ends
            logger.warning("capacity gate %s: slot %s released outside an event loop", self.name, slot.id)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:
            work.close()
            raise
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, script: AsyncScript, args: Sequence[str | int], doing: str) -> Any:
        """A script for a request: through the guard, Redis's errors raised as RedisUnavailable."""

        def unavailable(why: str) -> RedisUnavailable:
            return RedisUnavailable(f"capacity gate '{self.name}': {why}")

        try:
            return await self._guard.call(
                lambda: script(keys=self._keys, args=[*self._common, *args]), unavailable
            )
        except REDIS_ERRORS as exc:
            raise unavailable(f"Redis unavailable while {doing}: {exc!r}") from exc

    async def _run_in_background(self, script: AsyncScript, args: Sequence[str | int], doing: str) -> Any:
        """A script for background work: not through the guard; None when Redis did not answer."""
        try:
            reply = await script(keys=self._keys, args=[*self._common, *args])
        except REDIS_ERRORS as exc:
            if not self._background_failing:
                logger.warning("capacity gate %s: Redis unavailable while %s: %r", self.name, doing, exc)
            self._background_failing = True
            return None
        if self._background_failing:
            logger.warning("capacity gate %s: Redis answers again", self.name)
        self._background_failing = False
        return reply

    async def _leave_quietly(self, slot_id: str) -> None:
        """Out of the queue and the holders, in the background: on failure the lease ends it."""
        await self._run_in_background(self._leave, [slot_id], f"giving back {slot_id}")

    async def _beat(self) -> None:
        """Renew the leases of the slots this replica holds, while it holds any."""
        try:
            while self._held:
                await asyncio.sleep(self.lease_seconds / 3)
                held = sorted(self._held)
                if not held:
                    break
                lost = await self._run_in_background(self._heartbeat_script, held, "renewing leases")
                for value in lost or ():
                    slot_id = _text(value)
                    if slot_id in self._held:
                        self._held.discard(slot_id)
                        logger.warning(
                            "capacity gate %s: the lease of slot %s ended before this replica renewed it; "
                            "its request may run beyond the limit",
                            self.name,
                            slot_id,
                        )
        finally:
            if self._heartbeat is asyncio.current_task():
                self._heartbeat = None

    def _start_subscriber(self) -> None:
        if self._subscriber is None and not self._closed:
            self._subscriber = self._spawn(self._follow())

    def _idle(self) -> bool:
        return not self._wakers and time.monotonic() - self._last_wait > SUBSCRIBER_IDLE_SECONDS

    async def _follow(self) -> None:
        """Wake this replica's waiters as their grants are published, until none has waited for
        SUBSCRIBER_IDLE_SECONDS; subscribes again with back-off after losing Redis."""
        delay = FIRST_RETRY
        try:
            while True:
                try:
                    await self._listen()
                    return
                except REDIS_ERRORS as exc:
                    logger.debug("capacity gate %s: grants subscription lost: %r", self.name, exc)
                if self._idle():
                    return
                await asyncio.sleep(delay)
                delay = min(2 * delay, LAST_RETRY)
        finally:
            if self._subscriber is asyncio.current_task():
                self._subscriber = None

    async def _listen(self) -> None:
        """Subscribe and wake waiters until idle (returns) or the subscription is lost (raises)."""
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            heard, pinged = time.monotonic(), None
            while True:
                message = await pubsub.get_message(timeout=LISTEN_SECONDS)
                now = time.monotonic()
                if message is not None:
                    heard, pinged = now, None
                    self._wake(message)
                if self._idle():
                    # Said at once, so a waiter arriving while this closes starts a new subscriber.
                    self._subscriber = None
                    return
                if message is not None:
                    continue
                if pinged is None and now - heard > PING_EVERY:
                    await pubsub.ping()
                    pinged = now
                elif pinged is not None and now - pinged > PING_TIMEOUT:
                    raise LostSubscription(f"no answer to a ping within {PING_TIMEOUT:g} s")
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await asyncio.wait_for(pubsub.aclose(), timeout=CLOSE_TIMEOUT)  # type: ignore[no-untyped-call]

    def _wake(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        for word in _text(message.get("data", b"")).split():
            slot_id = word.removeprefix(EVICTED_PREFIX)
            waker = self._wakers.get(slot_id)
            if waker is not None and not waker.done():
                waker.set_result(slot_id == word)

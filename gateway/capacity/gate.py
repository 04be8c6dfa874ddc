"""A deployment's capacity: at most `limit` requests run at once; the rest wait in a bounded priority
queue, strict by class with ageing, so nothing starves.

Who runs next is the waiter with the smallest *ageing key*, `enqueued_at + rank * ageing_seconds`: a
request of a lower class (`rank` 1 or 2) overtakes a fresh higher-class one only after it has waited
`ageing_seconds` per class between them. The key is fixed when a request starts waiting, so the queue is
a heap and a grant costs O(log n).

Two bounds, one order. `queue_limit` bounds the interactive and standard waiters together; deferrable
ones wait in a room of their own (`deferred_limit`), so bulk work queued behind a busy deployment never
takes the places more urgent requests need, and waits (for spare capacity, or for its age to lift it)
rather than being refused. When an interactive request finds the main queue full, the most recently
queued standard waiter is displaced (its wait ends with QueueFull: 503 and Retry-After) and the
interactive one takes its place: load is shed in class order, and an interactive request is refused
only when interactive ones alone fill the queue. A standard request finding it full is refused.

`CapacityGate` is what the request path sees; `LocalGate` is this process's own (the embedded default,
one replica), `capacity/redis_gate.RedisGate` the one every replica shares through Redis.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import time
from dataclasses import dataclass, field
from typing import Protocol

from gateway.capacity.priority import RANK
from gateway.errors import Overloaded

# A lower class overtakes a fresh request one class above it after waiting this long (per class).
DEFAULT_AGEING_SECONDS = 10.0
# Deferrable requests that may wait for one deployment.
DEFAULT_DEFERRED_LIMIT = 1024
_STANDARD, _DEFERRABLE = RANK["standard"], RANK["deferrable"]
# How much each new service time moves the running mean (an exponentially weighted one).
SERVICE_TIME_WEIGHT = 0.2


class QueueFull(Overloaded):
    """The deployment runs all it may and its queue holds all it may: try elsewhere or later."""


class QueueTimeout(QueueFull):
    """A request waited in the queue as long as it could (its deadline) without being let through."""


@dataclass(frozen=True, slots=True)
class Outlook:
    """How a deployment stands for a new request of one class: what a wait prediction reads."""

    limit: int
    in_flight: int
    # Waiting requests that would run before a new one of this class (by class; ageing aside).
    ahead: int
    waiting: int
    # Recent mean seconds a request holds a slot (0 before any has finished).
    service_seconds: float

    @property
    def predicted_wait(self) -> float:
        """Seconds a new request of this class would wait for a slot: none while one is free and
        nobody is ahead; else its turn in the queue at the recent service rate."""
        if self.in_flight < self.limit and self.ahead == 0:
            return 0.0
        free = max(0, self.limit - self.in_flight)
        turns = max(1, self.ahead + 1 - free)
        return turns * self.service_seconds / self.limit


class Slot(Protocol):
    """One of a deployment's places, held from the grant until `release` (idempotent)."""

    @property
    def queued_seconds(self) -> float: ...

    def release(self) -> None: ...


class CapacityGate(Protocol):
    name: str
    limit: int
    queue_limit: int

    async def acquire(self, priority: str, wait_at_most: float) -> Slot:
        """A slot for a request of this class, waiting in the queue at most `wait_at_most` seconds;
        raises QueueFull when the queue is full and QueueTimeout when the wait ran out."""
        ...

    async def outlook(self, priority: str) -> Outlook: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class ServiceTime:
    """The recent mean time a request holds a slot: how fast the queue moves."""

    mean: float = 0.0
    count: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        if self.count == 1:
            self.mean = seconds
        else:
            self.mean += SERVICE_TIME_WEIGHT * (seconds - self.mean)


@dataclass(slots=True)
class _LocalSlot:
    gate: LocalGate
    granted_at: float
    queued_seconds: float = 0.0
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.gate._released(time.monotonic() - self.granted_at)


@dataclass(order=True, slots=True)
class _Waiter:
    key: float
    seq: int
    rank: int = field(compare=False)
    enqueued_at: float = field(compare=False)
    future: asyncio.Future[_LocalSlot] = field(compare=False)
    gone: bool = field(default=False, compare=False)


class LocalGate:
    """This process's own gate for one deployment (no I/O: the uncontended path is a counter)."""

    def __init__(
        self,
        name: str,
        limit: int,
        queue_limit: int,
        ageing_seconds: float = DEFAULT_AGEING_SECONDS,
        deferred_limit: int = DEFAULT_DEFERRED_LIMIT,
    ) -> None:
        self.name = name
        self.limit = limit
        self.queue_limit = queue_limit
        self.deferred_limit = deferred_limit
        self.ageing_seconds = ageing_seconds
        self.service = ServiceTime()
        self._in_flight = 0
        self._heap: list[_Waiter] = []
        self._waiting_by_rank = [0] * len(RANK)
        # Standard waiters in the order they came (the youngest is displaced first); left ones skipped.
        self._standard: collections.deque[_Waiter] = collections.deque()
        self._seq = itertools.count()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return sum(self._waiting_by_rank)

    async def acquire(self, priority: str, wait_at_most: float) -> _LocalSlot:
        now = time.monotonic()
        # A free place and nobody waiting (the heap may still hold waiters that left, until skipped).
        if self._in_flight < self.limit and (not self._heap or not any(self._waiting_by_rank)):
            self._in_flight += 1
            return _LocalSlot(self, now)
        rank = RANK[priority]
        self._make_room(rank)
        waiter = _Waiter(
            now + rank * self.ageing_seconds, next(self._seq), rank, now,
            asyncio.get_running_loop().create_future(),
        )  # fmt: skip
        heapq.heappush(self._heap, waiter)
        self._waiting_by_rank[rank] += 1
        if rank == _STANDARD:
            self._standard.append(waiter)
        try:
            async with asyncio.timeout(max(0.0, wait_at_most)):
                slot = await asyncio.shield(waiter.future)
        except TimeoutError:
            self._leave(waiter)
            raise QueueTimeout(
                f"Deployment '{self.name}' had no free slot within {wait_at_most:.1f} s "
                f"({self.waiting} waiting).",
                retry_after=self._outlook(rank).predicted_wait,
            ) from None
        except asyncio.CancelledError:
            self._leave(waiter)
            raise
        slot.queued_seconds = time.monotonic() - now
        return slot

    def _make_room(self, rank: int) -> None:
        """Raise QueueFull unless a waiter of this class may join: room in its queue, or (interactive)
        a standard waiter to displace."""
        by_rank = self._waiting_by_rank
        if rank == _DEFERRABLE:
            if by_rank[rank] < self.deferred_limit:
                return
            full = f"{by_rank[rank]} deferrable requests are waiting, their limit"
        else:
            if by_rank[0] + by_rank[_STANDARD] < self.queue_limit:
                return
            if rank < _STANDARD and self._displace_standard():
                return
            full = f"{by_rank[0] + by_rank[_STANDARD]} are waiting, its queue's limit"
        raise QueueFull(
            f"Deployment '{self.name}' is running {self._in_flight} of {self.limit} and {full}.",
            retry_after=self._outlook(rank).predicted_wait,
        )

    def _displace_standard(self) -> bool:
        """The youngest standard waiter leaves the queue, refused, for a more urgent request."""
        while self._standard:
            victim = self._standard.pop()
            if victim.gone or victim.future.done():
                continue
            victim.gone = True
            self._waiting_by_rank[_STANDARD] -= 1
            victim.future.set_exception(
                QueueFull(
                    f"Deployment '{self.name}' is full: this request gave its place in the queue to a "
                    "more urgent one.",
                    retry_after=self._outlook(_STANDARD).predicted_wait,
                )
            )
            return True
        return False

    async def outlook(self, priority: str) -> Outlook:
        return self._outlook(RANK[priority])

    def _outlook(self, rank: int) -> Outlook:
        ahead = sum(self._waiting_by_rank[: rank + 1])
        return Outlook(self.limit, self._in_flight, ahead, self.waiting, self.service.mean)

    def _leave(self, waiter: _Waiter) -> None:
        """A waiter that stopped waiting (timed out or cancelled): if it was granted meanwhile, the
        slot goes on to the next; else it is left in the heap, marked, and skipped when reached."""
        if waiter.gone:
            return
        waiter.gone = True
        if waiter.future.done() and not waiter.future.cancelled():
            waiter.future.result().release()
            return
        waiter.future.cancel()
        self._waiting_by_rank[waiter.rank] -= 1
        if len(self._heap) > 2 * (self.queue_limit + self.deferred_limit) + 16:  # drop left ones now and then
            self._heap = [live for live in self._heap if not live.gone]
            heapq.heapify(self._heap)
            self._standard = collections.deque(live for live in self._standard if not live.gone)

    def _released(self, held_seconds: float) -> None:
        self.service.add(held_seconds)
        self._in_flight -= 1
        heap = self._heap
        while heap and self._in_flight < self.limit:
            waiter = heapq.heappop(heap)
            if waiter.gone:
                continue
            self._waiting_by_rank[waiter.rank] -= 1
            self._in_flight += 1
            waiter.future.set_result(_LocalSlot(self, time.monotonic()))
        standard = self._standard
        while standard and (standard[0].gone or standard[0].future.done()):  # granted or left
            standard.popleft()

    async def aclose(self) -> None:
        for waiter in self._heap:
            if not waiter.future.done():
                waiter.future.cancel()
        self._heap.clear()

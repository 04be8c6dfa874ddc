"""The capacity gate every replica shares through Redis, on a real Redis: the limit holds across gates on
separate clients (as separate replicas have), the queue runs by class with ageing whichever replica a
waiter is on, a release on one replica wakes a waiter on another, a full queue and a wait that ran out
are refused, an interactive request finding the queue full displaces the newest standard waiter (on any
replica) while deferrable ones wait in a queue of their own, and a replica killed mid-request gives its
slot and its place in the queue back."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from asyncio.subprocess import Process
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from gateway.capacity.gate import Outlook, QueueFull, QueueTimeout
from gateway.capacity.redis_gate import RedisGate, RedisSlot
from gateway.state.redis_guard import RedisUnavailable
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
# A replica that takes a slot of deployment "big" (`hold`) or waits for one (`wait`) with half-second
# leases, says so, and then does nothing until it is killed.
REPLICA = """
import asyncio, sys
import redis.asyncio
from gateway.capacity.redis_gate import RedisGate

async def main() -> None:
    url, prefix, mode = sys.argv[1:4]
    gate = RedisGate(redis.asyncio.Redis.from_url(url), prefix, "big", 1, 10, lease_seconds=0.5)
    if mode == "hold":
        await gate.acquire("standard", 5)
    else:
        waiter = asyncio.get_running_loop().create_task(gate.acquire("standard", 3600))
        while (await gate.outlook("standard")).waiting == 0:
            await asyncio.sleep(0.01)
    print(mode, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@contextlib.asynccontextmanager
async def replicas(url: str, prefix: str, count: int, **options: Any) -> AsyncIterator[list[RedisGate]]:
    """`count` gates for deployment "big", each on its own Redis client (as each replica has its own)."""
    options.setdefault("limit", 1)
    options.setdefault("queue_limit", 10)
    clients = [redis.asyncio.Redis.from_url(url) for _ in range(count)]
    gates = [RedisGate(client, prefix, "big", **options) for client in clients]
    try:
        yield gates
    finally:
        for gate in gates:
            await gate.aclose()
        for client in clients:
            await client.aclose()


async def until(condition: Callable[[], Awaitable[bool]], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not so within {within} s")
        await asyncio.sleep(0.01)


def waiting(gate: RedisGate, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await gate.outlook("deferrable")).waiting == count

    return check


def in_flight(gate: RedisGate, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await gate.outlook("deferrable")).in_flight == count

    return check


async def take_turn(gate: RedisGate, priority: str, label: str, order: list[str]) -> None:
    """Wait for a slot, say so in `order`, hold it briefly and give it back."""
    slot = await gate.acquire(priority, 10)
    order.append(label)
    await asyncio.sleep(0.02)
    slot.release()


async def granted_in_turn(
    gates: list[RedisGate], holder: RedisSlot, arrivals: list[tuple[int, str, str]]
) -> list[str]:
    """Queue each arrival (gate index, priority, label) behind `holder`, one after the other, then
    release it and say in which order the arrivals got the slot."""
    order: list[str] = []

    async def arrive(gate: RedisGate, priority: str, label: str) -> None:
        slot = await gate.acquire(priority, 10)
        order.append(label)
        await asyncio.sleep(0.02)
        slot.release()

    tasks = []
    for queued, (index, priority, label) in enumerate(arrivals, start=1):
        tasks.append(asyncio.create_task(arrive(gates[index], priority, label)))
        await until(waiting(gates[0], queued))
    holder.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    return order


def test_no_more_than_the_limit_hold_a_slot_at_once_and_every_acquirer_gets_one(
    redis_url: str, redis_prefix: str
) -> None:
    async def scenario() -> int:
        async with replicas(redis_url, redis_prefix, 1, limit=2) as [gate]:
            holding, most = 0, 0

            async def request() -> None:
                nonlocal holding, most
                slot = await gate.acquire("standard", 10)
                holding += 1
                most = max(most, holding)
                await asyncio.sleep(0.1)
                holding -= 1
                slot.release()

            await asyncio.wait_for(asyncio.gather(*(request() for _ in range(5))), 10)
            await until(in_flight(gate, 0))
            assert gate.service.count == 5
            assert 0.1 <= gate.service.mean < 0.5
            return most

    assert asyncio.run(scenario()) == 2


def test_two_replicas_share_one_slot_and_a_release_on_one_wakes_a_waiter_on_the_other(
    redis_url: str, redis_prefix: str
) -> None:
    async def scenario() -> None:
        # C polls only every 5 s: a wake within a second can only be the grant published on release.
        async with (
            replicas(redis_url, redis_prefix, 2) as [a, b],
            replicas(redis_url, redis_prefix, 1, poll_seconds=5.0) as [c],
        ):
            holding, most = 0, 0

            async def request(gate: RedisGate) -> None:
                nonlocal holding, most
                slot = await gate.acquire("standard", 10)
                holding += 1
                most = max(most, holding)
                await asyncio.sleep(0.03)
                holding -= 1
                slot.release()

            await asyncio.wait_for(asyncio.gather(*(request(gate) for gate in [a, b, a, b, a, b])), 10)
            assert most == 1

            slot = await a.acquire("standard", 1)
            waiter = asyncio.create_task(c.acquire("interactive", 3))
            await until(waiting(a, 1))
            await asyncio.sleep(0.2)  # C's subscriber listens by now
            released_at = time.monotonic()
            slot.release()
            woken = await waiter
            assert time.monotonic() - released_at < 1.0
            assert woken.queued_seconds > 0.2
            assert await b.outlook("standard") == Outlook(1, 1, 0, 0, b.service.mean)
            woken.release()

    asyncio.run(scenario())


def test_waiters_are_granted_by_class_whichever_replica_they_wait_on(
    redis_url: str, redis_prefix: str
) -> None:
    async def scenario() -> list[str]:
        async with replicas(redis_url, redis_prefix, 2) as gates:
            holder = await gates[0].acquire("standard", 1)
            arrivals = [
                (1, "deferrable", "deferrable"),
                (0, "standard", "standard"),
                (1, "interactive", "interactive"),
            ]
            return await granted_in_turn(gates, holder, arrivals)

    assert asyncio.run(scenario()) == ["interactive", "standard", "deferrable"]


def test_a_request_that_waited_long_enough_goes_before_a_fresh_one_of_a_higher_class(
    redis_url: str, redis_prefix: str
) -> None:
    async def scenario() -> list[str]:
        async with replicas(redis_url, redis_prefix, 2, ageing_seconds=0.2) as gates:
            holder = await gates[0].acquire("standard", 1)
            order: list[str] = []

            async def arrive(gate: RedisGate, priority: str, label: str) -> None:
                slot = await gate.acquire(priority, 10)
                order.append(label)
                await asyncio.sleep(0.02)
                slot.release()

            aged = asyncio.create_task(arrive(gates[1], "deferrable", "aged"))
            await until(waiting(gates[0], 1))
            # 0.6 s on: more than the 0.4 s two classes of ageing ask.
            await asyncio.sleep(0.6)
            fresh = asyncio.create_task(arrive(gates[0], "interactive", "interactive"))
            await until(waiting(gates[0], 2))
            new = asyncio.create_task(arrive(gates[1], "deferrable", "new"))
            await until(waiting(gates[0], 3))
            holder.release()
            await asyncio.wait_for(asyncio.gather(aged, fresh, new), 10)
            return order

    # Ageing keys: aged t0 + 0.4, interactive t0 + 0.6, new t0 + 0.6 + 0.4.
    assert asyncio.run(scenario()) == ["aged", "interactive", "new"]


def test_a_full_queue_is_refused_and_a_wait_that_ran_out_leaves_the_queue(
    redis_url: str, redis_prefix: str
) -> None:
    async def scenario() -> None:
        async with replicas(redis_url, redis_prefix, 2, queue_limit=2) as [a, b]:
            holder = await a.acquire("standard", 1)
            queued = [asyncio.create_task(gate.acquire("standard", 10)) for gate in (a, b)]
            await until(waiting(a, 2))
            outlook = await b.outlook("interactive")
            assert (outlook.in_flight, outlook.ahead, outlook.waiting) == (1, 0, 2)
            assert (await b.outlook("standard")).ahead == 2
            # A standard request displaces nobody: it is refused, and both waiters still wait.
            with pytest.raises(QueueFull) as refused:
                await b.acquire("standard", 10)
            assert type(refused.value) is QueueFull
            assert refused.value.retry_after >= 1
            assert "2 are waiting" in refused.value.message
            await asyncio.sleep(0.3)  # three polls: a displaced waiter would have heard by now
            assert not any(task.done() for task in queued)
            assert (await a.outlook("standard")).waiting == 2

            for task in queued:
                task.cancel()
            await asyncio.gather(*queued, return_exceptions=True)
            assert (await a.outlook("standard")).waiting == 0

            started = time.monotonic()
            with pytest.raises(QueueTimeout) as timed_out:
                await b.acquire("deferrable", 0.3)
            assert 0.25 < time.monotonic() - started < 1.5
            assert timed_out.value.retry_after >= 1
            assert "0 waiting" in timed_out.value.message
            outlook = await a.outlook("deferrable")
            assert (outlook.in_flight, outlook.waiting) == (1, 0)
            holder.release()

    asyncio.run(scenario())


def test_an_interactive_request_displaces_the_newest_standard_waiter_from_a_full_queue(
    redis_url: str, redis_prefix: str
) -> None:
    async def scenario() -> list[str]:
        async with replicas(redis_url, redis_prefix, 1, queue_limit=2) as [gate]:
            holder = await gate.acquire("standard", 1)
            order: list[str] = []
            older = asyncio.create_task(take_turn(gate, "standard", "older", order))
            await until(waiting(gate, 1))
            younger = asyncio.create_task(take_turn(gate, "standard", "younger", order))
            await until(waiting(gate, 2))
            urgent = asyncio.create_task(take_turn(gate, "interactive", "interactive", order))
            with pytest.raises(QueueFull) as displaced:
                await asyncio.wait_for(younger, 3)
            assert type(displaced.value) is QueueFull
            assert "more urgent" in displaced.value.message
            assert displaced.value.retry_after >= 1
            # The interactive one waits in its stead, first in line.
            await until(waiting(gate, 2))
            outlook = await gate.outlook("interactive")
            assert (outlook.in_flight, outlook.ahead, outlook.waiting) == (1, 1, 2)
            assert not older.done() and not urgent.done()
            holder.release()
            await asyncio.wait_for(asyncio.gather(older, urgent), 10)
            await until(in_flight(gate, 0))
            return order

    assert asyncio.run(scenario()) == ["interactive", "older"]


def test_the_displaced_standard_waiter_may_wait_on_another_replica_and_hears_it_at_once(
    redis_url: str, redis_prefix: str
) -> None:
    async def scenario() -> list[str]:
        # B polls only every 5 s: a refusal within a second can only be the message the eviction sent.
        async with (
            replicas(redis_url, redis_prefix, 1, queue_limit=2) as [a],
            replicas(redis_url, redis_prefix, 1, queue_limit=2, poll_seconds=5.0) as [b],
        ):
            holder = await a.acquire("standard", 1)
            order: list[str] = []
            older = asyncio.create_task(take_turn(a, "standard", "older", order))
            await until(waiting(a, 1))
            younger = asyncio.create_task(take_turn(b, "standard", "younger", order))
            await until(waiting(a, 2))
            await asyncio.sleep(0.2)  # B's subscriber listens by now
            arrived_at = time.monotonic()
            urgent = asyncio.create_task(take_turn(a, "interactive", "interactive", order))
            with pytest.raises(QueueFull, match="more urgent"):
                await asyncio.wait_for(younger, 3)
            assert time.monotonic() - arrived_at < 1.0
            await until(waiting(b, 2))
            assert (await b.outlook("interactive")).ahead == 1
            holder.release()
            await asyncio.wait_for(asyncio.gather(older, urgent), 10)
            return order

    assert asyncio.run(scenario()) == ["interactive", "older"]


def test_deferrable_waiters_have_a_queue_of_their_own_and_are_never_displaced(
    redis_url: str, redis_prefix: str
) -> None:
    async def scenario() -> list[str]:
        async with replicas(redis_url, redis_prefix, 2, queue_limit=1, deferred_limit=2) as [a, b]:
            holder = await a.acquire("standard", 1)
            order: list[str] = []
            # Two deferrable waiters (one on each replica) leave the main queue's one place free.
            deferred = []
            for index, gate in enumerate((a, b)):
                deferred.append(
                    asyncio.create_task(take_turn(gate, "deferrable", f"deferrable {index}", order))
                )
                await until(waiting(a, index + 1))
            with pytest.raises(QueueFull) as refused:
                await b.acquire("deferrable", 10)
            assert type(refused.value) is QueueFull
            assert "2 deferrable requests are waiting" in refused.value.message
            standard = asyncio.create_task(take_turn(b, "standard", "standard", order))
            await until(waiting(a, 3))
            outlook = await a.outlook("standard")
            assert (outlook.in_flight, outlook.ahead, outlook.waiting) == (1, 1, 3)
            with pytest.raises(QueueFull, match="1 are waiting"):
                await a.acquire("standard", 10)
            # An interactive request displaces the standard waiter, never a deferrable one ...
            urgent = asyncio.create_task(take_turn(a, "interactive", "interactive", order))
            with pytest.raises(QueueFull, match="more urgent"):
                await asyncio.wait_for(standard, 3)
            await until(waiting(a, 3))
            # ... and with no standard waiter left to displace, the next one is refused.
            with pytest.raises(QueueFull, match="1 are waiting"):
                await b.acquire("interactive", 10)
            assert (await b.outlook("deferrable")).waiting == 3
            holder.release()
            await asyncio.wait_for(asyncio.gather(urgent, *deferred), 10)
            return order

    assert asyncio.run(scenario()) == ["interactive", "deferrable 0", "deferrable 1"]


def test_a_cancelled_wait_leaves_the_queue_even_when_a_grant_races_it(
    redis_url: str, redis_prefix: str
) -> None:
    async def scenario() -> None:
        async with replicas(redis_url, redis_prefix, 2) as [a, b]:
            holder = await a.acquire("standard", 1)
            waiter = asyncio.create_task(b.acquire("standard", 10))
            await until(waiting(a, 1))
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            # Gone as the cancellation returns, not when its lease ends.
            assert await a.outlook("standard") == Outlook(1, 1, 0, 0, 0.0)

            # The slot is handed to the waiter in Redis as the waiter is cancelled: it goes on, not lost.
            waiter = asyncio.create_task(b.acquire("standard", 10))
            await until(waiting(a, 1))
            holder.release()
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                (await waiter).release()
            await until(in_flight(a, 0))
            assert (await a.outlook("standard")).waiting == 0
            slot = await a.acquire("standard", 0)
            assert slot.queued_seconds == 0.0
            slot.release()

    asyncio.run(scenario())


def test_a_closed_gate_gives_back_its_slots_and_its_waiters_places(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        async with replicas(redis_url, redis_prefix, 1) as [other]:
            async with replicas(redis_url, redis_prefix, 1) as [closing]:
                await closing.acquire("standard", 1)
                waiter = asyncio.create_task(closing.acquire("standard", 10))
                await until(waiting(other, 1))
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert await other.outlook("standard") == Outlook(1, 0, 0, 0, 0.0)
            (await other.acquire("standard", 0)).release()

    asyncio.run(scenario())


@contextlib.asynccontextmanager
async def crashing_replica(redis_url: str, redis_prefix: str, mode: str) -> AsyncIterator[Process]:
    """A replica in another process, once it holds a slot (`hold`) or waits for one (`wait`); killed
    (SIGKILL: it releases nothing and leaves nothing) by the block or at its end."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", REPLICA, redis_url, redis_prefix, mode, cwd=ROOT, stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        assert (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip() == mode
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def kill(process: Process) -> float:
    process.kill()
    await process.wait()
    return time.monotonic()


def test_a_crashed_replicas_slot_comes_back_once_its_lease_ends(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        async with (
            replicas(redis_url, redis_prefix, 1) as [gate],
            crashing_replica(redis_url, redis_prefix, "hold") as replica,
        ):
            # Two of its half-second leases on, its heartbeat has kept the slot.
            await asyncio.sleep(1.0)
            assert (await gate.outlook("standard")).in_flight == 1
            with pytest.raises(QueueTimeout):
                await gate.acquire("standard", 0.2)
            killed_at = await kill(replica)
            slot = await gate.acquire("standard", 5)
            assert time.monotonic() - killed_at < 1.5
            slot.release()

    asyncio.run(scenario())


def test_a_crashed_replicas_waiter_drops_out_of_the_queue(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        async with replicas(redis_url, redis_prefix, 1) as [gate]:
            holder = await gate.acquire("standard", 1)
            async with crashing_replica(redis_url, redis_prefix, "wait") as replica:
                # Two of its half-second leases on, its polls have kept it in the queue.
                await asyncio.sleep(1.0)
                assert (await gate.outlook("standard")).waiting == 1
                killed_at = await kill(replica)
                await until(waiting(gate, 0))
                assert time.monotonic() - killed_at < 1.5
                outlook = await gate.outlook("standard")
                assert (outlook.in_flight, outlook.waiting) == (1, 0)
            holder.release()

    asyncio.run(scenario())


def test_redis_unavailable_is_raised_for_the_caller_to_fall_back_on(redis_prefix: str) -> None:
    async def scenario() -> None:
        client = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
        gate = RedisGate(client, redis_prefix, "big", 1, 10)
        try:
            with pytest.raises(RedisUnavailable, match="capacity gate 'big'"):
                await gate.acquire("standard", 1)
            # The guard keeps it from asking again at once.
            with pytest.raises(RedisUnavailable, match="not asked again"):
                await gate.outlook("standard")
        finally:
            await gate.aclose()
            await client.aclose()

    asyncio.run(scenario())

"""The in-process gate: the limit holds, strict priority with ageing, a bounded queue, waits that end."""

from __future__ import annotations

import asyncio

import pytest

from gateway.capacity.gate import LocalGate, Outlook, QueueFull, QueueTimeout


def run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def test_no_more_than_the_limit_run_at_once() -> None:
    async def main() -> int:
        gate = LocalGate("d", limit=2, queue_limit=10)
        running = most = 0

        async def one() -> None:
            nonlocal running, most
            slot = await gate.acquire("interactive", 5)
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.01)
            running -= 1
            slot.release()

        await asyncio.gather(*(one() for _ in range(7)))
        assert gate.in_flight == 0 and gate.waiting == 0
        return most

    assert run(main()) == 2


def test_the_next_place_goes_to_the_highest_class_then_the_oldest() -> None:
    async def main() -> list[str]:
        gate = LocalGate("d", limit=1, queue_limit=10)
        held = await gate.acquire("interactive", 1)
        order: list[str] = []

        async def wait(name: str, priority: str) -> None:
            slot = await gate.acquire(priority, 5)
            order.append(name)
            await asyncio.sleep(0)
            slot.release()

        tasks = []
        for name, priority in [("d1", "deferrable"), ("s1", "standard"), ("i1", "interactive"),
                               ("s2", "standard"), ("i2", "interactive")]:  # fmt: skip
            tasks.append(asyncio.create_task(wait(name, priority)))
            await asyncio.sleep(0.001)
        held.release()
        await asyncio.gather(*tasks)
        return order

    assert run(main()) == ["i1", "i2", "s1", "s2", "d1"]


def test_a_lower_class_that_waited_long_enough_goes_before_a_fresh_higher_one() -> None:
    async def main() -> list[str]:
        gate = LocalGate("d", limit=1, queue_limit=10, ageing_seconds=0.05)
        held = await gate.acquire("interactive", 1)
        order: list[str] = []

        async def wait(name: str, priority: str) -> None:
            slot = await gate.acquire(priority, 5)
            order.append(name)
            slot.release()

        old = asyncio.create_task(wait("old-deferrable", "deferrable"))
        await asyncio.sleep(0.15)  # more than two classes' ageing: it overtakes interactive
        fresh = asyncio.create_task(wait("fresh-interactive", "interactive"))
        await asyncio.sleep(0.001)
        held.release()
        await asyncio.gather(old, fresh)
        return order

    assert run(main()) == ["old-deferrable", "fresh-interactive"]


def test_a_full_queue_refuses_at_once_with_a_retry_after() -> None:
    async def main() -> None:
        gate = LocalGate("d", limit=1, queue_limit=1)
        gate.service.add(2.0)
        held = await gate.acquire("interactive", 1)
        waiter = asyncio.create_task(gate.acquire("interactive", 5))
        await asyncio.sleep(0.001)
        with pytest.raises(QueueFull) as refused:  # interactive ones alone fill it: nobody to displace
            await gate.acquire("interactive", 5)
        assert refused.value.status == 503 and refused.value.retry_after >= 1
        held.release()
        (await waiter).release()

    run(main())


def test_a_wait_ends_at_its_time_and_leaves_the_queue() -> None:
    async def main() -> None:
        gate = LocalGate("d", limit=1, queue_limit=5)
        held = await gate.acquire("interactive", 1)
        with pytest.raises(QueueTimeout):
            await gate.acquire("standard", 0.02)
        assert gate.waiting == 0
        # A cancelled waiter leaves too, and the place goes to the next one.
        cancelled = asyncio.create_task(gate.acquire("interactive", 5))
        later = asyncio.create_task(gate.acquire("deferrable", 5))
        await asyncio.sleep(0.001)
        cancelled.cancel()
        await asyncio.sleep(0.001)
        assert gate.waiting == 1
        held.release()
        slot = await later
        assert slot.queued_seconds > 0
        slot.release()
        assert gate.in_flight == 0

    run(main())


def test_a_released_place_is_released_once() -> None:
    async def main() -> None:
        gate = LocalGate("d", limit=1, queue_limit=5)
        slot = await gate.acquire("interactive", 1)
        slot.release()
        slot.release()
        assert gate.in_flight == 0
        again = await gate.acquire("interactive", 0.01)  # no wait: the place is free
        assert again.queued_seconds == 0

    run(main())


def test_the_predicted_wait_reads_the_queue_ahead_and_the_service_time() -> None:
    free = Outlook(limit=2, in_flight=1, ahead=0, waiting=0, service_seconds=1.0)
    assert free.predicted_wait == 0
    busy = Outlook(limit=2, in_flight=2, ahead=3, waiting=5, service_seconds=1.0)
    assert busy.predicted_wait == pytest.approx(4 * 1.0 / 2)  # its turn is the fourth free place

    async def main() -> None:
        gate = LocalGate("d", limit=1, queue_limit=5)
        held = await gate.acquire("interactive", 1)
        gate.service.add(0.5)
        deferred = asyncio.create_task(gate.acquire("deferrable", 5))
        await asyncio.sleep(0.001)
        # A deferrable request waits ahead of no interactive one: interactive sees nobody ahead.
        assert (await gate.outlook("interactive")).ahead == 0
        assert (await gate.outlook("deferrable")).ahead == 1
        held.release()
        (await deferred).release()

    run(main())


def test_an_interactive_request_displaces_the_youngest_standard_waiter_from_a_full_queue() -> None:
    async def main() -> None:
        gate = LocalGate("d", limit=1, queue_limit=2)
        held = await gate.acquire("interactive", 1)
        old = asyncio.create_task(gate.acquire("standard", 5))
        await asyncio.sleep(0.001)
        young = asyncio.create_task(gate.acquire("standard", 5))
        await asyncio.sleep(0.001)
        urgent = asyncio.create_task(gate.acquire("interactive", 5))
        await asyncio.sleep(0.001)
        with pytest.raises(QueueFull, match="more urgent"):
            await young
        assert gate.waiting == 2 and not urgent.done()
        # A standard request finding the queue full is refused, and displaces nobody.
        with pytest.raises(QueueFull):
            await gate.acquire("standard", 5)
        held.release()
        (await urgent).release()
        (await old).release()
        assert gate.in_flight == 0 and gate.waiting == 0

    run(main())


def test_deferrable_requests_wait_in_a_room_of_their_own() -> None:
    async def main() -> None:
        gate = LocalGate("d", limit=1, queue_limit=1, deferred_limit=2)
        held = await gate.acquire("interactive", 1)
        bulk = [asyncio.create_task(gate.acquire("deferrable", 5)) for _ in range(2)]
        await asyncio.sleep(0.001)
        with pytest.raises(QueueFull, match="deferrable"):
            await gate.acquire("deferrable", 5)
        # The main queue still has its place for an interactive request.
        urgent = asyncio.create_task(gate.acquire("interactive", 5))
        await asyncio.sleep(0.001)
        assert gate.waiting == 3
        held.release()
        (await urgent).release()
        for task in bulk:
            (await task).release()

    run(main())

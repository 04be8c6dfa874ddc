"""How calls reach a batch database: off the event loop, one at a time, a wait for a turn bounded (a
hung database fails calls with BatchStoreUnavailable, and readiness says so), and a cancelled caller's
call finished before the next one starts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from gateway.batches.schema import Sql
from gateway.batches.store import BatchStoreUnavailable, ThreadedBatchStore

T = TypeVar("T")


class SlowDatabase:
    """A `BlockingBatchDatabase` whose calls block their thread until the test lets them go, recording
    which threads they ran on and whether two ever overlapped."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.threads: set[int] = set()
        self.running = 0
        self.calls = 0
        self.overlapped = False
        self._count = threading.Lock()

    def _call(self, work: Callable[[Sql], T]) -> T:
        with self._count:
            self.running += 1
            self.calls += 1
            self.overlapped |= self.running > 1
        self.threads.add(threading.get_ident())
        self.entered.set()
        self.release.wait(timeout=10)
        with self._count:
            self.running -= 1
        return work(_NoSql())

    read = _call
    write = _call

    def close(self) -> None:
        pass


class _NoSql:
    postgres = False

    def rows(self, statement: str, params: Any = ()) -> list[tuple[Any, ...]]:
        return []

    def run(self, statement: str, params: Any = ()) -> int:
        return 0

    def insert_many(self, table: str, columns: Any, rows: Any) -> None:
        pass


def slow_store(database: SlowDatabase, turn_timeout: float = 0.2) -> ThreadedBatchStore:
    return ThreadedBatchStore(database, name="slow", turn_timeout=turn_timeout, close_timeout=1.0)


def test_a_call_waiting_too_long_for_its_turn_fails_and_the_calls_run_off_the_loop() -> None:
    database = SlowDatabase()

    async def scenario() -> None:
        store = slow_store(database)
        first = asyncio.create_task(store.get_batch("alpha", "batch_1"))
        await asyncio.to_thread(database.entered.wait, 5)
        with pytest.raises(BatchStoreUnavailable, match=r"busy, no turn within 0\.2 s"):
            await store.get_batch("alpha", "batch_2")
        database.release.set()
        assert await first is None
        assert await store.get_batch("alpha", "batch_3") is None  # works again
        await store.aclose()

    asyncio.run(scenario())
    assert database.calls == 2
    assert threading.get_ident() not in database.threads  # never on the event loop's thread


def test_readiness_reports_a_database_that_fails_until_a_call_works() -> None:
    failing = True

    class FlakyDatabase(SlowDatabase):
        def _call(self, work: Callable[[Sql], T]) -> T:
            if failing:
                raise BatchStoreUnavailable("PostgreSQL: connection refused")
            return work(_NoSql())

        read = _call
        write = _call

    async def scenario() -> list[dict[str, Any]]:
        store = slow_store(FlakyDatabase())
        with pytest.raises(BatchStoreUnavailable):
            await store.finalize_ready()
        seen = [store.status()]
        nonlocal failing
        failing = False
        await store.finalize_ready()
        seen.append(store.status())
        await store.aclose()
        return seen

    down, up = asyncio.run(scenario())
    assert down["ok"] is False and down["error"] == "PostgreSQL: connection refused"
    assert down["failing_since"] is not None
    assert up == {"ok": True, "failing_since": None, "error": None}


def test_a_cancelled_callers_call_ends_before_the_next_one_starts() -> None:
    database = SlowDatabase()

    async def scenario() -> None:
        store = slow_store(database, turn_timeout=5.0)
        first = asyncio.create_task(store.claim("w1", 1, 30))
        await asyncio.to_thread(database.entered.wait, 5)
        first.cancel()  # the caller goes away; its call is still running on its thread
        second = asyncio.create_task(store.claim("w2", 1, 30))
        await asyncio.sleep(0.1)
        assert database.calls == 1  # the second waits for the first's thread
        database.release.set()
        assert await second == []
        with pytest.raises(asyncio.CancelledError):
            await first
        await store.aclose()
        with pytest.raises(BatchStoreUnavailable, match="closed"):
            await store.claim("w3", 1, 30)

    asyncio.run(scenario())
    assert database.calls == 2 and not database.overlapped

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.fakes.background import BackgroundLoop
from gateway.limits.budget_counters import (
    KEEP_AFTER_RESET,
    NANO_PER_USD,
    BudgetCounters,
    BudgetLine,
    CountersUnavailable,
    Exhausted,
    InProcessBudgetCounters,
    RedisBudgetCounters,
    Reservation,
)
from tests.conftest import free_port

USD = NANO_PER_USD
CENTS_10 = USD // 10


def line(key: str, limit_nano: int = USD, resets_in: float = 3600.0) -> BudgetLine:
    return BudgetLine(f"{key} budget", key, limit_nano, time.time() + resets_in)


@pytest.fixture(params=["in-process", "redis"])
def open_counters(
    request: pytest.FixtureRequest, bg: BackgroundLoop
) -> Iterator[Callable[[], BudgetCounters]]:
    """Opens counters over one store: the same object in-process, a new Redis client (as another
    gateway process would have) each time for Redis."""
    opened: list[BudgetCounters] = []
    if request.param == "in-process":
        shared = InProcessBudgetCounters()
        opened.append(shared)

        def open_counters() -> BudgetCounters:
            return shared

    else:
        url: str = request.getfixturevalue("redis_url")
        prefix: str = request.getfixturevalue("redis_prefix")

        def open_counters() -> BudgetCounters:
            counters = RedisBudgetCounters(redis.asyncio.Redis.from_url(url), prefix)
            opened.append(counters)
            return counters

    yield open_counters
    for counters in opened:
        bg.run(counters.aclose())


def test_reserve_succeeds_up_to_the_limit_then_names_the_exhausted_line(
    open_counters: Callable[[], BudgetCounters], bg: BackgroundLoop
) -> None:
    counters = open_counters()
    daily = line("team:search:day:2026-11-26")
    for _ in range(3):
        assert bg.run(counters.reserve([daily], 3 * CENTS_10)) == Reservation((daily,), 3 * CENTS_10)
    assert bg.run(counters.reserve([daily], 3 * CENTS_10)) == Exhausted(daily, 9 * CENTS_10, 9 * CENTS_10)
    assert bg.run(counters.reserve([daily], CENTS_10)) == Reservation((daily,), CENTS_10)
    # At the limit even a zero reservation is refused.
    assert bg.run(counters.reserve([daily], 0)) == Exhausted(daily, USD, USD)
    assert bg.run(counters.spent([daily])) == [USD]
    assert counters.last_known(daily.key) == USD


def test_reserve_is_all_or_nothing_across_lines(
    open_counters: Callable[[], BudgetCounters], bg: BackgroundLoop
) -> None:
    counters = open_counters()
    team, key = line("team:search:day"), line("key:abc:day", limit_nano=5 * CENTS_10)
    assert isinstance(bg.run(counters.reserve([team, key], 4 * CENTS_10)), Reservation)
    assert bg.run(counters.reserve([team, key], 2 * CENTS_10)) == Exhausted(key, 4 * CENTS_10, 4 * CENTS_10)
    assert bg.run(counters.spent([team, key])) == [4 * CENTS_10, 4 * CENTS_10]
    # Both over: the first line is the one named.
    assert bg.run(counters.reserve([team, key], 7 * CENTS_10)) == Exhausted(team, 4 * CENTS_10, 4 * CENTS_10)
    assert bg.run(counters.spent([team, key])) == [4 * CENTS_10, 4 * CENTS_10]


def test_settle_replaces_the_reservation_and_release_returns_it(
    open_counters: Callable[[], BudgetCounters], bg: BackgroundLoop
) -> None:
    counters = open_counters()
    team, key = line("team:search:day"), line("key:abc:day")
    first = bg.run(counters.reserve([team, key], 5 * CENTS_10))
    assert isinstance(first, Reservation)
    bg.run(counters.settle(first, 123_456_789))
    assert bg.run(counters.spent([team, key])) == [123_456_789, 123_456_789]

    second = bg.run(counters.reserve([team], 3 * CENTS_10))
    assert isinstance(second, Reservation)
    assert bg.run(counters.spent([team, key])) == [423_456_789, 123_456_789]
    bg.run(counters.settle(second, 0))
    assert bg.run(counters.spent([team, key])) == [123_456_789, 123_456_789]
    assert counters.last_known(team.key) == 123_456_789


def test_settle_records_real_spend_above_the_limit(
    open_counters: Callable[[], BudgetCounters], bg: BackgroundLoop
) -> None:
    counters = open_counters()
    team = line("team:search:day")
    reservation = bg.run(counters.reserve([team], CENTS_10))
    assert isinstance(reservation, Reservation)
    bg.run(counters.settle(reservation, 3 * USD))
    assert bg.run(counters.spent([team])) == [3 * USD]
    assert bg.run(counters.reserve([team], 0)) == Exhausted(team, 3 * USD, 0)


def test_an_exhausted_line_says_whether_settling_the_requests_in_flight_may_admit_the_amount(
    open_counters: Callable[[], BudgetCounters], bg: BackgroundLoop
) -> None:
    counters = open_counters()
    daily = line("team:search:day")
    settled = bg.run(counters.reserve([daily], 4 * CENTS_10))
    in_flight = bg.run(counters.reserve([daily], 5 * CENTS_10))
    assert isinstance(settled, Reservation) and isinstance(in_flight, Reservation)
    bg.run(counters.settle(settled, 2 * CENTS_10))  # spent 2, held 5
    refused = bg.run(counters.reserve([daily], 9 * CENTS_10))
    assert refused == Exhausted(daily, 7 * CENTS_10, 5 * CENTS_10)
    assert isinstance(refused, Exhausted) and refused.may_fit_after_settling(8 * CENTS_10)
    assert not refused.may_fit_after_settling(9 * CENTS_10)
    bg.run(counters.settle(in_flight, 0))
    spent_out = bg.run(counters.reserve([daily], 9 * CENTS_10))
    assert spent_out == Exhausted(daily, 2 * CENTS_10, 0)
    assert isinstance(spent_out, Exhausted) and not spent_out.may_fit_after_settling(CENTS_10)


def test_unknown_lines_read_zero_and_last_known_needs_a_sighting(
    open_counters: Callable[[], BudgetCounters], bg: BackgroundLoop
) -> None:
    counters = open_counters()
    fresh = line("team:new:day")
    assert counters.last_known(fresh.key) is None
    assert bg.run(counters.spent([fresh])) == [0]
    assert bg.run(counters.spent([])) == []
    assert bg.run(counters.reserve([], CENTS_10)) == Reservation((), CENTS_10)


def test_a_key_twice_in_one_call_is_refused(
    open_counters: Callable[[], BudgetCounters], bg: BackgroundLoop
) -> None:
    counters = open_counters()
    with pytest.raises(ValueError, match="twice"):
        bg.run(counters.reserve([line("team:a:day"), line("team:a:day")], CENTS_10))


def test_concurrent_reservations_from_two_processes_never_overspend(
    open_counters: Callable[[], BudgetCounters], bg: BackgroundLoop
) -> None:
    first, second = open_counters(), open_counters()
    daily = line("team:search:day")

    async def race() -> list[Reservation | Exhausted]:
        return await asyncio.gather(
            *((first if i % 2 else second).reserve([daily], CENTS_10) for i in range(200))
        )

    results = bg.run(race())
    assert sum(isinstance(result, Reservation) for result in results) == 10
    assert sum(isinstance(result, Exhausted) for result in results) == 190
    assert bg.run(first.spent([daily])) == bg.run(second.spent([daily])) == [USD]


def test_redis_periods_expire_a_week_after_they_end(
    bg: BackgroundLoop, redis_url: str, redis_prefix: str
) -> None:
    counters = RedisBudgetCounters(redis.asyncio.Redis.from_url(redis_url), redis_prefix)
    raw = redis.asyncio.Redis.from_url(redis_url)
    try:
        current, old = line("team:search:day:today"), line("team:search:day:long-ago", resets_in=-8 * 86400)
        reservation = bg.run(counters.reserve([current], CENTS_10))
        assert isinstance(reservation, Reservation)
        ttl = bg.run(raw.ttl(redis_prefix + current.key))
        assert KEEP_AFTER_RESET + 3600 - 5 < ttl <= KEEP_AFTER_RESET + 3600
        bg.run(counters.settle(reservation, 2 * CENTS_10))
        assert bg.run(raw.ttl(redis_prefix + current.key)) > KEEP_AFTER_RESET + 3600 - 5
        # A period that ended more than a week ago is gone as soon as it is written.
        assert isinstance(bg.run(counters.reserve([old], CENTS_10)), Reservation)
        assert bg.run(raw.exists(redis_prefix + old.key)) == 0
    finally:
        bg.run(counters.aclose())
        bg.run(raw.aclose())


def test_in_process_drops_periods_a_week_after_they_end(bg: BackgroundLoop) -> None:
    counters = InProcessBudgetCounters(sweep_every=0)
    current, old = line("team:search:day:today"), line("team:search:day:long-ago", resets_in=-8 * 86400)
    assert isinstance(bg.run(counters.reserve([old], CENTS_10)), Reservation)
    assert counters.last_known(old.key) == CENTS_10
    assert isinstance(bg.run(counters.reserve([current], CENTS_10)), Reservation)
    assert counters.last_known(old.key) is None
    assert counters.last_known(current.key) == CENTS_10


def test_unreachable_redis_is_reported_as_unavailable(bg: BackgroundLoop) -> None:
    # No retries: redis-py's default backoff would only make the failure slower.
    nothing_there = redis.asyncio.Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
    counters = RedisBudgetCounters(nothing_there)
    try:
        with pytest.raises(CountersUnavailable, match="reserving budget"):
            bg.run(counters.reserve([line("team:search:day")], CENTS_10))
        with pytest.raises(CountersUnavailable, match="reading budget"):
            bg.run(counters.spent([line("team:search:day")]))
    finally:
        bg.run(counters.aclose())

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.fakes.background import BackgroundLoop
from gateway.limits.rate_counters import (
    CountersUnavailable,
    InProcessRateCounters,
    Limited,
    RateCounters,
    RateLine,
    RedisRateCounters,
)
from tests.conftest import free_port

# The start of a one-minute window (index 100), far from real time: `now` is the test's to steer.
T0 = 6000.0
RPM = RateLine("team search requests per minute", "team:search:rpm", 10)
TPM = RateLine("team search tokens per minute", "team:search:tpm", 1000)


@pytest.fixture(params=["in-process", "redis"])
def open_counters(request: pytest.FixtureRequest, bg: BackgroundLoop) -> Iterator[Callable[[], RateCounters]]:
    """Opens counters over one store: the same object in-process, a new Redis client (as another
    gateway process would have) each time for Redis."""
    opened: list[RateCounters] = []
    if request.param == "in-process":
        shared = InProcessRateCounters()
        opened.append(shared)

        def open_counters() -> RateCounters:
            return shared

    else:
        url: str = request.getfixturevalue("redis_url")
        prefix: str = request.getfixturevalue("redis_prefix")

        def open_counters() -> RateCounters:
            counters = RedisRateCounters(redis.asyncio.Redis.from_url(url), prefix)
            opened.append(counters)
            return counters

    yield open_counters
    for counters in opened:
        bg.run(counters.aclose())


def test_admits_up_to_the_limit_then_says_when_to_retry(
    open_counters: Callable[[], RateCounters], bg: BackgroundLoop
) -> None:
    counters = open_counters()
    for second in range(10):
        assert bg.run(counters.admit([RPM], [1], now=T0 + second)) is None
    limited = bg.run(counters.admit([RPM], [1], now=T0 + 10))
    assert isinstance(limited, Limited)
    assert limited.line == RPM
    # The window ends in 50 s; then its 10 requests must fade to 9: another 6 s.
    assert limited.retry_after == pytest.approx(56.0)
    assert bg.run(counters.admit([RPM], [1], now=T0 + 65)) == Limited(RPM, pytest.approx(1.0))
    assert bg.run(counters.admit([RPM], [1], now=T0 + 67)) is None


def test_the_previous_window_counts_by_the_share_still_inside_the_sliding_window(
    open_counters: Callable[[], RateCounters], bg: BackgroundLoop
) -> None:
    counters = open_counters()
    bg.run(counters.add([RPM], [10], now=T0 + 1))
    # 30 s into the next window half of the previous one still counts: 5 of 10.
    halfway = T0 + 90
    assert bg.run(counters.admit([RPM], [6], now=halfway)) == Limited(RPM, pytest.approx(6.0))
    assert bg.run(counters.admit([RPM], [5], now=halfway)) is None
    # 5 + 10 * 0.5 = 10: one more must wait until the old window weighs 0.4, 6 s on.
    assert bg.run(counters.admit([RPM], [1], now=halfway)) == Limited(RPM, pytest.approx(6.0))
    assert bg.run(counters.admit([RPM], [1], now=halfway + 7)) is None
    # Two windows on, the first no longer counts and the second (6) counts in full as it starts
    # to fade: one more fits once it weighs 5/6, 10 s on.
    assert bg.run(counters.admit([RPM], [4], now=T0 + 120)) is None
    assert bg.run(counters.admit([RPM], [1], now=T0 + 120)) == Limited(RPM, pytest.approx(10.0))


def test_token_lines_take_amounts_and_nothing_is_counted_when_one_line_is_over(
    open_counters: Callable[[], RateCounters], bg: BackgroundLoop
) -> None:
    counters = open_counters()
    rpm = RateLine("team search requests per minute", "team:search:rpm", 100)
    assert bg.run(counters.admit([rpm, TPM], [1, 600], now=T0)) is None
    # Completion tokens, known only after the answer.
    bg.run(counters.add([TPM], [300], now=T0 + 1))
    limited = bg.run(counters.admit([rpm, TPM], [1, 200], now=T0 + 2))
    assert isinstance(limited, Limited)
    assert limited.line == TPM
    assert limited.retry_after == pytest.approx(58.0 + 60.0 * (1 - 800 / 900))
    # The refused request left no mark on the requests line: exactly 99 more fit.
    assert bg.run(counters.admit([rpm], [99], now=T0 + 3)) is None
    assert isinstance(bg.run(counters.admit([rpm], [1], now=T0 + 3)), Limited)
    assert bg.run(counters.admit([TPM], [100], now=T0 + 3)) is None


def test_an_amount_larger_than_the_limit_never_fits(
    open_counters: Callable[[], RateCounters], bg: BackgroundLoop
) -> None:
    counters = open_counters()
    limited = bg.run(counters.admit([TPM], [1001], now=T0))
    assert isinstance(limited, Limited)
    assert math.isinf(limited.retry_after)


def test_concurrent_admissions_from_two_processes_never_exceed_the_limit(
    open_counters: Callable[[], RateCounters], bg: BackgroundLoop
) -> None:
    first, second = open_counters(), open_counters()

    async def race() -> list[Limited | None]:
        return await asyncio.gather(
            *((first if i % 2 else second).admit([RPM], [1], now=T0) for i in range(100))
        )

    results = bg.run(race())
    assert results.count(None) == 10
    assert sum(isinstance(result, Limited) for result in results) == 90


def test_redis_windows_expire_after_two_windows(
    bg: BackgroundLoop, redis_url: str, redis_prefix: str
) -> None:
    counters = RedisRateCounters(redis.asyncio.Redis.from_url(redis_url), redis_prefix)
    raw = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert bg.run(counters.admit([RPM], [1], now=T0)) is None
        bg.run(counters.add([TPM], [5], now=T0 + 60))
        assert 119_000 < bg.run(raw.pttl(f"{redis_prefix}team:search:rpm:100")) <= 120_000
        assert 119_000 < bg.run(raw.pttl(f"{redis_prefix}team:search:tpm:101")) <= 120_000
        assert bg.run(raw.get(f"{redis_prefix}team:search:tpm:101")) == b"5"
    finally:
        bg.run(counters.aclose())
        bg.run(raw.aclose())


def test_unreachable_redis_is_reported_as_unavailable(bg: BackgroundLoop) -> None:
    # No retries: redis-py's default backoff would only make the failure slower.
    nothing_there = redis.asyncio.Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
    counters = RedisRateCounters(nothing_there)
    try:
        with pytest.raises(CountersUnavailable, match="admitting"):
            bg.run(counters.admit([RPM], [1]))
        with pytest.raises(CountersUnavailable, match="adding"):
            bg.run(counters.add([TPM], [1]))
    finally:
        bg.run(counters.aclose())

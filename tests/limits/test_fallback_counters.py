"""What an outage of Redis means for budgets and rate limits (`LocalFallback`), on real Redis servers: the
shared counters go through the process's guard (not asked for a moment after a failure), a policy that
fails closed refuses and one that fails open counts alone (said once a second), and what was counted
alone is paid to Redis once it answers."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from gateway.errors import CountersDown
from gateway.limits.budget_counters import (
    NANO_PER_USD,
    BudgetLine,
    CountersUnavailable,
    InProcessBudgetCounters,
    RedisBudgetCounters,
    Reservation,
)
from gateway.limits.fallback_counters import LocalFallback
from gateway.state.redis_client import open_redis
from gateway.state.redis_guard import RedisGuard
from tests.conftest import free_port


def daily(limit_usd: float = 1.0) -> BudgetLine:
    return BudgetLine(
        "team search daily budget", "team:search:day", int(limit_usd * NANO_PER_USD), time.time() + 3600
    )


def test_after_a_failure_the_shared_counters_are_not_asked_for_a_moment(redis_prefix: str) -> None:
    async def scenario() -> None:
        dead = open_redis(f"redis://127.0.0.1:{free_port()}/0")
        shared = RedisBudgetCounters(dead, redis_prefix)
        fallback = LocalFallback(shared, RedisGuard(retry_after=60.0))
        try:
            with pytest.raises(CountersUnavailable, match="Redis counters unavailable while reserving"):
                await fallback.shared(lambda: shared.reserve([daily()], 1))
            with pytest.raises(CountersUnavailable, match="failed moments ago"):
                await fallback.shared(lambda: shared.reserve([daily()], 1))
        finally:
            await dead.aclose()

    asyncio.run(scenario())


def test_a_policy_that_fails_closed_refuses_and_one_that_fails_open_counts_alone_said_once_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fallback = LocalFallback(InProcessBudgetCounters(), RedisGuard())
    away = CountersUnavailable("Redis does not answer its probe; not asked")
    with pytest.raises(CountersDown, match="Budgets cannot be checked now and the policy fails closed"):
        fallback.fail_closed_or_count_alone("closed", "Budgets", "r1", away)
    with caplog.at_level(logging.WARNING, logger="gateway.state.redis"):
        for number in range(50):
            fallback.fail_closed_or_count_alone("open", "Rate limits", f"r{number}", away)
    assert [record.getMessage() for record in caplog.records] == [
        "rate limits counted by this replica alone (request r0): Redis does not answer its probe; not asked"
    ]


def test_what_was_counted_alone_is_paid_to_redis_once_it_answers(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> list[int]:
        client = open_redis(redis_url)
        shared = RedisBudgetCounters(client, redis_prefix)
        fallback = LocalFallback(shared, RedisGuard())
        try:
            line = daily()
            reserved = await fallback.reserve([line], 30_000_000)
            assert isinstance(reserved, Reservation)
            await fallback.settle(reserved, 20_000_000)
            assert fallback.owes
            await fallback.pay()
            assert not fallback.owes
            return await shared.spent([line])
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == [20_000_000]

"""Counters for while Redis is away: what an outage means for budgets and rate limits.

Under a policy that fails open (`when_unavailable: open`) each replica then counts on its own rather
than not at all: rate limits hold per replica, and a budget holds from the spend this replica last saw
in Redis (`last_known`), so a team at 95% of its budget cannot spend it ten times over during an
outage. What is spent meanwhile is owed to the shared counters and added to them before the next
shared check, once Redis answers again, so the shared totals end up right. Under a policy that fails
closed the request is refused (CountersDown).

When Redis is asked at all is the process's one outage strategy (`state/redis_guard.RedisGuard`):
not for RETRY_SHARED_AFTER seconds after a failure, nor while the background probe has not seen it
answer since, so a Redis that hangs rather than refusing costs its timeout to the requests in flight
when it stops answering, not to those that come after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from gateway.errors import CountersDown
from gateway.limits.budget_counters import (
    BudgetCounters,
    BudgetLine,
    CountersUnavailable,
    Exhausted,
    InProcessBudgetCounters,
    Reservation,
)
from gateway.limits.rate_counters import InProcessRateCounters
from gateway.state.redis_guard import RedisGuard

T = TypeVar("T")


class LocalFallback:
    def __init__(
        self, shared_budgets: BudgetCounters, guard: RedisGuard | Callable[[], bool] | None = None
    ) -> None:
        """`guard` is the process's RedisGuard (a bare `reachable` callable, the probe's word, makes one
        of this fallback's own)."""
        self.budgets = InProcessBudgetCounters()
        self.rates = InProcessRateCounters()
        self._shared = shared_budgets
        # Line key -> (line, nano-dollars counted here and not yet added to the shared counter).
        self._owed: dict[str, tuple[BudgetLine, int]] = {}
        self._paying = asyncio.Lock()
        if guard is None:
            guard = RedisGuard()
        self._guard = guard if isinstance(guard, RedisGuard) else RedisGuard(guard)

    @property
    def owes(self) -> bool:
        return bool(self._owed)

    async def shared(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()` on the shared counters, unless Redis is away (failed less than RETRY_SHARED_AFTER
        ago, or not answering its probe); raises CountersUnavailable either way it cannot be done."""
        return await self._guard.call(attempt, CountersUnavailable)

    def fail_closed_or_count_alone(
        self, when_unavailable: str, what: str, request_id: str, exc: CountersUnavailable
    ) -> None:
        """The shared counters are away: raise CountersDown under a policy that fails closed; otherwise
        (fail open: an outage of Redis must not stop all traffic) say, once a second at most, that this
        replica counts alone. `what` is "Budgets" or "Rate limits"."""
        if when_unavailable == "closed":
            raise CountersDown(f"{what} cannot be checked now and the policy fails closed; retry.") from exc
        self._guard.counted_alone(what.lower(), f"request {request_id}", exc)

    async def reserve(self, lines: Sequence[BudgetLine], amount_nano: int) -> Reservation | Exhausted:
        """As the shared counters would, starting each line from the larger of this process's own count
        and the shared value it last saw."""
        for line in lines:
            self.budgets.raise_to(line, self._shared.last_known(line.key) or 0)
        outcome = await self.budgets.reserve(lines, amount_nano)
        if isinstance(outcome, Reservation):
            self.owe(lines, amount_nano)
        return outcome

    async def settle(self, reservation: Reservation, actual_nano: int) -> None:
        await self.budgets.settle(reservation, actual_nano)
        self.owe(reservation.lines, actual_nano - reservation.amount_nano)

    def owe(self, lines: Sequence[BudgetLine], delta_nano: int) -> None:
        """Remember a change the shared counters have not seen (a local reservation or settlement, or a
        shared reservation whose settlement could not reach Redis)."""
        for line in lines:
            _, owed = self._owed.get(line.key, (line, 0))
            self._owed[line.key] = (line, owed + delta_nano)

    async def pay(self) -> None:
        """Add what is owed to the shared counters; raises CountersUnavailable (keeping the rest owed)
        if Redis is still away."""
        async with self._paying:
            while self._owed:
                key = next(iter(self._owed))
                line, owed = self._owed.pop(key)
                try:
                    await self._shared.settle(Reservation((line,), 0), owed)
                except CountersUnavailable:
                    self.owe((line,), owed)
                    raise

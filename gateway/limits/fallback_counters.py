"""Counters for while Redis is away, under a policy that fails open (`when_unavailable: open`).

Each replica then counts on its own rather than not at all: rate limits hold per replica, and a budget
holds from the spend this replica last saw in Redis (`last_known`), so a team at 95% of its budget cannot
spend it ten times over during an outage. What is spent meanwhile is owed to the shared counters and
added to them before the next shared check, once Redis answers again, so the shared totals end up right.

After Redis fails, requests do not ask it again for `RETRY_SHARED_AFTER` seconds, nor while the
background probe (`state/redis_client.RedisProbe`) has not seen it answer since: a Redis that hangs
rather than refusing costs its timeout to the requests in flight when it stops answering, not to those
that come after.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from gateway.limits.budget_counters import (
    BudgetCounters,
    BudgetLine,
    CountersUnavailable,
    Exhausted,
    InProcessBudgetCounters,
    Reservation,
)
from gateway.limits.rate_counters import InProcessRateCounters

T = TypeVar("T")
# How long after a failure of the shared counters requests count locally without trying Redis again.
RETRY_SHARED_AFTER = 1.0


class LocalFallback:
    def __init__(self, shared_budgets: BudgetCounters, reachable: Callable[[], bool] = lambda: True) -> None:
        self.budgets = InProcessBudgetCounters()
        self.rates = InProcessRateCounters()
        self._shared = shared_budgets
        # Line key -> (line, nano-dollars counted here and not yet added to the shared counter).
        self._owed: dict[str, tuple[BudgetLine, int]] = {}
        self._paying = asyncio.Lock()
        self._skip_shared_until = 0.0
        # The probe's word: False while Redis is known not to answer (no I/O to ask).
        self._reachable = reachable

    @property
    def owes(self) -> bool:
        return bool(self._owed)

    async def shared(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()` on the shared counters, unless they failed less than RETRY_SHARED_AFTER ago; raises
        CountersUnavailable either way it cannot be done."""
        if time.monotonic() < self._skip_shared_until:
            raise CountersUnavailable("Redis counters failed moments ago; not asked again yet")
        if not self._reachable():
            raise CountersUnavailable("Redis does not answer its probe; not asked")
        try:
            return await attempt()
        except CountersUnavailable:
            self._skip_shared_until = time.monotonic() + RETRY_SHARED_AFTER
            raise

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

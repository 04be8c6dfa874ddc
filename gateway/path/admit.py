"""The admit step: rate limits, then the worst case reserved against the caller's budgets, before any
upstream is called; and, once the request has been recorded, the reservation settled at its actual
cost off the response path. Its `Admitted` is its own."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.errors import BudgetExceeded, RateLimited
from gateway.limits.budget_counters import (
    BudgetCounters,
    BudgetLine,
    CountersUnavailable,
    Exhausted,
    InProcessBudgetCounters,
    Reservation,
)
from gateway.limits.budgets import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    BudgetCheck,
    Budgets,
    budget_lines,
    nano,
    prompt_tokens_at_most,
    worst_case_nano,
)
from gateway.limits.fallback_counters import LocalFallback
from gateway.limits.rate_counters import RateCounters
from gateway.limits.rate_limits import RateCheck, rate_lines
from gateway.path.cost import RoutePrices
from gateway.path.decide import Routing
from gateway.policy.schema import Policy
from gateway.state.redis_guard import RedisGuard
from gateway.telemetry.telemetry import Telemetry
from gateway.tokens import TokenCounter
from gateway.wire import ChatRequest

logger = logging.getLogger("gateway.path.admit")
T = TypeVar("T")
# A request waiting for the requests in flight to settle asks again after this, doubling up to the longest.
FIRST_PAUSE_SECONDS = 0.02
LONGEST_PAUSE_SECONDS = 0.25


@dataclass(slots=True)
class Admitted:
    """What one request holds against the limits, from admission to settlement."""

    request: ChatRequest
    team: str | None
    key: str | None
    at: float
    reservation: Reservation | None = None
    rates: RateCheck | None = None
    # Counted by this replica alone, Redis being away (a policy that fails open): settled there too.
    reserved_locally: bool = False
    rates_locally: bool = False
    # Counted once (for a tokens-per-minute limit or a budget), then reused.
    prompt_tokens: int | None = None
    settled: bool = False


@dataclass(frozen=True, slots=True)
class Reroute:
    """A budget is used up and its policy sends the caller to this zero-cost route instead."""

    route: str
    budget: str


class Admission:
    def __init__(
        self,
        prices: RoutePrices,
        tokens: TokenCounter,
        budgets: BudgetCounters,
        rates: RateCounters,
        telemetry: Telemetry,
        guard: RedisGuard | None = None,
    ) -> None:
        self.telemetry = telemetry
        # This replica's own counters, for while shared (Redis) ones are away: the process's one
        # outage strategy (`guard`) says when, without I/O; in-process counters never are.
        self._fallback = LocalFallback(budgets, guard)
        self._prices = prices
        self.tokens = tokens
        self._budgets = budgets
        self._rates = rates
        self._settling: set[asyncio.Task[None]] = set()

    @property
    def local_budgets(self) -> InProcessBudgetCounters:
        """This replica's own budget counters, for while the shared ones are away."""
        return self._fallback.budgets

    async def admit_rates(self, admitted: Admitted, policy: Policy) -> None:
        """Requests and prompt tokens per minute; raises RateLimited with Retry-After."""
        check = rate_lines(policy.rate_limits, admitted.team, admitted.key)
        if check.empty:
            return
        lines = (*check.requests, *check.tokens)
        prompt = self._prompt_tokens(admitted) if check.tokens else 0
        amounts = [1] * len(check.requests) + [prompt] * len(check.tokens)
        try:
            limited = await self._shared(lambda: self._rates.admit(lines, amounts))
        except CountersUnavailable as exc:
            self._fallback.fail_closed_or_count_alone(
                policy.rate_limits.when_unavailable, "Rate limits", admitted.request.request_id, exc
            )
            limited = await self._fallback.rates.admit(lines, amounts)
            admitted.rates_locally = True
        if limited is not None:
            self.telemetry.count_rejection("rate_limit", limited.line.metric, admitted.team)
            retry = max(1, int(min(limited.retry_after, limited.line.window_seconds) + 0.999))
            raise RateLimited(
                f"Rate limit reached: {limited.line.name} is {limited.line.limit}.", retry_after=retry
            )
        admitted.rates = check

    def budget_spent(self, policy: Policy, team: str | None, key: str | None) -> float | None:
        """The largest fraction spent of the caller's budgets as this process last saw them (no I/O):
        the `budget_spent` routing signal. None without budgets."""
        check = budget_lines(policy.budgets, team, key, time.time())
        if check.empty:
            return None
        return max((self._budgets.last_known(line.key) or 0) / line.limit_nano for line in check.lines)

    async def reserve(self, admitted: Admitted, routing: Routing) -> Reroute | None:
        """Reserve the worst case against the caller's budgets before calling, at the costliest of the
        route's candidates (a fallback may answer). Free routes are never held back by a budget.
        Raises BudgetExceeded, or returns the policy's zero-cost route for an exhausted budget."""
        policy = routing.policy.policy
        check = budget_lines(policy.budgets, admitted.team, admitted.key, admitted.at)
        if check.empty:
            return None
        known, longest = [], 0
        for candidate in routing.target.candidates:
            name = candidate.provider.deployment.name
            price = self._prices.price(policy, candidate.route, name)
            if price is not None:
                known.append(price)
            longest = max(longest, self._prices.book.max_output_of(name) or 0)
        costliest = max(known, key=lambda price: price.input + price.output, default=None)
        if costliest is None or (costliest.input == 0 and costliest.output == 0):
            return None
        body = admitted.request.body
        choices = body.get("n")
        limit = _max_tokens(body) or longest or DEFAULT_MAX_OUTPUT_TOKENS
        limit *= choices if isinstance(choices, int) and choices > 1 else 1
        prompt = prompt_tokens_at_most(self.tokens, body, self._prompt_tokens(admitted))
        worst = worst_case_nano(costliest, prompt, limit)
        outcome = await self._reserve_worst(admitted, policy.budgets, check.lines, worst)
        waited_until = time.monotonic() + policy.budgets.wait_for_in_flight_seconds
        pause = FIRST_PAUSE_SECONDS
        while (
            isinstance(outcome, Exhausted)
            and outcome.may_fit_after_settling(worst)
            and time.monotonic() + pause <= waited_until
        ):
            # Full of what requests in flight reserved, not of spend: wait for some to settle.
            await asyncio.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, LONGEST_PAUSE_SECONDS)
            outcome = await self._reserve_worst(admitted, policy.budgets, check.lines, worst)
        if isinstance(outcome, Exhausted):
            self.telemetry.count_rejection("budget", outcome.line.metric, admitted.team)
            return _exhausted(outcome, check)
        admitted.reservation = outcome
        return None

    async def _reserve_worst(
        self, admitted: Admitted, budgets: Budgets, lines: Sequence[BudgetLine], worst: int
    ) -> Reservation | Exhausted:
        if not admitted.reserved_locally:
            try:
                return await self._shared(lambda: self._reserve_shared(lines, worst))
            except CountersUnavailable as exc:
                self._fallback.fail_closed_or_count_alone(
                    budgets.when_unavailable, "Budgets", admitted.request.request_id, exc
                )
                admitted.reserved_locally = True
        return await self._fallback.reserve(lines, worst)

    def settle_later(self, admitted: Admitted, cost_usd: float | None, completion_tokens: int) -> None:
        """Settle the reservation at the recorded cost and count completion tokens off the response
        path; once."""
        if admitted.settled:
            return
        admitted.settled = True
        if admitted.reservation is None and (admitted.rates is None or not admitted.rates.tokens):
            return
        task = asyncio.get_running_loop().create_task(self._settle(admitted, cost_usd, completion_tokens))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, admitted: Admitted, cost_usd: float | None, completion_tokens: int) -> None:
        try:
            if admitted.reservation is not None:
                actual = nano(cost_usd)
                if admitted.reserved_locally:
                    await self._fallback.settle(admitted.reservation, actual)
                else:
                    await self._settle_shared(admitted.reservation, actual)
            if admitted.rates is not None and admitted.rates.tokens:
                lines = admitted.rates.tokens
                amounts = [completion_tokens] * len(lines)
                if admitted.rates_locally:
                    await self._fallback.rates.add(lines, amounts)
                else:
                    await self._shared(lambda: self._rates.add(lines, amounts))
        except CountersUnavailable as exc:
            logger.error("could not settle request %s: %s", admitted.request.request_id, exc)

    async def _shared(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """An operation on the shared counters, through the fallback's guard (not retried for a second
        after a failure)."""
        return await self._fallback.shared(attempt)

    async def _reserve_shared(self, lines: Sequence[BudgetLine], worst: int) -> Reservation | Exhausted:
        if self._fallback.owes:
            await self._fallback.pay()  # Redis is back: first what was spent while it was away
        return await self._budgets.reserve(lines, worst)

    async def _settle_shared(self, reservation: Reservation, actual: int) -> None:
        try:
            await self._shared(lambda: self._budgets.settle(reservation, actual))
        except CountersUnavailable:
            # Reserved in Redis, which left before the answer ended: settled once it is back.
            self._fallback.owe(reservation.lines, actual - reservation.amount_nano)

    def _prompt_tokens(self, admitted: Admitted) -> int:
        if admitted.prompt_tokens is None:
            request = admitted.request
            counted = request.prompt_tokens
            if counted is None:
                counted = self.tokens.count_messages(request.body.get("messages") or ())
            admitted.prompt_tokens = counted
        return admitted.prompt_tokens

    async def aclose(self) -> None:
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        await self._budgets.aclose()
        await self._rates.aclose()


def _exhausted(outcome: Exhausted, check: BudgetCheck) -> Reroute:
    route = check.when_exhausted.get(outcome.line.key)
    if route is not None:
        return Reroute(route, outcome.line.name)
    resets = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(outcome.line.resets_at))
    raise BudgetExceeded(
        f"Budget exhausted: the {outcome.line.name} is used up; it resets at {resets}.",
        retry_after=max(1, int(outcome.line.resets_at - time.time())),
    )


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and value > 0:
            return value
    return None

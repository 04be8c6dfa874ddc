"""The pipeline's accounting step: rate limits and budget reservations before an upstream is called,
and afterwards the spend record (spooled before the answer's last byte leaves), the settlement of
the reservation, and the request's metrics.

Each request carries a `Ticket` from admission to settlement; for a stream, settlement happens when
the stream ends, long after the pipeline returned.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
    budget_lines,
    nano,
    prompt_tokens_at_most,
    worst_case_nano,
)
from gateway.limits.fallback_counters import LocalFallback
from gateway.ledger.ledger import Ledger
from gateway.pricing import FREE, PriceBook, Spend, TokenPrice, per_million, spend_of
from gateway.limits.rate_counters import RateCounters
from gateway.limits.rate_limits import RateCheck, rate_lines
from gateway.ledger.record import CacheOutcome, SpendRecord
from gateway.ledger.redact import answer_text, logged_body
from gateway.ledger.spool import Intent
from gateway.errors import BudgetExceeded, CountersDown, RateLimited
from gateway.policy.schema import Policy
from gateway.providers.base import ChatRequest, Usage
from gateway.telemetry.spans import ChildSpan, RequestSpan
from gateway.telemetry.telemetry import Telemetry
from gateway.tokens import TOKENS_PER_MESSAGE, TokenCounter, content_text

logger = logging.getLogger("gateway.accountant")
T = TypeVar("T")


@dataclass(slots=True)
class Ticket:
    """One request's accounting, filled in as it goes."""

    request: ChatRequest
    team: str | None
    key: str | None
    at: float
    started: float
    policy: Policy | None = None
    policy_name: str | None = None
    route: str | None = None
    rule: str | None = None
    deployment: str | None = None
    signals: Mapping[str, Any] = field(default_factory=dict)
    cache: CacheOutcome = "miss"
    upstream_seconds: float | None = None
    reservation: Reservation | None = None
    rates: RateCheck | None = None
    # Counted by this replica alone, Redis being away (a policy that fails open): settled there too.
    reserved_locally: bool = False
    rates_locally: bool = False
    record: SpendRecord | None = None
    settled: bool = False
    span: RequestSpan | None = None
    upstream_span: ChildSpan | None = None
    # Counted once (for a tokens-per-minute limit or a budget), then reused.
    prompt_tokens: int | None = None
    # Priced once when the answer came with its usage (the cost headers), reused by the record.
    spend: Spend | None = None
    # The deployment being called now (set per attempt), and the record id its intent was spooled
    # under: the record written when the request ends takes the same id.
    in_flight: str | None = None
    record_id: str | None = None


@dataclass(frozen=True, slots=True)
class Reroute:
    """A budget is used up and its policy sends the caller to this zero-cost route instead."""

    route: str
    budget: str


class Accountant:
    def __init__(
        self,
        prices: PriceBook,
        tokens: TokenCounter,
        budgets: BudgetCounters,
        rates: RateCounters,
        ledger: Ledger | None = None,
        telemetry: Telemetry | None = None,
        shared_reachable: Callable[[], bool] = lambda: True,
    ) -> None:
        self.telemetry = telemetry
        # This replica's own counters, for while shared (Redis) ones are away (`shared_reachable`
        # says when they are known to be, without I/O); in-process counters never are.
        self._fallback = LocalFallback(budgets, shared_reachable)
        # When "counted by this replica alone" was last logged: once a second, not once a request.
        self._warned_alone_at = 0.0
        self.prices = prices
        self.tokens = tokens
        self._budgets = budgets
        self._rates = rates
        self.ledger = ledger
        self._settling: set[asyncio.Task[None]] = set()
        # Record ids: random per process, then a counter (urandom per record cost ~5 µs).
        self._id_prefix = os.urandom(8).hex() + "-"
        self._ids = itertools.count()

    @property
    def local_budgets(self) -> InProcessBudgetCounters:
        """This replica's own budget counters, for while the shared ones are away."""
        return self._fallback.budgets

    # ---- before the upstream call --------------------------------------------------------------

    async def admit_rates(self, ticket: Ticket, policy: Policy) -> None:
        """Requests and prompt tokens per minute; raises RateLimited with Retry-After."""
        check = rate_lines(policy.rate_limits, ticket.team, ticket.key)
        if check.empty:
            return
        lines = (*check.requests, *check.tokens)
        prompt = self._prompt_tokens(ticket) if check.tokens else 0
        amounts = [1] * len(check.requests) + [prompt] * len(check.tokens)
        try:
            limited = await self._shared(lambda: self._rates.admit(lines, amounts))
        except CountersUnavailable as exc:
            self._fail_closed_or_count_alone(policy.rate_limits.when_unavailable, "Rate limits", ticket, exc)
            limited = await self._fallback.rates.admit(lines, amounts)
            ticket.rates_locally = True
        if limited is not None:
            if self.telemetry is not None:
                self.telemetry.count_rejection("rate_limit", limited.line.metric, ticket.team)
            retry = max(1, int(min(limited.retry_after, limited.line.window_seconds) + 0.999))
            raise RateLimited(
                f"Rate limit reached: {limited.line.name} is {limited.line.limit}.", retry_after=retry
            )
        ticket.rates = check

    def budget_spent(self, policy: Policy, team: str | None, key: str | None) -> float | None:
        """The largest fraction spent of the caller's budgets as this process last saw them (no I/O):
        the `budget_spent` routing signal. None without budgets."""
        check = budget_lines(policy.budgets, team, key, time.time())
        if check.empty:
            return None
        return max((self._budgets.last_known(line.key) or 0) / line.limit_nano for line in check.lines)

    async def reserve(
        self, ticket: Ticket, policy: Policy, prices: list[TokenPrice | None], max_output: int | None
    ) -> Reroute | None:
        """Reserve the worst case against the caller's budgets before calling. `prices` are those of
        the route's candidates (a fallback may answer). Free routes are never held back by a budget.
        Raises BudgetExceeded, or returns the policy's zero-cost route for an exhausted budget."""
        check = budget_lines(policy.budgets, ticket.team, ticket.key, ticket.at)
        if check.empty:
            return None
        known = [price for price in prices if price is not None]
        costliest = max(known, key=lambda price: price.input + price.output, default=None)
        if costliest is None or (costliest.input == 0 and costliest.output == 0):
            return None
        choices = ticket.request.body.get("n")
        limit = _max_tokens(ticket.request.body) or max_output or DEFAULT_MAX_OUTPUT_TOKENS
        limit *= choices if isinstance(choices, int) and choices > 1 else 1
        prompt = prompt_tokens_at_most(self.tokens, ticket.request.body, self._prompt_tokens(ticket))
        worst = worst_case_nano(costliest, prompt, limit)
        try:
            outcome = await self._shared(lambda: self._reserve_shared(check.lines, worst))
        except CountersUnavailable as exc:
            self._fail_closed_or_count_alone(policy.budgets.when_unavailable, "Budgets", ticket, exc)
            outcome = await self._fallback.reserve(check.lines, worst)
            ticket.reserved_locally = True
        if isinstance(outcome, Exhausted):
            if self.telemetry is not None:
                self.telemetry.count_rejection("budget", outcome.line.metric, ticket.team)
            return _exhausted(outcome, check)
        ticket.reservation = outcome
        return None

    async def _shared(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """An operation on the shared counters, through the fallback's guard (not retried for a second
        after a failure)."""
        return await self._fallback.shared(attempt)

    async def _reserve_shared(self, lines: Sequence[BudgetLine], worst: int) -> Reservation | Exhausted:
        if self._fallback.owes:
            await self._fallback.pay()  # Redis is back: first what was spent while it was away
        return await self._budgets.reserve(lines, worst)

    def _prompt_tokens(self, ticket: Ticket) -> int:
        if ticket.prompt_tokens is None:
            ticket.prompt_tokens = self.tokens.count_messages(ticket.request.body.get("messages") or ())
        return ticket.prompt_tokens

    # ---- after it --------------------------------------------------------------------------------

    def spend_price(self, policy: Policy | None, route: str | None, deployment: str) -> TokenPrice | None:
        """The route's own price when the policy sets one, else the deployment's."""
        return _route_price(policy, route) or self.prices.price_of(deployment)

    def spend(
        self,
        policy: Policy | None,
        route: str | None,
        deployment: str | None,
        usage: Usage | None,
        cache: CacheOutcome = "miss",
    ) -> Spend | None:
        """The cost at the answering route's price, and at the policy's reference route's. An answer
        from the cache cost nothing; what it saved is what the reference route charges for its tokens."""
        if usage is None:
            return None
        price = FREE if cache != "miss" else self.spend_price(policy, route, deployment or "")
        reference = None
        if policy is not None and policy.reference_route is not None:
            spec = policy.routes[policy.reference_route]
            first = spec.deployments[0] if spec.deployments else next(iter(spec.split or {}))
            reference = _route_price(policy, policy.reference_route) or self.prices.price_of(first)
        return spend_of(price, reference, usage.prompt_tokens, usage.completion_tokens, _cached(usage))

    def intend(self, ticket: Ticket, deployment: str) -> None:
        """Spool what to record if this process dies while `deployment` is called: the prompt was
        sent, so its estimated cost at the deployment's price (status 500, `interrupted`). Written
        before every upstream call, so kept to a few µs: no tokenizer, no record object."""
        if self.ledger is None:
            return
        ticket.record_id = self._new_id()
        body = ticket.request.body
        prompt = ticket.prompt_tokens if ticket.prompt_tokens is not None else _rough_prompt_tokens(body)
        price = self.spend_price(ticket.policy, ticket.route, deployment)
        priced = self.prices.deployment(deployment)
        fields = {
            "id": ticket.record_id, "request_id": ticket.request.request_id, "at": ticket.at,
            "team": ticket.team, "key_id": ticket.key, "policy": ticket.policy_name, "route": ticket.route,
            "rule": ticket.rule, "deployment": deployment, "model": priced.model if priced else None,
            "stream": ticket.request.stream, "status": 500, "error": "interrupted", "prompt_tokens": prompt,
            "estimated": True, "cost_usd": prompt * price.input if price is not None else None,
        }  # fmt: skip
        self.ledger.intend(Intent(fields))

    def _new_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):x}"

    def account(
        self,
        ticket: Ticket,
        *,
        status: int,
        usage: Usage | None = None,
        error: str | None = None,
        ttfb_seconds: float | None = None,
        answer: bytes | None = None,
        interrupted: bool = False,
    ) -> SpendRecord:
        """Write the request's spend record to the spool (before the answer's end is sent); once.
        `interrupted`: the call was cut off (the client left): its prompt was sent, and is paid for."""
        if ticket.record is not None:
            return ticket.record
        if interrupted and usage is None and ticket.deployment is None and ticket.in_flight is not None:
            ticket.deployment = ticket.in_flight
            prompt = self.tokens.count_messages(ticket.request.body.get("messages") or ())
            usage = Usage(prompt, 0, prompt, estimated=True)
        now = time.perf_counter()
        spend = ticket.spend
        if spend is None and (ticket.deployment is not None or ticket.cache != "miss"):
            spend = self.spend(ticket.policy, ticket.route, ticket.deployment, usage, ticket.cache)
        deployment = self.prices.deployment(ticket.deployment) if ticket.deployment else None
        upstream_ms = ticket.upstream_seconds * 1000 if ticket.upstream_seconds is not None else None
        latency_ms = (now - ticket.started) * 1000
        details = usage.details if usage is not None else {}
        record = SpendRecord(
            id=ticket.record_id or self._new_id(),
            request_id=ticket.request.request_id,
            at=ticket.at,
            team=ticket.team,
            key_id=ticket.key,
            policy=ticket.policy_name,
            route=ticket.route,
            rule=ticket.rule,
            deployment=ticket.deployment,
            model=deployment.model if deployment is not None else None,
            stream=ticket.request.stream,
            status=status,
            error=error,
            cache=ticket.cache,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            cached_tokens=_cached(usage),
            reasoning_tokens=int(
                (details.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
            ),
            estimated=bool(usage and usage.estimated),
            # Nothing answered, nothing spent; an answer without usage has an unknown cost.
            cost_usd=spend.cost_usd if spend else (0.0 if ticket.deployment is None else None),
            reference_usd=spend.reference_usd if spend else None,
            latency_ms=latency_ms,
            ttfb_ms=ttfb_seconds * 1000 if ttfb_seconds is not None else None,
            upstream_ms=upstream_ms,
            overhead_ms=latency_ms - upstream_ms if upstream_ms is not None else None,
            signals=ticket.signals,
        )
        if ticket.policy is not None and ticket.policy.log_bodies:
            text = answer_text(answer) if answer is not None else None
            record.body = logged_body(ticket.request.body.get("messages") or (), text)
        ticket.record = record
        if self.ledger is not None:
            self.ledger.record(record)
        if ticket.upstream_span is not None:
            ticket.upstream_span.end(error if status >= 400 else None)
        if ticket.span is not None:
            ticket.span.finish(record)
        if self.telemetry is not None:
            self.telemetry.observe(record)
        return record

    def settle_later(self, ticket: Ticket) -> None:
        """Settle the reservation and count completion tokens off the response path."""
        if ticket.settled:
            return
        ticket.settled = True
        if ticket.reservation is None and (ticket.rates is None or not ticket.rates.tokens):
            return
        task = asyncio.get_running_loop().create_task(self._settle(ticket))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, ticket: Ticket) -> None:
        record = ticket.record
        try:
            if ticket.reservation is not None:
                actual = nano(record.cost_usd) if record is not None else 0
                if ticket.reserved_locally:
                    await self._fallback.settle(ticket.reservation, actual)
                else:
                    await self._settle_shared(ticket.reservation, actual)
            if ticket.rates is not None and ticket.rates.tokens and record is not None:
                lines = ticket.rates.tokens
                rates = self._fallback.rates if ticket.rates_locally else self._rates
                await rates.add(lines, [record.completion_tokens] * len(lines))
        except CountersUnavailable as exc:
            logger.error("could not settle request %s: %s", ticket.request.request_id, exc)

    async def _settle_shared(self, reservation: Reservation, actual: int) -> None:
        try:
            await self._shared(lambda: self._budgets.settle(reservation, actual))
        except CountersUnavailable:
            # Reserved in Redis, which left before the answer ended: settled once it is back.
            self._fallback.owe(reservation.lines, actual - reservation.amount_nano)

    def _fail_closed_or_count_alone(
        self, when_unavailable: str, what: str, ticket: Ticket, exc: CountersUnavailable
    ) -> None:
        """The shared counters are away: raise CountersDown under a policy that fails closed; otherwise
        (fail open: an outage of Redis must not stop all traffic) say, once a second at most, that this
        replica counts alone."""
        if when_unavailable == "closed":
            raise CountersDown(f"{what} cannot be checked now and the policy fails closed; retry.") from exc
        now = time.monotonic()
        if now - self._warned_alone_at >= 1.0:
            self._warned_alone_at = now
            logger.warning(
                "%s counted by this replica alone (request %s): %s",
                what.lower(),
                ticket.request.request_id,
                exc,
            )

    async def aclose(self) -> None:
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        await self._budgets.aclose()
        await self._rates.aclose()
        if self.ledger is not None:
            await self.ledger.close()
        if self.telemetry is not None:
            await self.telemetry.aclose()


def _exhausted(outcome: Exhausted, check: BudgetCheck) -> Reroute:
    route = check.when_exhausted.get(outcome.line.key)
    if route is not None:
        return Reroute(route, outcome.line.name)
    resets = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(outcome.line.resets_at))
    error = BudgetExceeded(
        f"Budget exhausted: the {outcome.line.name} is used up; it resets at {resets}.",
        retry_after=max(1, int(outcome.line.resets_at - time.time())),
    )
    raise error


def _rough_prompt_tokens(body: Mapping[str, Any]) -> int:
    """About four characters a token: an estimate for the record of an interrupted request, without
    running the tokenizer on every request."""
    messages = body.get("messages") or ()
    characters = sum(len(content_text(m.get("content"))) for m in messages if isinstance(m, dict))
    return characters // 4 + 1 + TOKENS_PER_MESSAGE * len(messages)


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _cached(usage: Usage | None) -> int:
    if usage is None:
        return 0
    return int((usage.details.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)


def _route_price(policy: Policy | None, route: str | None) -> TokenPrice | None:
    spec = policy.routes.get(route) if policy is not None and route is not None else None
    if spec is None or spec.price is None:
        return None
    return per_million(spec.price.input_per_mtok, spec.price.output_per_mtok)

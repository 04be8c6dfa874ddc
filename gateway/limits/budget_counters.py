"""Spend budgets as atomic counters: reserve an estimate before a request, settle the actual cost after.

Amounts are integer nano-USD, so sums never drift. `InProcessBudgetCounters` is the embedded default
(one process, one event loop: no method awaits between its check and its write, so each call is
atomic). `RedisBudgetCounters` shares the counters between gateway processes; each call is one Lua
script, so check-and-add stays atomic across all of them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio

from gateway.state.redis_guard import REDIS_ERRORS, RedisUnavailable

NANO_PER_USD = 1_000_000_000
# A period's counter outlives its end by a week: late settlements still land and reports can read it.
KEEP_AFTER_RESET = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class BudgetLine:
    # For people, e.g. "team search daily budget".
    name: str
    # Storage key with the period in it, e.g. "team:search:day:2026-11-26"; implementations add a prefix.
    key: str
    limit_nano: int
    # Unix time at which the period ends; the counter may be dropped some time after it.
    resets_at: float
    # A metric label for it: bounded and free of key ids and amounts, e.g. "team daily budget".
    metric: str = ""


@dataclass(frozen=True, slots=True)
class Reservation:
    lines: tuple[BudgetLine, ...]
    amount_nano: int


@dataclass(frozen=True, slots=True)
class Exhausted:
    # The first line that could not take the amount.
    line: BudgetLine
    # What that line had spent and reserved at that moment.
    spent_nano: int
    # The part of `spent_nano` reserved by requests still in flight, which settle at or below it.
    held_nano: int = 0

    def may_fit_after_settling(self, amount_nano: int) -> bool:
        """Whether the amount would fit once the requests in flight have settled: the line is full of
        reservations, not of spend, so waiting for them may admit it."""
        return self.held_nano > 0 and self.spent_nano - self.held_nano + amount_nano <= self.line.limit_nano


class CountersUnavailable(RedisUnavailable):
    """The shared counters could not be reached, answered with an error, or were not asked (Redis is
    known to be away: `state/redis_guard`); the message says which."""


class BudgetCounters(Protocol):
    async def reserve(self, lines: Sequence[BudgetLine], amount_nano: int) -> Reservation | Exhausted:
        """Atomically across all lines: if every line has spent + amount <= limit, add the amount to
        every line (and to what it holds for requests in flight) and return a Reservation; otherwise
        change nothing and return Exhausted for the first line that failed. A line already at or over
        its limit is exhausted even for amount 0."""
        ...

    async def settle(self, reservation: Reservation, actual_nano: int) -> None:
        """Replace the reserved amount by the actual cost on every line (release is `settle(r, 0)`), and
        release what the reservation held. Never rejects: real spend is recorded even above the limit."""
        ...

    async def spent(self, lines: Sequence[BudgetLine]) -> list[int]:
        """Spent plus reserved per line, 0 for a line never charged."""
        ...

    def last_known(self, key: str) -> int | None:
        """No I/O: the line's value as this process last saw it (None if never), for routing signals
        that must not wait on Redis."""
        ...

    async def aclose(self) -> None: ...


def check_distinct(keys: Sequence[str]) -> None:
    """A key twice in one call would be checked once but charged twice: that is a caller's bug."""
    if len(set(keys)) != len(keys):
        raise ValueError(f"the same counter key appears twice: {sorted(keys)}")


@contextmanager
def redis_errors_as_unavailable(doing: str) -> Iterator[None]:
    """Translate what redis-py raises into the one error callers handle."""
    try:
        yield
    except REDIS_ERRORS as exc:
        raise CountersUnavailable(f"Redis counters unavailable while {doing}: {exc!r}") from exc


class PeriodValues:
    """Values by line key, remembering when each line's period ends; lines whose period ended more
    than a week ago are dropped now and then (a scan at most every `sweep_every` seconds)."""

    def __init__(self, sweep_every: float) -> None:
        self._values: dict[str, int] = {}
        self._resets_at: dict[str, float] = {}
        self._sweep_every = sweep_every
        self._next_sweep = 0.0

    def get(self, key: str) -> int | None:
        return self._values.get(key)

    def set(self, line: BudgetLine, value: int) -> None:
        self._values[line.key] = value
        self._resets_at[line.key] = line.resets_at

    def sweep_now_and_then(self) -> None:
        now = time.time()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._sweep_every
        cutoff = now - KEEP_AFTER_RESET
        for key in [key for key, resets_at in self._resets_at.items() if resets_at < cutoff]:
            del self._values[key], self._resets_at[key]


class InProcessBudgetCounters:
    """The embedded default: counters in this process's memory, lost on restart."""

    def __init__(self, sweep_every: float = 3600.0) -> None:
        self._values = PeriodValues(sweep_every)
        self._held = PeriodValues(sweep_every)

    async def reserve(self, lines: Sequence[BudgetLine], amount_nano: int) -> Reservation | Exhausted:
        _check(lines, amount_nano)
        self._values.sweep_now_and_then()
        self._held.sweep_now_and_then()
        for line in lines:
            spent = self._values.get(line.key) or 0
            if spent >= line.limit_nano or spent + amount_nano > line.limit_nano:
                return Exhausted(line, spent, self._held.get(line.key) or 0)
        for line in lines:
            self._values.set(line, (self._values.get(line.key) or 0) + amount_nano)
            self._held.set(line, (self._held.get(line.key) or 0) + amount_nano)
        return Reservation(tuple(lines), amount_nano)

    def raise_to(self, line: BudgetLine, value_nano: int) -> None:
        """Make the line's value at least `value_nano` (a value seen elsewhere, e.g. in Redis)."""
        if (self._values.get(line.key) or 0) < value_nano:
            self._values.set(line, value_nano)

    async def settle(self, reservation: Reservation, actual_nano: int) -> None:
        self._values.sweep_now_and_then()
        delta = actual_nano - reservation.amount_nano
        for line in reservation.lines:
            self._values.set(line, (self._values.get(line.key) or 0) + delta)
            self._held.set(line, max(0, (self._held.get(line.key) or 0) - reservation.amount_nano))

    async def spent(self, lines: Sequence[BudgetLine]) -> list[int]:
        return [self._values.get(line.key) or 0 for line in lines]

    def last_known(self, key: str) -> int | None:
        return self._values.get(key)

    async def aclose(self) -> None:
        return None


# Each line has two keys: its value (spent plus reserved) and what it holds for requests in flight.
# KEYS: the lines' value keys, then their held keys. ARGV: amount, then each line's limit, then each
# line's expiry (unix seconds). Returns {1, new value per line} or {0, index of the first exhausted
# line (1-based), its value, what it holds}.
RESERVE_SCRIPT = """
local n = #KEYS / 2
local amount = tonumber(ARGV[1])
for i = 1, n do
    local spent = tonumber(redis.call('GET', KEYS[i]) or '0')
    local limit = tonumber(ARGV[1 + i])
    if spent >= limit or spent + amount > limit then
        return {0, i, spent, tonumber(redis.call('GET', KEYS[n + i]) or '0')}
    end
end
local result = {1}
for i = 1, n do
    result[i + 1] = redis.call('INCRBY', KEYS[i], amount)
    redis.call('INCRBY', KEYS[n + i], amount)
    if redis.call('TTL', KEYS[i]) == -1 then
        redis.call('EXPIREAT', KEYS[i], ARGV[1 + n + i])
    end
    if redis.call('TTL', KEYS[n + i]) == -1 then
        redis.call('EXPIREAT', KEYS[n + i], ARGV[1 + n + i])
    end
end
return result
"""

# KEYS: the lines' value keys, then their held keys. ARGV: delta, the reserved amount to release,
# then each line's expiry. Returns the new value per line.
SETTLE_SCRIPT = """
local n = #KEYS / 2
local result = {}
for i = 1, n do
    result[i] = redis.call('INCRBY', KEYS[i], ARGV[1])
    if redis.call('TTL', KEYS[i]) == -1 then
        redis.call('EXPIREAT', KEYS[i], ARGV[2 + i])
    end
    if tonumber(ARGV[2]) > 0 and redis.call('DECRBY', KEYS[n + i], ARGV[2]) < 0 then
        redis.call('SET', KEYS[n + i], 0, 'KEEPTTL')
    end
end
return result
"""


class RedisBudgetCounters:
    """Counters shared through Redis. Owns `client`: `aclose` closes it."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str = "gw:budget:") -> None:
        self._client = client
        self._prefix = prefix
        # What each line holds for requests in flight, e.g. "gw:budget-held:team:search:day:2026-11-26".
        self._held_prefix = prefix.rstrip(":") + "-held:"
        self._reserve = client.register_script(RESERVE_SCRIPT)
        self._settle = client.register_script(SETTLE_SCRIPT)
        self._seen = PeriodValues(sweep_every=3600.0)

    async def reserve(self, lines: Sequence[BudgetLine], amount_nano: int) -> Reservation | Exhausted:
        _check(lines, amount_nano)
        keys = [line.key for line in lines]
        if not lines:
            return Reservation((), amount_nano)
        args = [amount_nano, *(line.limit_nano for line in lines), *(_expires_at(line) for line in lines)]
        with redis_errors_as_unavailable(f"reserving budget on {keys}"):
            result = await self._reserve(keys=self._keys(lines), args=args)
        self._seen.sweep_now_and_then()
        if result[0] == 0:
            line = lines[int(result[1]) - 1]
            self._seen.set(line, int(result[2]))
            return Exhausted(line, int(result[2]), int(result[3]))
        for line, value in zip(lines, result[1:], strict=True):
            self._seen.set(line, int(value))
        return Reservation(tuple(lines), amount_nano)

    async def settle(self, reservation: Reservation, actual_nano: int) -> None:
        lines = reservation.lines
        if not lines:
            return
        delta = actual_nano - reservation.amount_nano
        args = [delta, reservation.amount_nano, *(_expires_at(line) for line in lines)]
        with redis_errors_as_unavailable(f"settling budget on {[line.key for line in lines]}"):
            result = await self._settle(keys=self._keys(lines), args=args)
        self._seen.sweep_now_and_then()
        for line, value in zip(lines, result, strict=True):
            self._seen.set(line, int(value))

    async def spent(self, lines: Sequence[BudgetLine]) -> list[int]:
        if not lines:
            return []
        with redis_errors_as_unavailable(f"reading budget on {[line.key for line in lines]}"):
            values = await self._client.mget([self._prefix + line.key for line in lines])
        spent = [int(value) if value is not None else 0 for value in values]
        for line, value in zip(lines, spent, strict=True):
            self._seen.set(line, value)
        return spent

    def last_known(self, key: str) -> int | None:
        return self._seen.get(key)

    def _keys(self, lines: Sequence[BudgetLine]) -> list[str]:
        return [self._prefix + line.key for line in lines] + [self._held_prefix + line.key for line in lines]

    async def aclose(self) -> None:
        await self._client.aclose()


def _expires_at(line: BudgetLine) -> int:
    return int(line.resets_at + KEEP_AFTER_RESET)


def _check(lines: Sequence[BudgetLine], amount_nano: int) -> None:
    if amount_nano < 0:
        raise ValueError(f"cannot reserve a negative amount ({amount_nano}); settle returns money")
    check_distinct([line.key for line in lines])

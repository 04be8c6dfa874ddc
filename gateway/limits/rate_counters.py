"""Requests and tokens per window as atomic counters, with the sliding-window-counter approximation.

Each line counts into fixed windows (index = floor(now / window)); a line's estimate is the current
window's count plus the previous window's count weighted by the share of it still inside the sliding
window. That costs two counters per line, not a log of every request. `InProcessRateCounters` is the
embedded default (atomic because it never awaits mid-call); `RedisRateCounters` runs each call as one
Lua script, with `now` passed in by the caller rather than read from Redis so tests can steer time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio

from gateway.limits.budget_counters import CountersUnavailable as CountersUnavailable
from gateway.limits.budget_counters import check_distinct, redis_errors_as_unavailable

# Forgotten lines (a removed team, a renamed key) are dropped from memory at most this often.
SWEEP_EVERY = 600.0


@dataclass(frozen=True, slots=True)
class RateLine:
    # For people, e.g. "team search requests per minute".
    name: str
    # e.g. "team:search:rpm"; implementations add a prefix and the window index.
    key: str
    # Per window.
    limit: int
    window_seconds: float = 60.0
    # A metric label for it: bounded and free of key ids, e.g. "key requests per minute".
    metric: str = ""


@dataclass(frozen=True, slots=True)
class Limited:
    line: RateLine
    # Seconds until the line would admit the amount if nothing else arrived; math.inf when the amount
    # is larger than the limit itself. Rounding up for a Retry-After header is the caller's business.
    retry_after: float


class RateCounters(Protocol):
    async def admit(
        self, lines: Sequence[RateLine], amounts: Sequence[int], now: float | None = None
    ) -> Limited | None:
        """Atomically across all lines: if every line's estimate + amount <= limit, count the amounts
        and return None; otherwise count nothing and return Limited for the first line over.
        `now` (unix time) is for tests; the default is time.time()."""
        ...

    async def add(self, lines: Sequence[RateLine], amounts: Sequence[int], now: float | None = None) -> None:
        """Count usage known only afterwards (completion tokens) without checking any limit."""
        ...

    async def aclose(self) -> None: ...


def window_of(line: RateLine, now: float) -> tuple[int, float]:
    """The fixed window `now` falls in, and the share of it already elapsed (0 <= share < 1)."""
    position = now / line.window_seconds
    index = math.floor(position)
    return index, position - index


def fits(line: RateLine, previous: int, current: int, elapsed: float, amount: int) -> bool:
    # The Lua scripts repeat this expression operation for operation, so both agree to the last bit.
    return previous * (1.0 - elapsed) + current + amount <= line.limit


def retry_after(line: RateLine, previous: int, current: int, elapsed: float, amount: int) -> float:
    """When the estimate would have fallen far enough, assuming no other traffic meanwhile."""
    room = line.limit - amount
    if room < 0:
        return math.inf
    window = line.window_seconds
    if current <= room:
        if previous == 0:
            return 0.0
        # Only the previous window's fading share is in the way: wait until its weight drops to this.
        weight = (room - current) / previous
        return max(0.0, (1.0 - elapsed - weight) * window)
    # This window alone is too full: wait for it to become the previous one, then for it to fade.
    return (1.0 - elapsed) * window + (1.0 - room / current) * window


def _check(lines: Sequence[RateLine], amounts: Sequence[int]) -> None:
    if len(amounts) != len(lines):
        raise ValueError(f"{len(lines)} rate lines but {len(amounts)} amounts")
    check_distinct([line.key for line in lines])


class InProcessRateCounters:
    """The embedded default: windows in this process's memory."""

    def __init__(self) -> None:
        # line key -> window index -> count; only the two newest windows are kept.
        self._counts: dict[str, dict[int, int]] = {}
        self._window_seconds: dict[str, float] = {}
        self._next_sweep = 0.0

    async def admit(
        self, lines: Sequence[RateLine], amounts: Sequence[int], now: float | None = None
    ) -> Limited | None:
        _check(lines, amounts)
        if any(amount < 0 for amount in amounts):
            raise ValueError(f"cannot admit a negative amount: {list(amounts)}")
        now = time.time() if now is None else now
        for line, amount in zip(lines, amounts, strict=True):
            index, elapsed = window_of(line, now)
            counts = self._counts.get(line.key, {})
            previous, current = counts.get(index - 1, 0), counts.get(index, 0)
            if not fits(line, previous, current, elapsed, amount):
                return Limited(line, retry_after(line, previous, current, elapsed, amount))
        self._count(lines, amounts, now)
        return None

    async def add(self, lines: Sequence[RateLine], amounts: Sequence[int], now: float | None = None) -> None:
        _check(lines, amounts)
        self._count(lines, amounts, time.time() if now is None else now)

    async def aclose(self) -> None:
        return None

    def _count(self, lines: Sequence[RateLine], amounts: Sequence[int], now: float) -> None:
        self._sweep_now_and_then(now)
        for line, amount in zip(lines, amounts, strict=True):
            index, _ = window_of(line, now)
            counts = self._counts.setdefault(line.key, {})
            counts[index] = counts.get(index, 0) + amount
            for old in [old for old in counts if old < index - 1]:
                del counts[old]
            self._window_seconds[line.key] = line.window_seconds

    def _sweep_now_and_then(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY
        for key in list(self._counts):
            if max(self._counts[key]) < math.floor(now / self._window_seconds[key]) - 1:
                del self._counts[key], self._window_seconds[key]


# KEYS: per line, its current window's key then its previous window's key.
# ARGV: per line, limit, amount, share of the current window elapsed, expiry in milliseconds.
# Returns {0} when admitted, else {index of the first line over (1-based), previous count, current count}.
ADMIT_SCRIPT = """
local n = #KEYS / 2
for i = 1, n do
    local current = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
    local previous = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
    local limit = tonumber(ARGV[4 * i - 3])
    local amount = tonumber(ARGV[4 * i - 2])
    local elapsed = tonumber(ARGV[4 * i - 1])
    if not (previous * (1.0 - elapsed) + current + amount <= limit) then
        return {i, previous, current}
    end
end
for i = 1, n do
    redis.call('INCRBY', KEYS[2 * i - 1], ARGV[4 * i - 2])
    if redis.call('PTTL', KEYS[2 * i - 1]) == -1 then
        redis.call('PEXPIRE', KEYS[2 * i - 1], ARGV[4 * i])
    end
end
return {0}
"""

# KEYS: each line's current window key. ARGV: per line, amount and expiry in milliseconds.
ADD_SCRIPT = """
for i = 1, #KEYS do
    redis.call('INCRBY', KEYS[i], ARGV[2 * i - 1])
    if redis.call('PTTL', KEYS[i]) == -1 then
        redis.call('PEXPIRE', KEYS[i], ARGV[2 * i])
    end
end
return 0
"""


class RedisRateCounters:
    """Windows shared through Redis; a window's key lives two windows (relative to Redis's own clock,
    so a test's `now` never expires it early). Owns `client`: `aclose` closes it."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str = "gw:rate:") -> None:
        self._client = client
        self._prefix = prefix
        self._admit = client.register_script(ADMIT_SCRIPT)
        self._add = client.register_script(ADD_SCRIPT)

    async def admit(
        self, lines: Sequence[RateLine], amounts: Sequence[int], now: float | None = None
    ) -> Limited | None:
        _check(lines, amounts)
        if any(amount < 0 for amount in amounts):
            raise ValueError(f"cannot admit a negative amount: {list(amounts)}")
        if not lines:
            return None
        now = time.time() if now is None else now
        keys: list[str] = []
        args: list[int | float] = []
        elapsed_by_line: list[float] = []
        for line, amount in zip(lines, amounts, strict=True):
            index, elapsed = window_of(line, now)
            keys += [self._key(line, index), self._key(line, index - 1)]
            args += [line.limit, amount, elapsed, _expiry_ms(line)]
            elapsed_by_line.append(elapsed)
        with redis_errors_as_unavailable(f"admitting on {[line.key for line in lines]}"):
            result = await self._admit(keys=keys, args=args)
        if result[0] == 0:
            return None
        over = int(result[0]) - 1
        previous, current = int(result[1]), int(result[2])
        line = lines[over]
        return Limited(line, retry_after(line, previous, current, elapsed_by_line[over], amounts[over]))

    async def add(self, lines: Sequence[RateLine], amounts: Sequence[int], now: float | None = None) -> None:
        _check(lines, amounts)
        if not lines:
            return
        now = time.time() if now is None else now
        keys = [self._key(line, window_of(line, now)[0]) for line in lines]
        args: list[int] = []
        for line, amount in zip(lines, amounts, strict=True):
            args += [amount, _expiry_ms(line)]
        with redis_errors_as_unavailable(f"adding to {[line.key for line in lines]}"):
            await self._add(keys=keys, args=args)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _key(self, line: RateLine, index: int) -> str:
        return f"{self._prefix}{line.key}:{index}"


def _expiry_ms(line: RateLine) -> int:
    return math.ceil(2 * line.window_seconds * 1000)

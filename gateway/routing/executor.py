"""Try a request's candidates in order, with retries, back-off and circuit breakers, within one deadline."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.capacity.capacity import Capacity, NoCapacityLimits
from gateway.capacity.gate import Slot
from gateway.capacity.priority import INTERACTIVE
from gateway.errors import GatewayError, Overloaded, RateLimited, UpstreamTimeout, UpstreamUnavailable
from gateway.providers.base import Provider
from gateway.routing.catalog import Target
from gateway.routing.health import DeploymentHealth
from gateway.wire import Deadline

T = TypeVar("T")


@dataclass(slots=True)
class Outcome(Generic[T]):
    result: T
    route: str
    deployment: str
    # Set when the answer came from another deployment than the first candidate: why, in one line.
    fallback: str | None
    # Time spent waiting on upstreams and between retries: not the gateway's own overhead.
    upstream_seconds: float
    attempts: int
    # The answering deployment's place (capacity), still held when `hold` was asked (a stream runs
    # on after the call returns), else released; None when the deployment has no capacity limit.
    slot: Slot | None = None
    # Seconds spent waiting for a place in deployments' queues.
    queued_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float = 0.1
    cap: float = 2.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform between 0 and the capped exponential step."""
        return rng.uniform(0, min(self.cap, self.base * 2**attempt))


class RouteExecutor:
    def __init__(
        self,
        health: DeploymentHealth,
        backoff: Backoff = Backoff(),
        seed: int | None = None,
        capacity: Capacity | None = None,
    ) -> None:
        self._health = health
        self.capacity = capacity if capacity is not None else NoCapacityLimits()
        self._backoff = backoff
        self._rng = random.Random(seed)

    async def run(
        self,
        target: Target,
        call: Callable[[Provider], Awaitable[T]],
        deadline: Deadline,
        *,
        priority: str = INTERACTIVE,
        hold: bool = False,
    ) -> Outcome[T]:
        """The first candidate's answer that comes: each one called within its capacity (a place taken
        in its priority queue first, when it has a limit), retried as it allows, then the next."""
        skipped: list[str] = []
        last_error: GatewayError | None = None
        upstream_seconds = 0.0
        queued_seconds = 0.0
        attempts = 0
        gates = self.capacity
        for candidate in target.candidates:
            provider = candidate.provider
            name = provider.deployment.name
            if not provider.available:
                skipped.append(f"{name}: {provider.unavailable_reason}")
                continue
            breaker = self._health.breaker(name)
            for attempt in range(provider.deployment.retries + 1):
                if deadline.remaining() <= 0:
                    if isinstance(last_error, Overloaded):
                        raise last_error  # it waited its whole time in a queue: 503 and Retry-After
                    raise UpstreamTimeout(
                        f"No deployment answered within the request deadline ({_tried(skipped)})."
                    )
                if not breaker.allows_request():
                    skipped.append(f"{name}: circuit open")
                    break
                slot: Slot | None = None
                gate = gates.gate(name)
                if gate is not None:
                    asked = time.perf_counter()
                    try:
                        slot = await gate.acquire(priority, deadline.remaining())
                    except Overloaded as exc:  # full, or no place before the deadline: the next one
                        breaker.release_probe()  # not called: a half-open circuit's probe is unused
                        queued_seconds += time.perf_counter() - asked
                        last_error = exc
                        skipped.append(f"{name}: {exc.message}")
                        break
                    except BaseException:  # the client left while it waited
                        breaker.release_probe()
                        raise
                    queued_seconds += slot.queued_seconds
                attempts += 1
                started = time.perf_counter()
                try:
                    result = await call(provider)
                except GatewayError as exc:
                    if slot is not None:
                        slot.release()
                    upstream_seconds += time.perf_counter() - started
                    if not exc.retryable:
                        breaker.record_success()  # it answered sanely; the request itself is at fault
                        raise
                    if isinstance(exc, RateLimited):
                        breaker.release_probe()
                    else:
                        breaker.record_failure()
                    last_error = exc
                    skipped.append(f"{name}: {exc.message}")
                    wait = self._retry_wait(exc, attempt, provider, deadline)
                    if wait is None:
                        break
                    await asyncio.sleep(wait)
                    upstream_seconds += wait
                    continue
                except BaseException:
                    if slot is not None:
                        slot.release()
                    breaker.release_probe()
                    raise
                if slot is not None and not hold:
                    slot.release()
                    slot = None
                breaker.record_success()
                upstream_seconds += time.perf_counter() - started
                first = target.candidates[0]
                fallback = None
                if candidate is not first:
                    fallback = f"{first.route}/{first.provider.deployment.name} -> {candidate.route}/{name}"
                    if skipped:
                        fallback += f" ({skipped[0]})"
                return Outcome(
                    result, candidate.route, name, fallback, upstream_seconds, attempts, slot, queued_seconds
                )
        if last_error is not None:
            raise last_error
        raise UpstreamUnavailable(f"No deployment of '{target.route}' is available ({_tried(skipped)}).")

    def _retry_wait(
        self, error: GatewayError, attempt: int, provider: Provider, deadline: Deadline
    ) -> float | None:
        """Seconds to wait before retrying the same deployment, or None to move on to the next."""
        if attempt >= provider.deployment.retries or isinstance(error, UpstreamTimeout):
            return None
        wait = self._backoff.delay(attempt, self._rng)
        if isinstance(error, RateLimited) and error.retry_after is not None:
            if error.retry_after > self._backoff.cap:
                return None
            wait = error.retry_after
        return wait if wait < deadline.remaining() else None


def _tried(skipped: list[str]) -> str:
    return "; ".join(skipped) if skipped else "nothing tried"

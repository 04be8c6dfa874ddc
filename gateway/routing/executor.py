"""Try a request's candidates in order, with retries, back-off and circuit breakers, within one deadline."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.errors import GatewayError, RateLimited, UpstreamTimeout, UpstreamUnavailable
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


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float = 0.1
    cap: float = 2.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform between 0 and the capped exponential step."""
        return rng.uniform(0, min(self.cap, self.base * 2**attempt))


class RouteExecutor:
    def __init__(
        self, health: DeploymentHealth, backoff: Backoff = Backoff(), seed: int | None = None
    ) -> None:
        self._health = health
        self._backoff = backoff
        self._rng = random.Random(seed)

    async def run(
        self, target: Target, call: Callable[[Provider], Awaitable[T]], deadline: Deadline
    ) -> Outcome[T]:
        skipped: list[str] = []
        last_error: GatewayError | None = None
        upstream_seconds = 0.0
        attempts = 0
        for candidate in target.candidates:
            provider = candidate.provider
            name = provider.deployment.name
            if not provider.available:
                skipped.append(f"{name}: {provider.unavailable_reason}")
                continue
            breaker = self._health.breaker(name)
            for attempt in range(provider.deployment.retries + 1):
                if deadline.remaining() <= 0:
                    raise UpstreamTimeout(
                        f"No deployment answered within the request deadline ({_tried(skipped)})."
                    )
                if not breaker.allows_request():
                    skipped.append(f"{name}: circuit open")
                    break
                attempts += 1
                started = time.perf_counter()
                try:
                    result = await call(provider)
                except GatewayError as exc:
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
                    breaker.release_probe()
                    raise
                breaker.record_success()
                upstream_seconds += time.perf_counter() - started
                first = target.candidates[0]
                fallback = None
                if candidate is not first:
                    fallback = f"{first.route}/{first.provider.deployment.name} -> {candidate.route}/{name}"
                    if skipped:
                        fallback += f" ({skipped[0]})"
                return Outcome(result, candidate.route, name, fallback, upstream_seconds, attempts)
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

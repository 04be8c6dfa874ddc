"""Per-deployment circuit breakers: stop sending traffic to a deployment that keeps failing."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from enum import StrEnum

from gateway.config import CircuitBreakerConfig


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after `failure_threshold` consecutive failures; after `cooldown_seconds` lets one probe
    through (half-open); the probe's success closes it, its failure opens it again."""

    def __init__(
        self,
        config: CircuitBreakerConfig,
        clock: Callable[[], float] = time.monotonic,
        on_open: Callable[[], None] | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._on_open = on_open
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self.state = CircuitState.CLOSED

    def allows_request(self) -> bool:
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            if self._clock() - self._opened_at < self._config.cooldown_seconds:
                return False
            self.state = CircuitState.HALF_OPEN
            self._probe_in_flight = False
        if self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def would_allow(self) -> bool:
        """Whether a request would be let through now, without taking the half-open probe."""
        if self.state is CircuitState.OPEN:
            return self._clock() - self._opened_at >= self._config.cooldown_seconds
        return not (self.state is CircuitState.HALF_OPEN and self._probe_in_flight)

    def record_success(self) -> None:
        self._failures = 0
        self._probe_in_flight = False
        self.state = CircuitState.CLOSED

    def record_failure(self) -> None:
        self._failures += 1
        self._probe_in_flight = False
        if self.state is CircuitState.HALF_OPEN or self._failures >= self._config.failure_threshold:
            self.state = CircuitState.OPEN
            self._opened_at = self._clock()
            if self._on_open is not None:
                self._on_open()

    def open_from_elsewhere(self, remaining_seconds: float) -> None:
        """Another replica opened this deployment's circuit; its cooldown ends in `remaining_seconds`.
        A circuit already open here keeps its own timing."""
        if self.state is CircuitState.OPEN:
            return
        self.state = CircuitState.OPEN
        self._probe_in_flight = False
        self._opened_at = self._clock() - max(0.0, self._config.cooldown_seconds - remaining_seconds)

    def release_probe(self) -> None:
        """The probe ended without a verdict (e.g. the client went away)."""
        self._probe_in_flight = False


class DeploymentHealth:
    """The circuit breaker of every deployment, by name. `on_open(name)` hears of each circuit this process
    opens (to tell other replicas, `routing.shared_circuits`)."""

    def __init__(
        self,
        names: Iterable[str],
        config: CircuitBreakerConfig,
        on_open: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self._breakers = {
            name: CircuitBreaker(config, on_open=functools.partial(on_open, name) if on_open else None)
            for name in names
        }

    def breaker(self, name: str) -> CircuitBreaker:
        return self._breakers[name]

    def states(self) -> dict[str, CircuitState]:
        return {name: breaker.state for name, breaker in self._breakers.items()}

from __future__ import annotations

from gateway.config import CircuitBreakerConfig
from gateway.routing.health import CircuitBreaker, CircuitState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(CircuitBreakerConfig(failure_threshold=3, cooldown_seconds=10), clock)


def test_opens_only_after_consecutive_failures() -> None:
    cb = breaker(Clock())
    cb.record_failure()
    cb.record_failure()
    cb.record_success()
    cb.record_failure()
    cb.record_failure()
    assert cb.state is CircuitState.CLOSED and cb.allows_request()
    cb.record_failure()
    assert cb.state is CircuitState.OPEN and not cb.allows_request()


def test_half_opens_after_cooldown_with_a_single_probe() -> None:
    clock = Clock()
    cb = breaker(clock)
    for _ in range(3):
        cb.record_failure()
    clock.now += 9.9
    assert not cb.allows_request() and not cb.would_allow()
    clock.now += 0.2
    assert cb.would_allow()
    assert cb.allows_request()  # the probe
    assert cb.state is CircuitState.HALF_OPEN
    assert not cb.allows_request()  # only one at a time
    cb.record_failure()
    assert cb.state is CircuitState.OPEN and not cb.allows_request()
    clock.now += 10.1
    assert cb.allows_request()
    cb.record_success()
    assert cb.state is CircuitState.CLOSED and cb.allows_request() and cb.allows_request()


def test_a_probe_without_verdict_lets_the_next_one_through() -> None:
    clock = Clock()
    cb = breaker(clock)
    for _ in range(3):
        cb.record_failure()
    clock.now += 11
    assert cb.allows_request()
    cb.release_probe()
    assert cb.allows_request()

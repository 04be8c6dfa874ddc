"""The one outage strategy of every Redis user: the counters, the shared circuits, the answer cache and
the key changes.

Redis is one server: when it stops answering, it stops for all of them, so they share one guard.

- Whether to ask Redis at all (`away`, no I/O): not while the background probe
  (`redis_client.RedisProbe`) has not seen it answer since it failed, nor for RETRY_SHARED_AFTER
  seconds after any call of any user failed. A Redis that hangs rather than refusing then costs its
  timeout to the calls in flight when it stops answering, not to those that come after.
- `call(attempt)` makes that check and notes a failure of the attempt (a Redis or socket error, or
  RedisUnavailable raised inside it) for every user; users that catch Redis's errors themselves say
  `failed()`. Only calls made for a request are noted: background loops (the probe itself, the
  cache's event follower, the key-change subscriber, the circuits' sync) keep their failures to
  themselves, since a long blocking read that times out under a burst says little about Redis, and
  the probe says within a second whether it answers.
- What an outage means is each user's own business: the counters count on this replica alone or
  refuse, as the policy says, and pay what was counted meanwhile once Redis is back
  (`limits/fallback_counters`); circuits are per process (`routing/shared_circuits`); the answer
  cache is a miss and keeps nothing (`cache/redis_store`); key changes arrive with the key store's
  background refresh (`identity/key_changes`). Background followers (the cache's event stream, the
  key-change subscription) keep trying with their own back-off whatever the guard says: they are how
  each user notices that an outage is over.
- "… counted by this replica alone" is logged at most once a second (`counted_alone`), not once a
  request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.exceptions

T = TypeVar("T")
# What redis-py raises when Redis is unreachable, slow or refuses (builtin ConnectionError and
# TimeoutError are OSErrors).
REDIS_ERRORS = (redis.exceptions.RedisError, OSError)
# How long after a failed call Redis's users do without it before asking again.
RETRY_SHARED_AFTER = 1.0
# "Counted by this replica alone" at most this often.
ALONE_LOGGED_EVERY = 1.0
logger = logging.getLogger("gateway.state.redis")


class RedisUnavailable(Exception):
    """Redis was not asked (known not to answer now) or did not answer; the message says which."""


def _always() -> bool:
    return True


class RedisGuard:
    """One per process, shared by every Redis user. `reachable` is the probe's word (no I/O), e.g.
    `lambda: probe.healthy`; without a probe, only failed calls keep Redis's users away."""

    def __init__(
        self, reachable: Callable[[], bool] = _always, *, retry_after: float = RETRY_SHARED_AFTER
    ) -> None:
        self._reachable = reachable
        self._retry_after = retry_after
        self._retry_at = 0.0
        self._alone_logged_at = float("-inf")

    @property
    def away(self) -> str | None:
        """Why Redis is not to be asked now; None when it may be."""
        if time.monotonic() < self._retry_at:
            return "Redis failed moments ago; not asked again yet"
        if not self._reachable():
            return "Redis does not answer its probe; not asked"
        return None

    def failed(self) -> None:
        """A call to Redis failed: nobody asks it again for `retry_after` seconds."""
        self._retry_at = time.monotonic() + self._retry_after

    async def call(
        self,
        attempt: Callable[[], Awaitable[T]],
        unavailable: Callable[[str], Exception] = RedisUnavailable,
    ) -> T:
        """`attempt()`, unless Redis is away: then `unavailable(why)` is raised without asking it. A
        failure of the attempt is noted and raised as it came."""
        why = self.away
        if why is not None:
            raise unavailable(why)
        try:
            return await attempt()
        except (*REDIS_ERRORS, RedisUnavailable):
            self.failed()
            raise

    def counted_alone(self, what: str, context: str, why: object) -> None:
        """Say that `what` is counted by this replica alone (Redis away, a policy that fails open), at
        most once every ALONE_LOGGED_EVERY seconds."""
        now = time.monotonic()
        if now - self._alone_logged_at < ALONE_LOGGED_EVERY:
            return
        self._alone_logged_at = now
        logger.warning("%s counted by this replica alone (%s): %s", what, context, why)

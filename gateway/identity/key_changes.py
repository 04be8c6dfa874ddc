"""Key changes told to every replica through Redis pub/sub (`GATEWAY_REDIS_URL`), so a revoked or rotated
secret is refused everywhere within milliseconds instead of at each replica's next refresh.

Whoever changes a key (the admin API of any replica, or `gateway keys revoke | rotate | create`) publishes
a `KeyChange` (key id and action, never a secret) on `{GATEWAY_REDIS_PREFIX}keys:changes` after the
database has it. Every replica follows the channel in the background: a revoke or rotate drops the key at
once, then the keys are re-read (off the event loop). Each (re)subscription re-reads every key, since
changes published while this replica was not listening are lost; the subscription is pinged, so a Redis
that hangs is noticed in seconds, and it is re-made with back-off after an outage (whatever the process's
`RedisGuard` says: the subscriber is how this replica notices Redis is back). Without Redis, or while it
is away (then a change made here is not even published), the background refresh
(`auth.REFRESH_SECONDS`, 2 s) is the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
import redis.asyncio
from redis.exceptions import RedisError

from gateway.identity.auth import Authenticator
from gateway.identity.keys import KeyChange
from gateway.state.redis_client import open_redis
from gateway.state.redis_guard import REDIS_ERRORS, RedisGuard, RedisUnavailable

ACTIONS = ("create", "revoke", "rotate")
# Each wait for a message; a quiet subscription is pinged after PING_EVERY and lost without an answer
# within PING_TIMEOUT.
POLL_SECONDS = 0.5
PING_EVERY = 2.0
PING_TIMEOUT = 2.0
# The wait for Redis to confirm a subscription.
SUBSCRIBE_TIMEOUT = 2.0
# Back-off between attempts to subscribe: doubles from the first to the last.
FIRST_RETRY = 0.1
LAST_RETRY = 2.0
logger = logging.getLogger("gateway.identity.key_changes")


def channel_of(prefix: str) -> str:
    return f"{prefix}keys:changes"


def encode(change: KeyChange) -> bytes:
    return orjson.dumps({"key_id": change.key_id, "action": change.action})


def decode(data: Any) -> KeyChange | None:
    """The change a message carries; None for anything else."""
    try:
        fields = orjson.loads(data)
    except (orjson.JSONDecodeError, TypeError):
        return None
    if not isinstance(fields, dict):
        return None
    key_id, action = fields.get("key_id"), fields.get("action")
    if not isinstance(key_id, str) or action not in ACTIONS:
        return None
    return KeyChange(key_id, action)


class LostSubscription(RedisError):
    """Redis did not confirm the subscription, or stopped answering its pings."""


class KeyChanges:
    def __init__(self, client: redis.asyncio.Redis, prefix: str, guard: RedisGuard | None = None) -> None:
        self._client = client
        # The process's one outage strategy (a guard of this follower's own when none is given).
        self._guard = guard if guard is not None else RedisGuard()
        self.channel = channel_of(prefix)
        # Subscribed now (for /readyz): changes made elsewhere reach this replica at once.
        self.connected = False
        self._outage = False

    async def publish(self, change: KeyChange) -> bool:
        """Tell every replica; False when Redis could not be told (they learn it at their next refresh)."""
        try:
            await self._guard.call(lambda: self._client.publish(self.channel, encode(change)))
            return True
        except (*REDIS_ERRORS, RedisUnavailable) as exc:
            logger.warning(
                "key %s %s: Redis unavailable, other replicas see it at their next refresh: %s",
                change.key_id,
                change.action,
                exc,
            )
            return False

    async def follow(self, auth: Authenticator) -> None:
        """Apply every change published, for ever (a background task); never raises."""
        delay = FIRST_RETRY
        while True:
            try:
                await self._listen(auth)
            except REDIS_ERRORS as exc:
                if self.connected:
                    delay = FIRST_RETRY
                if not self._outage:
                    logger.warning(
                        "key changes: Redis unavailable, changes made through other replicas arrive with "
                        "the background refresh until it is back: %s",
                        exc,
                    )
                self.connected, self._outage = False, True
            except Exception:
                self.connected, self._outage = False, True
                logger.exception("key changes: the subscriber failed; subscribing again")
            await asyncio.sleep(delay)
            delay = min(2 * delay, LAST_RETRY)

    async def _listen(self, auth: Authenticator) -> None:
        """Subscribe and apply messages until the subscription is lost (raises)."""
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            subscribed_by = time.monotonic() + SUBSCRIBE_TIMEOUT
            heard, pinged = time.monotonic(), None
            while True:
                message = await pubsub.get_message(timeout=POLL_SECONDS)
                now = time.monotonic()
                if message is not None:
                    heard, pinged = now, None
                    self._handle(message, auth)
                elif not self.connected and now > subscribed_by:
                    raise LostSubscription(f"no subscription confirmed within {SUBSCRIBE_TIMEOUT:g} s")
                elif pinged is None and now - heard > PING_EVERY:
                    await pubsub.ping()
                    pinged = now
                elif pinged is not None and now - pinged > PING_TIMEOUT:
                    raise LostSubscription(f"no answer to a ping within {PING_TIMEOUT:g} s")
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await asyncio.wait_for(pubsub.aclose(), timeout=SUBSCRIBE_TIMEOUT)  # type: ignore[no-untyped-call]

    def _handle(self, message: dict[str, Any], auth: Authenticator) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            # Subscribed (again: redis-py may re-subscribe by itself after a dropped connection): what
            # was published while this replica was not listening is lost, so read every key.
            if self._outage:
                logger.warning("key changes: Redis is back")
            self.connected, self._outage = True, False
            auth.reload_soon()
        elif kind == "message":
            change = decode(message.get("data"))
            if change is None:
                logger.debug("key changes: ignored a message that is not a key change")
                return
            if change.stops_a_secret:
                auth.forget_key(change.key_id)
            auth.reload_soon()


def publish_once(url: str, prefix: str, change: KeyChange) -> str | None:
    """Publish from a command (no event loop): None when done, else why not."""
    return asyncio.run(_publish_once(url, prefix, change))


async def _publish_once(url: str, prefix: str, change: KeyChange) -> str | None:
    client = open_redis(url)
    try:
        await client.publish(channel_of(prefix), encode(change))
        return None
    except REDIS_ERRORS as exc:
        return str(exc) or type(exc).__name__
    finally:
        await client.aclose()

"""Key changes through Redis pub/sub, on a real Redis (behind a black-hole proxy to make outages): a
published revoke is refused at once; after Redis was away (connections cut, or hung) the subscriber
comes back by itself and re-reads every key, so a revoke it missed is not missed for long; and a key
database that hangs never holds up `principal()` or piles up reads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio

from gateway.errors import AuthenticationFailed
from gateway.fakes.background import BackgroundLoop
from gateway.identity.auth import Authenticator
from gateway.identity.key_changes import KeyChanges
from gateway.identity.keys import ApiKey, KeyChange, KeyStore
from gateway.identity.keys_sqlite import SqliteKeys
from tests.blackhole_proxy import BlackholeProxy

# Far above the test's own refreshes: only the subscriber can make a change known.
NEVER = 3600.0


def accepted(auth: Authenticator, secret: str) -> bool:
    try:
        auth.principal(f"Bearer {secret}")
        return True
    except AuthenticationFailed:
        return False


def wait_for(condition: Callable[[], bool], within: float) -> float:
    """Seconds until `condition()` held (fails after `within`)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, f"not within {within} s"
        time.sleep(0.005)
    return time.monotonic() - started


@pytest.fixture
def redis_proxy(redis_url: str) -> Iterator[BlackholeProxy]:
    target = urlsplit(redis_url)
    with BlackholeProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        yield proxy


@pytest.mark.parametrize("outage", ["cut", "hang"])
def test_the_subscriber_applies_changes_at_once_and_reads_every_key_after_an_outage(
    bg: BackgroundLoop,
    redis_url: str,
    redis_prefix: str,
    redis_proxy: BlackholeProxy,
    tmp_path: Path,
    outage: str,
) -> None:
    store = KeyStore(SqliteKeys(tmp_path / "keys.sqlite"))
    first, first_secret = store.create("search", "client")
    second, second_secret = store.create("ads", "client")
    store.create("support", "client")  # a gateway with no keys left would be open to anyone

    async def build() -> tuple[Authenticator, KeyChanges, KeyChanges, list[Any]]:
        auth = Authenticator(store, refresh_seconds=NEVER)
        proxied = redis.asyncio.Redis.from_url(
            f"redis://127.0.0.1:{redis_proxy.port}/0", socket_timeout=1.0, socket_connect_timeout=1.0
        )
        direct = redis.asyncio.Redis.from_url(redis_url)
        follower = KeyChanges(proxied, redis_prefix)
        task = asyncio.create_task(follower.follow(auth))
        return auth, follower, KeyChanges(direct, redis_prefix), [task, proxied, direct]

    auth, follower, publisher, owned = bg.run(build())
    try:
        wait_for(lambda: follower.connected, within=5)
        store.revoke(first.id)
        bg.run(publisher.publish(KeyChange(first.id, "revoke")))
        took = wait_for(lambda: not accepted(auth, first_secret), within=1)
        assert took < 0.1, took
        # The re-read the message asked for is over: one still under way when the second key is revoked
        # below would find that revocation in the store and make the outage's effect invisible.
        bg.run(auth.reload())

        redis_proxy.hang()
        store.revoke(second.id)
        bg.run(publisher.publish(KeyChange(second.id, "revoke")))  # held in the proxy, then lost
        if outage == "cut":
            redis_proxy.drop()
        wait_for(lambda: not follower.connected, within=6)  # a hang is noticed by the unanswered ping
        assert accepted(auth, second_secret)  # nobody has read the keys since
        redis_proxy.drop()
        redis_proxy.resume()
        wait_for(lambda: not accepted(auth, second_secret), within=5)
        assert follower.connected
    finally:
        task, proxied, direct = owned

        async def close() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await proxied.aclose()
            await direct.aclose()

        bg.run(close())
        store.close()


def test_a_read_that_never_ends_holds_up_nothing_and_is_never_doubled(
    bg: BackgroundLoop, tmp_path: Path
) -> None:
    """The background refresh with a store that hangs for ever: principal() answers at once from memory,
    the outage is reported after READ_TIMEOUT, and the ticks meanwhile start no second read."""
    store = KeyStore(SqliteKeys(tmp_path / "keys.sqlite"))
    key, secret = store.create("search", "client")
    release, reads = threading.Event(), []
    real = store.active_by_digest

    def hanging() -> dict[str, ApiKey]:
        reads.append(time.monotonic())
        release.wait(30)
        return real()

    async def build() -> tuple[Authenticator, asyncio.Task[None]]:
        auth = Authenticator(store, refresh_seconds=0.05, read_timeout=0.3)
        store.active_by_digest = hanging  # type: ignore[method-assign]
        return auth, asyncio.create_task(auth.run())

    auth, task = bg.run(build())
    try:
        wait_for(lambda: not auth.key_store_healthy, within=2)
        assert auth.key_store_error and "0.3" in auth.key_store_error
        started = time.monotonic()
        for _ in range(1000):
            assert auth.principal(f"Bearer {secret}").key_id == key.id
        assert time.monotonic() - started < 0.1
        time.sleep(0.5)  # ten ticks
        assert len(reads) == 1
        release.set()
        wait_for(lambda: auth.key_store_healthy, within=2)
    finally:
        release.set()

        async def close() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        bg.run(close())
        store.close()

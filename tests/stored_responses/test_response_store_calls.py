"""How calls reach a stored-response database: off the event loop, one at a time, a wait for a turn
bounded, a cancelled caller's call finished before the next one starts; a PostgreSQL that is
unreachable or hung at start-up fails calls in seconds with a clear error (and is used once it
answers); and the factory's choice of backend."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from gateway.bench.ledger import scratch_postgres
from gateway.inbound.response_store import ResponseStore, StoredResponse
from gateway.stored_responses.backends import DEFAULT_TTL_SECONDS, open_response_store
from gateway.stored_responses.postgres import PostgresResponseStore, jsonb_text
from gateway.stored_responses.schema import Row
from gateway.stored_responses.sqlite import SqliteResponseStore
from gateway.stored_responses.store import ResponseStoreUnavailable, ThreadedResponseStore
from tests.blackhole_proxy import BlackholeProxy
from tests.conftest import free_port

SHARED = "postgresql://postgres@127.0.0.1:5432/test"


def stored(response_id: str = "resp_1", tenant: str = "alpha") -> StoredResponse:
    return StoredResponse(
        id=response_id,
        tenant=tenant,
        response={"id": response_id, "object": "response", "output": []},
        input_items=[{"id": "msg_1", "type": "message", "role": "user", "content": "hi"}],
        conversation=[{"role": "user", "content": "hi"}],
        created_at=time.time(),
    )


class SlowDatabase:
    """A `BlockingDatabase` whose `get` blocks its thread until the test lets it go, recording which
    threads it ran on and whether two calls ever overlapped."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.threads: set[int] = set()
        self.running = 0
        self.overlapped = False
        self.closed = False
        self._count = threading.Lock()

    def _enter(self) -> None:
        with self._count:
            self.running += 1
            self.overlapped |= self.running > 1
        self.threads.add(threading.get_ident())

    def _leave(self) -> None:
        with self._count:
            self.running -= 1

    def put(self, row: Row, now: float) -> bool:
        self._enter()
        self._leave()
        return True

    def get(self, tenant: str, response_id: str, now: float) -> Row | None:
        self._enter()
        try:
            self.entered.set()
            assert self.release.wait(timeout=10)
            return None
        finally:
            self._leave()

    def delete(self, tenant: str, response_id: str) -> float | None:
        self._enter()
        self._leave()
        return None

    def sweep(self, now: float, limit: int) -> int:
        return 0

    def schema_version(self) -> int:
        return 1

    def close(self) -> None:
        assert self.running == 0, "closed under a running call"
        self.closed = True


def slow_store(database: SlowDatabase, turn_timeout: float = 0.3) -> ThreadedResponseStore:
    return ThreadedResponseStore(
        database, name="slow", ttl_seconds=60, turn_timeout=turn_timeout, close_timeout=5
    )


def test_a_slow_database_neither_blocks_the_loop_nor_runs_two_calls_at_once() -> None:
    database = SlowDatabase()
    opened = slow_store(database)

    async def scenario() -> None:
        slow = asyncio.ensure_future(opened.get("alpha", "resp_1"))
        await asyncio.to_thread(database.entered.wait, 5)
        # The loop runs on while the database holds its call.
        ticks = 0
        for _ in range(10):
            await asyncio.sleep(0.005)
            ticks += 1
        assert ticks == 10
        started = time.monotonic()
        with pytest.raises(ResponseStoreUnavailable, match=r"^slow: busy, no turn within 0.3 s$"):
            await opened.delete("alpha", "resp_1")
        assert 0.25 < time.monotonic() - started < 2
        database.release.set()
        assert await slow is None
        assert await opened.delete("alpha", "resp_1") is False
        await opened.aclose()

    asyncio.run(scenario())
    assert threading.get_ident() not in database.threads
    assert not database.overlapped and database.closed


def test_a_cancelled_callers_call_ends_before_the_next_one_starts() -> None:
    database = SlowDatabase()
    opened = slow_store(database, turn_timeout=5)

    async def scenario() -> None:
        slow = asyncio.ensure_future(opened.get("alpha", "resp_1"))
        await asyncio.to_thread(database.entered.wait, 5)
        slow.cancel()  # the client went away; its call still runs on its thread
        with pytest.raises(asyncio.CancelledError):
            await slow
        following = asyncio.ensure_future(opened.delete("alpha", "resp_1"))
        await asyncio.sleep(0.1)
        assert not following.done()  # waits for the cancelled call's turn to end
        database.release.set()
        assert await following is False
        await opened.aclose()

    asyncio.run(scenario())
    assert not database.overlapped and database.closed


def test_closing_waits_for_the_call_under_way() -> None:
    database = SlowDatabase()
    opened = slow_store(database, turn_timeout=5)

    async def scenario() -> None:
        slow = asyncio.ensure_future(opened.get("alpha", "resp_1"))
        await asyncio.to_thread(database.entered.wait, 5)
        closing = asyncio.ensure_future(opened.aclose())
        await asyncio.sleep(0.1)
        assert not closing.done() and not database.closed
        database.release.set()
        await closing
        assert await slow is None
        assert database.closed
        with pytest.raises(ResponseStoreUnavailable, match="closed"):
            await opened.get("alpha", "resp_1")

    asyncio.run(scenario())


def test_an_unreachable_postgresql_fails_calls_at_once_with_a_clear_error() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"  # nothing listens there
    opened = PostgresResponseStore(url, 60)  # no connection yet: opening never fails

    async def scenario() -> None:
        started = time.monotonic()
        with pytest.raises(ResponseStoreUnavailable, match=r"^PostgreSQL: .*(refused|connect)"):
            await opened.put(stored())
        with pytest.raises(ResponseStoreUnavailable, match=r"^PostgreSQL: "):
            await opened.get("alpha", "resp_1")
        assert time.monotonic() - started < 5
        status = opened.status()
        assert status["ok"] is False and status["failing_since"] is not None
        assert status["error"].startswith("PostgreSQL: ")
        await opened.aclose()

    asyncio.run(scenario())


@pytest.fixture
def proxied() -> Iterator[tuple[str, str, BlackholeProxy]]:
    """A scratch database on the shared server and a black-hole proxy in front of it: (the URL through
    the proxy, the direct URL, the proxy)."""
    with scratch_postgres(SHARED) as direct, BlackholeProxy("127.0.0.1", 5432) as proxy:
        yield urlsplit(direct)._replace(netloc=f"postgres@127.0.0.1:{proxy.port}").geturl(), direct, proxy


def test_a_postgresql_hung_at_start_fails_calls_in_seconds_then_is_used_once_it_answers(
    proxied: tuple[str, str, BlackholeProxy],
) -> None:
    url, direct, proxy = proxied
    proxy.hang()
    opened = PostgresResponseStore(url, 60)

    async def scenario() -> None:
        started = time.monotonic()
        with pytest.raises(ResponseStoreUnavailable, match=r"^PostgreSQL: "):
            await opened.get("alpha", "resp_1")
        assert time.monotonic() - started < 8
        assert opened.status()["ok"] is False
        proxy.drop()
        proxy.resume()
        await opened.put(stored())  # the table is made on the first connection that works
        found = await opened.get("alpha", "resp_1")
        assert found is not None and found.id == "resp_1"
        assert opened.status() == {"ok": True, "failing_since": None, "error": None}
        await opened.aclose()

    asyncio.run(scenario())
    with psycopg.connect(direct, autocommit=True) as conn:
        assert conn.execute("SELECT id, tenant FROM stored_responses").fetchall() == [("resp_1", "alpha")]


def test_jsonb_text_replaces_nul_escapes_only() -> None:
    assert jsonb_text(b'"a\\u0000b"') == '"a\\ufffdb"'
    assert jsonb_text(b'"\\\\u0000"') == '"\\\\u0000"'  # a backslash, then the text u0000
    assert jsonb_text(b'"\\\\\\u0000"') == '"\\\\\\ufffd"'  # a backslash, then NUL
    assert jsonb_text('{"\\u0000":"\\u0000\\u0000"}') == '{"\\ufffd":"\\ufffd\\ufffd"}'
    assert jsonb_text(b'"plain \\u00e9"') == '"plain \\u00e9"'


def test_the_factory_picks_sqlite_in_the_state_directory(tmp_path: Path) -> None:
    for url in (None, "", "sqlite:///elsewhere/ledger.sqlite"):
        state = tmp_path / f"state-{url!r}"
        opened = open_response_store(url, state)
        try:
            assert isinstance(opened, SqliteResponseStore)
            assert opened.path == state / "responses.sqlite" and opened.path.exists()
            assert opened.ttl_seconds == DEFAULT_TTL_SECONDS == 30 * 24 * 3600
        finally:
            asyncio.run(opened.aclose())


def test_the_factorys_store_keeps_responses_thirty_days_by_default(tmp_path: Path) -> None:
    created = float(int(time.time()))
    opened: ResponseStore = open_response_store(None, tmp_path)

    async def scenario() -> None:
        await opened.put(replace(stored(), created_at=created))
        await opened.aclose()

    asyncio.run(scenario())
    db = sqlite3.connect(tmp_path / "responses.sqlite")
    try:
        assert db.execute("SELECT expires_at FROM stored_responses").fetchall() == [(created + 30 * 86400,)]
    finally:
        db.close()


def test_the_factory_picks_postgresql_for_a_postgresql_url(tmp_path: Path) -> None:
    for url in ("postgresql://postgres@127.0.0.1:5432/test", "postgres://postgres@127.0.0.1:5432/test"):
        opened = open_response_store(url, tmp_path, ttl_seconds=5)
        try:
            assert isinstance(opened, PostgresResponseStore) and opened.ttl_seconds == 5
        finally:
            asyncio.run(opened.aclose())
    assert not (tmp_path / "responses.sqlite").exists()


@pytest.mark.parametrize("url", ["mysql://db/gateway", "redis://127.0.0.1:6379/0", "responses.sqlite"])
def test_the_factory_refuses_a_url_it_cannot_use(url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"GATEWAY_DATABASE_URL must be postgresql://… or sqlite:///path"):
        open_response_store(url, tmp_path)
    assert not (tmp_path / "responses.sqlite").exists()

"""The one PostgreSQL connection manager (the key store's and the ledger's), on real servers: it connects
when the database comes up, prepares the schema once, reconnects after an outage, ends a call the server
never answers by its watchdog, waits a bounded time for another call, and passes on what is not an outage."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import psycopg
import pytest

from gateway.bench.ledger import scratch_postgres
from gateway.state.postgres import Connection, PostgresConnection
from tests.blackhole_proxy import BlackholeProxy
from tests.private_postgres import private_postgres

SHARED = "postgresql://postgres@127.0.0.1:5432/test"


class Away(Exception):
    """The store's own "unavailable" error."""


class Preparations:
    """A `prepare` that makes a table and counts how often it ran."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, conn: Connection) -> None:
        with conn.transaction():
            conn.execute("CREATE TABLE IF NOT EXISTS things (n INTEGER)")
        self.count += 1


def manager(
    url: str,
    prepare: Callable[[Connection], None],
    *,
    call_timeout: float = 2.0,
    lock_timeout: float = 1.0,
    prepare_timeout: float | None = None,
) -> PostgresConnection:
    return PostgresConnection(
        url,
        unavailable=Away,
        statement_timeout_ms=1500,
        call_timeout=call_timeout,
        lock_timeout=lock_timeout,
        prepare=prepare,
        prepare_timeout=prepare_timeout,
    )


def count_things(conn: Connection) -> int:
    row = conn.execute("SELECT count(*) FROM things").fetchone()
    return int(row[0]) if row is not None else 0


def add_thing(conn: Connection) -> None:
    conn.execute("INSERT INTO things VALUES (1)")


@pytest.fixture
def proxied() -> Iterator[tuple[str, BlackholeProxy]]:
    """A scratch database on the shared server, reached through a black-hole proxy: (URL, proxy)."""
    with scratch_postgres(SHARED) as direct, BlackholeProxy("127.0.0.1", 5432) as proxy:
        yield urlsplit(direct)._replace(netloc=f"postgres@127.0.0.1:{proxy.port}").geturl(), proxy


def test_a_database_down_at_start_is_used_once_it_is_up_prepared_once_and_again_after_an_outage() -> None:
    with private_postgres() as server:
        server.stop()
        prepare = Preparations()
        db = manager(server.url, prepare)
        try:
            with pytest.raises(Away, match=r"^PostgreSQL: "):
                db.run(count_things)
            assert prepare.count == 0
            server.start()
            db.run(add_thing)
            assert db.run(count_things) == 1 and prepare.count == 1
            server.stop()
            with pytest.raises(Away, match=r"^PostgreSQL: "):
                db.run(count_things)
            server.start()
            assert db.run(count_things) == 1  # a fresh connection, by itself
            assert prepare.count == 1  # the schema is made once, not on every connection
        finally:
            db.close()


def test_every_connection_has_the_statement_timeout(proxied: tuple[str, BlackholeProxy]) -> None:
    url, proxy = proxied
    db = manager(url, Preparations())
    try:
        assert db.run(lambda conn: conn.execute("SHOW statement_timeout").fetchall()) == [("1500ms",)]
        proxy.drop()
        with pytest.raises(Away):
            db.run(count_things)
        assert db.run(lambda conn: conn.execute("SHOW statement_timeout").fetchall()) == [("1500ms",)]
    finally:
        db.close()


def test_a_call_the_server_never_answers_is_cut_by_the_watchdog(proxied: tuple[str, BlackholeProxy]) -> None:
    url, proxy = proxied
    db = manager(url, Preparations(), call_timeout=0.5)
    try:
        assert db.run(count_things) == 0
        proxy.hang()
        started = time.monotonic()
        with pytest.raises(Away, match=r"^PostgreSQL: no answer within 0.5 s$"):
            db.run(count_things)
        assert time.monotonic() - started < 1.5
        proxy.drop()
        proxy.resume()
        assert db.run(count_things) == 0  # reconnected
    finally:
        db.close()


def test_a_preparation_the_server_never_answers_is_cut_and_tried_again(
    proxied: tuple[str, BlackholeProxy],
) -> None:
    url, proxy = proxied
    prepare = Preparations()
    hung_once = threading.Event()

    def prepare_on_a_server_that_freezes(conn: Connection) -> None:
        if not hung_once.is_set():  # the server freezes just as the first migration starts
            hung_once.set()
            proxy.hang()
        prepare(conn)

    db = manager(url, prepare_on_a_server_that_freezes, prepare_timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(Away, match=r"^PostgreSQL: no answer within 0.5 s$"):
            db.run(count_things)
        assert time.monotonic() - started < 2.0 and prepare.count == 0
        proxy.resume()
        assert db.run(count_things) == 0 and prepare.count == 1
    finally:
        db.close()


def test_a_call_waits_a_bounded_time_for_one_still_running(proxied: tuple[str, BlackholeProxy]) -> None:
    url, _ = proxied
    db = manager(url, Preparations(), lock_timeout=0.2)
    started = threading.Event()

    def slow(conn: Connection) -> None:
        started.set()
        conn.execute("SELECT pg_sleep(1)")

    try:
        db.run(count_things)
        worker = threading.Thread(target=db.run, args=(slow,))
        worker.start()
        started.wait(5)
        asked = time.monotonic()
        with pytest.raises(Away, match=r"^PostgreSQL: busy, an earlier call has not ended within 0.2 s$"):
            db.run(count_things)
        assert time.monotonic() - asked < 0.6
        worker.join(5)
        assert db.run(count_things) == 0
    finally:
        db.close()


def test_what_is_not_an_outage_is_raised_as_psycopg_raised_it_and_the_connection_kept(
    proxied: tuple[str, BlackholeProxy],
) -> None:
    url, _ = proxied
    db = manager(url, Preparations())
    try:
        backend = db.run(lambda conn: conn.execute("SELECT pg_backend_pid()").fetchall())
        with pytest.raises(psycopg.errors.DivisionByZero):
            db.run(lambda conn: conn.execute("SELECT 1 / 0"))
        assert db.run(lambda conn: conn.execute("SELECT pg_backend_pid()").fetchall()) == backend
    finally:
        db.close()


def test_close_waits_for_the_call_in_flight(proxied: tuple[str, BlackholeProxy]) -> None:
    url, _ = proxied
    db = manager(url, Preparations())
    started, finished = threading.Event(), threading.Event()

    def slow(conn: Connection) -> None:
        started.set()
        conn.execute("SELECT pg_sleep(0.5)")
        finished.set()

    db.run(count_things)
    worker = threading.Thread(target=db.run, args=(slow,))
    worker.start()
    started.wait(5)
    db.close()
    assert finished.is_set()  # closed once the call had ended, not under it
    worker.join(5)

"""The batch store in PostgreSQL (`GATEWAY_DATABASE_URL=postgresql://…`), shared by every replica and
every worker: the same tables and operations as SQLite (`schema.py`, `operations.py`), files' content
as BYTEA, through psycopg 3 (imported only when PostgreSQL is configured) and the gateway's one
PostgreSQL connection manager (`state/postgres.PostgresConnection`: one connection, re-made after an
outage, every call bounded whatever the server does), called from a worker thread one call at a time.

A call that writes is one transaction (READ COMMITTED); one that reads runs its statements as they
come. Workers on many replicas claim lines together without ever taking the same one: a claim picks
its lines with `FOR UPDATE SKIP LOCKED` and marks them in the same statement.

A database that is down or hung at start-up is no reason not to serve: the tables are made (under an
advisory lock, so replicas starting together do not collide) on the first connection that works, and
until then every call raises BatchStoreUnavailable within seconds."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import psycopg

from gateway.batches.schema import Sql, migrate
from gateway.batches.store import MAX_ATTEMPTS, BatchStoreUnavailable, ThreadedBatchStore
from gateway.state.postgres import Connection, PostgresConnection

T = TypeVar("T")

# A statement may write or read a 200 MB file, or the 50,000 lines of a batch.
STATEMENT_TIMEOUT_MS = 20_000
# The whole of one call once connected: the server's statement timeout normally answers first.
CALL_TIMEOUT = 25.0
# How long a call on its thread waits for another one (only a call whose caller was cancelled can
# still be running: the store lets one call at a time in).
LOCK_TIMEOUT = 2.0
# How long a call waits for its turn on the event loop: the calls before it may be large ones.
TURN_TIMEOUT = 30.0
CLOSE_TIMEOUT = CALL_TIMEOUT + LOCK_TIMEOUT + 1.0


def _postgres_statement(statement: str) -> str:
    """A statement written with `?` placeholders, in psycopg's `%s` style."""
    return statement.replace("%", "%%").replace("?", "%s")


class _PostgresSql:
    """`schema.Sql` on a psycopg connection."""

    postgres = True

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def rows(self, statement: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(_postgres_statement(statement), params).fetchall()

    def run(self, statement: str, params: Sequence[object] = ()) -> int:
        return self._conn.execute(_postgres_statement(statement), params).rowcount

    def insert_many(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
        with (
            self._conn.cursor() as cursor,
            cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)


def _in_transaction(conn: Connection, work: Callable[[Sql], T]) -> T:
    with conn.transaction():
        return work(_PostgresSql(conn))


def _prepare(conn: Connection) -> None:
    _in_transaction(conn, migrate)


class PostgresBatches:
    """The blocking half (`store.BlockingBatchDatabase`)."""

    def __init__(self, url: str) -> None:
        self._db = PostgresConnection(
            url,
            unavailable=BatchStoreUnavailable,
            statement_timeout_ms=STATEMENT_TIMEOUT_MS,
            call_timeout=CALL_TIMEOUT,
            lock_timeout=LOCK_TIMEOUT,
            prepare=_prepare,
        )

    def read(self, work: Callable[[Sql], T]) -> T:
        return self._run(lambda conn: work(_PostgresSql(conn)))

    def write(self, work: Callable[[Sql], T]) -> T:
        return self._run(lambda conn: _in_transaction(conn, work))

    def _run(self, work: Callable[[Connection], T]) -> T:
        try:
            return self._db.run(work)
        except psycopg.DataError as exc:
            raise ValueError(f"PostgreSQL refused the batch data: {exc}".strip()) from exc

    def close(self) -> None:
        self._db.close()


class PostgresBatchStore(ThreadedBatchStore):
    """The batch store in the PostgreSQL at `database_url`."""

    def __init__(
        self, database_url: str, *, clock: Callable[[], float] = time.time, max_attempts: int = MAX_ATTEMPTS
    ) -> None:
        super().__init__(
            PostgresBatches(database_url),
            name="batch store (PostgreSQL)",
            turn_timeout=TURN_TIMEOUT,
            close_timeout=CLOSE_TIMEOUT,
            clock=clock,
            max_attempts=max_attempts,
        )

"""Virtual keys in PostgreSQL (`GATEWAY_DATABASE_URL`), shared by every replica: the same table and
statements as SQLite (`keys.KeyStore`), through one psycopg connection that is re-made after an outage.
A call that cannot reach the database raises KeysUnavailable; the authenticator then keeps the keys it
last read.

Every call ends within seconds, whatever the server does (`state/postgres.py`: timeouts, keepalives
and a watchdog that cuts a call outliving CALL_TIMEOUT).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import psycopg

from gateway.identity.keys import SCHEMA, KeysUnavailable
from gateway.state.postgres import CONNECTION_OPTIONS, UNREACHABLE, close_when_free, watchdog

STATEMENT_TIMEOUT_MS = 1500
# The whole of one call once connected: the server's statement timeout normally answers first.
CALL_TIMEOUT = 2.0
# How long a call waits for another one (which may be stuck until its own timeout) to finish.
LOCK_TIMEOUT = 1.0


class PostgresKeys:
    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self, cut: threading.Event) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(self._url, autocommit=True, **CONNECTION_OPTIONS)
            try:
                with watchdog(conn, CALL_TIMEOUT, cut):
                    conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
                    with conn.transaction():
                        conn.execute("SELECT pg_advisory_xact_lock(hashtext('gateway api keys schema'))")
                        conn.execute(SCHEMA.replace("REAL", "DOUBLE PRECISION"))
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _run(self, sql: str, params: Sequence[object], fetch: bool) -> Any:
        if not self._lock.acquire(timeout=LOCK_TIMEOUT):
            raise KeysUnavailable(f"PostgreSQL: busy, an earlier call has not ended within {LOCK_TIMEOUT} s")
        cut = threading.Event()
        try:
            conn = self._connection(cut)
            try:
                with watchdog(conn, CALL_TIMEOUT, cut):
                    cursor = conn.execute(sql.format(p="%s"), list(params))
                    return cursor.fetchall() if fetch else cursor.rowcount
            except UNREACHABLE:
                conn.close()
                raise
        except UNREACHABLE as exc:
            if cut.is_set():
                raise KeysUnavailable(f"PostgreSQL: no answer within {CALL_TIMEOUT:g} s") from exc
            raise KeysUnavailable(f"PostgreSQL: {exc}".strip()) from exc
        finally:
            self._lock.release()

    def execute(self, sql: str, params: Sequence[object]) -> int:
        return int(self._run(sql, params, fetch=False))

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._run(sql, params, fetch=True)
        return rows

    def close(self) -> None:
        close_when_free(self._lock, self._conn, CALL_TIMEOUT + LOCK_TIMEOUT)

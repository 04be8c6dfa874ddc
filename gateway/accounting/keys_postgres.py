"""Virtual keys in PostgreSQL (`GATEWAY_DATABASE_URL`), shared by every replica: the same table and
statements as SQLite (`keys.KeyStore`), through one psycopg connection that is re-made after an outage.
A call that cannot reach the database raises KeysUnavailable; the authenticator then keeps the keys it
last read."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import psycopg

from gateway.accounting.keys import SCHEMA, KeysUnavailable

CONNECT_TIMEOUT = 3


class PostgresKeys:
    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            try:
                conn = psycopg.connect(self._url, connect_timeout=CONNECT_TIMEOUT, autocommit=True)
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext('gateway api keys schema'))")
                    conn.execute(SCHEMA.replace("REAL", "DOUBLE PRECISION"))
            except psycopg.OperationalError as exc:
                raise KeysUnavailable(f"PostgreSQL: {exc}".strip()) from exc
            self._conn = conn
        return self._conn

    def _run(self, sql: str, params: Sequence[object], fetch: bool) -> Any:
        with self._lock:
            conn = self._connection()
            try:
                cursor = conn.execute(sql.format(p="%s"), list(params))
                return cursor.fetchall() if fetch else cursor.rowcount
            except psycopg.OperationalError as exc:
                conn.close()
                raise KeysUnavailable(f"PostgreSQL: {exc}".strip()) from exc

    def execute(self, sql: str, params: Sequence[object]) -> int:
        return int(self._run(sql, params, fetch=False))

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._run(sql, params, fetch=True)
        return rows

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

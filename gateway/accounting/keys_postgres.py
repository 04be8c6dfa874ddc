"""Virtual keys in PostgreSQL (`GATEWAY_DATABASE_URL`), shared by every replica: the same table and
statements as SQLite (`keys.KeyStore`), through one psycopg connection that is re-made after an outage.
A call that cannot reach the database raises KeysUnavailable; the authenticator then keeps the keys it
last read.

Every call ends within seconds, whatever the server does. Connecting is bounded by `connect_timeout`;
each statement by the server's `statement_timeout` and, for a server that accepts bytes and never
answers (frozen, or a black hole in between: TCP sees nothing wrong), by a watchdog that shuts the
connection's socket down when a call outlives CALL_TIMEOUT, which wakes the waiting thread with an
error. TCP keepalives and `tcp_user_timeout` notice a peer that vanished from the network.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from gateway.accounting.keys import SCHEMA, KeysUnavailable

CONNECT_TIMEOUT = 2  # seconds; libpq's smallest
STATEMENT_TIMEOUT_MS = 1500
# The whole of one call once connected: the server's statement timeout normally answers first.
CALL_TIMEOUT = 2.0
# How long a call waits for another one (which may be stuck until its own timeout) to finish.
LOCK_TIMEOUT = 1.0
CONNECTION_OPTIONS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 1,
    "keepalives_count": 3,
    "tcp_user_timeout": 5000,  # ms of unacknowledged data before the kernel gives the connection up
}
# What a lost, refused, cut or timed-out connection raises (a statement timeout is an OperationalError).
UNREACHABLE = (psycopg.OperationalError, psycopg.InterfaceError)


class PostgresKeys:
    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self, cut: threading.Event) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(self._url, autocommit=True, **CONNECTION_OPTIONS)
            try:
                with _watchdog(conn, CALL_TIMEOUT, cut):
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
                with _watchdog(conn, CALL_TIMEOUT, cut):
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
        # A call stuck in another thread ends by its watchdog; closing under it is not safe.
        if not self._lock.acquire(timeout=CALL_TIMEOUT + LOCK_TIMEOUT):
            return
        try:
            if self._conn is not None:
                self._conn.close()
        finally:
            self._lock.release()


@contextlib.contextmanager
def _watchdog(conn: psycopg.Connection[Any], seconds: float, cut: threading.Event) -> Iterator[None]:
    """Cut the connection (shut its socket down, and set `cut`) if the block is still running after
    `seconds`: the thread waiting in libpq then gets an error instead of waiting for ever."""
    # A duplicate of the descriptor: the timer never touches a number the connection may have closed.
    sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    timer = threading.Timer(seconds, _shut_down, (sock, cut))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        sock.close()


def _shut_down(sock: socket.socket, cut: threading.Event) -> None:
    cut.set()
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)

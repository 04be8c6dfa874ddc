"""The gateway's one way to talk to PostgreSQL (the key store and the ledger both use it).

`PostgresConnection` keeps one connection for a store and runs that store's calls on it, one at a
time: it connects on first use and again after a failure (a database that is down at start-up is no
reason not to serve), sets the store's schema up once (its `prepare`), and bounds every call so that
none waits for ever, whatever the server does: connecting by `connect_timeout`; each statement by the
server's `statement_timeout`; and, for a server that accepts bytes and never answers (frozen, or a
black hole in between: TCP sees nothing wrong and the kernel acknowledges everything), by a watchdog
that shuts the connection's socket down when a call outlives its bound, which wakes the thread waiting
in libpq with an error. TCP keepalives and `tcp_user_timeout` notice a peer that vanished from the
network. A call that cannot reach the database raises the store's own "unavailable" error.

Blocking (psycopg's synchronous API): stores call it from worker threads.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeAlias, TypeVar

import psycopg

T = TypeVar("T")
Connection: TypeAlias = psycopg.Connection[Any]

# Keepalives and the connect bound, for psycopg.connect(**CONNECTION_OPTIONS).
CONNECTION_OPTIONS: dict[str, Any] = {
    "connect_timeout": 2,  # seconds; libpq's smallest
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 1,
    "keepalives_count": 3,
    "tcp_user_timeout": 5000,  # ms of unacknowledged data before the kernel gives the connection up
}
# What a lost, refused, cut or timed-out connection raises (a statement timeout is an OperationalError).
UNREACHABLE = (psycopg.OperationalError, psycopg.InterfaceError)


def _nothing_to_prepare(conn: Connection) -> None:
    return None


class PostgresConnection:
    """One store's connection (autocommit; writes in explicit transactions), re-made after a failure.

    `run(work)` calls `work(conn)` under the lock (waiting at most `lock_timeout` for an earlier call,
    which may be stuck until its own bound) and the watchdog (`call_timeout`). A fresh connection first
    runs `prepare` (creating tables, migrating) under a watchdog of `prepare_timeout`, until it has
    succeeded once, then sets `statement_timeout_ms`. Busy, unreachable, cut or unprepared: `work` is
    not done, and `unavailable(message)` is raised (the connection is dropped, the next call makes a new
    one). Any other error of `work` (bad data, a constraint) is raised as psycopg raised it."""

    def __init__(
        self,
        url: str,
        *,
        unavailable: Callable[[str], Exception],
        statement_timeout_ms: int,
        call_timeout: float,
        lock_timeout: float,
        prepare: Callable[[Connection], None] = _nothing_to_prepare,
        prepare_timeout: float | None = None,
    ) -> None:
        self._url = url
        self._unavailable = unavailable
        self._statement_timeout_ms = statement_timeout_ms
        self.call_timeout = call_timeout
        self.lock_timeout = lock_timeout
        self._prepare = prepare
        self._prepare_timeout = call_timeout if prepare_timeout is None else prepare_timeout
        self._prepared = False
        self._lock = threading.Lock()
        self._conn: Connection | None = None

    def run(self, work: Callable[[Connection], T]) -> T:
        if not self._lock.acquire(timeout=self.lock_timeout):
            raise self._unavailable(
                f"PostgreSQL: busy, an earlier call has not ended within {self.lock_timeout:g} s"
            )
        try:
            conn = self._connection()
            cut = threading.Event()
            try:
                with _watchdog(conn, self.call_timeout, cut):
                    return work(conn)
            except UNREACHABLE as exc:
                conn.close()
                raise self._unavailable(_why(exc, cut, self.call_timeout)) from exc
        finally:
            self._lock.release()

    def _connection(self) -> Connection:
        """Connected, prepared and bounded (under the lock)."""
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = psycopg.connect(self._url, autocommit=True, **CONNECTION_OPTIONS)
        except UNREACHABLE as exc:
            raise self._unavailable(f"PostgreSQL: {exc}".strip()) from exc
        cut = threading.Event()
        what, seconds = "PostgreSQL migration", self._prepare_timeout
        try:
            if not self._prepared:
                with _watchdog(conn, seconds, cut):
                    self._prepare(conn)
                self._prepared = True
            what, seconds = "PostgreSQL", self.call_timeout
            with _watchdog(conn, seconds, cut):
                conn.execute(f"SET statement_timeout = {self._statement_timeout_ms}")
        except psycopg.Error as exc:
            conn.close()  # never keep a connection whose preparation did not happen
            raise self._unavailable(_why(exc, cut, seconds, what)) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def close(self) -> None:
        _close_when_free(self._lock, self._conn, self.call_timeout + self.lock_timeout)


def _why(exc: Exception, cut: threading.Event, seconds: float, what: str = "PostgreSQL") -> str:
    if cut.is_set():
        return f"PostgreSQL: no answer within {seconds:g} s"
    return f"{what}: {exc}".strip()


@contextlib.contextmanager
def _watchdog(conn: Connection, seconds: float, cut: threading.Event) -> Iterator[None]:
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


def _close_when_free(lock: threading.Lock, conn: Connection | None, wait: float) -> None:
    """Close `conn` once the call holding `lock` has ended (a call stuck on another thread ends by its
    watchdog; closing under it is not safe); left to the process's end if that takes over `wait`."""
    if not lock.acquire(timeout=wait):
        return
    try:
        if conn is not None:
            conn.close()
    finally:
        lock.release()

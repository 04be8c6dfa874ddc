"""How the gateway's PostgreSQL connections are bounded, so that no call waits for ever, whatever the
server does: connecting by `connect_timeout`; each statement by the server's `statement_timeout`; and,
for a server that accepts bytes and never answers (frozen, or a black hole in between: TCP sees
nothing wrong and the kernel acknowledges everything), by a watchdog that shuts the connection's socket
down when a call outlives its bound, which wakes the thread waiting in libpq with an error. TCP
keepalives and `tcp_user_timeout` notice a peer that vanished from the network.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import psycopg

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


@contextlib.contextmanager
def watchdog(conn: psycopg.Connection[Any], seconds: float, cut: threading.Event) -> Iterator[None]:
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


def close_when_free(lock: threading.Lock, conn: psycopg.Connection[Any] | None, wait: float) -> None:
    """Close `conn` once the call holding `lock` has ended (a call stuck on another thread ends by its
    watchdog; closing under it is not safe); left to the process's end if that takes over `wait`."""
    if not lock.acquire(timeout=wait):
        return
    try:
        if conn is not None:
            conn.close()
    finally:
        lock.release()

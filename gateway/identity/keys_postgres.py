"""Virtual keys in PostgreSQL (`GATEWAY_DATABASE_URL`), shared by every replica: the same table and
statements as SQLite (`keys.KeyStore`), through the gateway's one PostgreSQL connection manager
(`state/postgres.PostgresConnection`: re-made after an outage, and every call ends within seconds,
whatever the server does). A call that cannot reach the database raises KeysUnavailable; the
authenticator then keeps the keys it last read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.identity.keys import SCHEMA, KeysUnavailable
from gateway.state.postgres import Connection, PostgresConnection

STATEMENT_TIMEOUT_MS = 1500
# The whole of one call once connected: the server's statement timeout normally answers first.
CALL_TIMEOUT = 2.0
# How long a call waits for another one (which may be stuck until its own timeout) to finish.
LOCK_TIMEOUT = 1.0


def _make_table(conn: Connection) -> None:
    with conn.transaction():
        # Replicas starting together: one makes the table, the others wait, then find it there.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('gateway api keys schema'))")
        conn.execute(SCHEMA.replace("REAL", "DOUBLE PRECISION"))


class PostgresKeys:
    def __init__(self, url: str) -> None:
        self._db = PostgresConnection(
            url,
            unavailable=KeysUnavailable,
            statement_timeout_ms=STATEMENT_TIMEOUT_MS,
            call_timeout=CALL_TIMEOUT,
            lock_timeout=LOCK_TIMEOUT,
            prepare=_make_table,
        )

    def execute(self, sql: str, params: Sequence[object]) -> int:
        return self._db.run(lambda conn: conn.execute(sql.format(p="%s"), list(params)).rowcount)

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self._db.run(lambda conn: conn.execute(sql.format(p="%s"), list(params)).fetchall())

    def close(self) -> None:
        self._db.close()

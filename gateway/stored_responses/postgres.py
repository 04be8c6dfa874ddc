"""Stored responses in PostgreSQL (`GATEWAY_DATABASE_URL=postgresql://…`), shared by every replica: the
same table and statements as SQLite (`schema.py`), the payloads as JSONB, through psycopg 3 (imported
only when PostgreSQL is configured) and the gateway's one PostgreSQL connection manager
(`state/postgres.PostgresConnection`: one connection, re-made after an outage, every call bounded
whatever the server does), called from a worker thread one call at a time (`store.py`).

A database that is down or hung at start-up is no reason not to serve: the table is made (under an
advisory lock, so replicas starting together do not collide) on the first connection that works, and
until then every call raises ResponseStoreUnavailable within seconds.

What JSONB changes: objects come back with their keys in JSONB's order, not the client's, and a NUL
character (which PostgreSQL's text cannot hold) is stored as U+FFFD, the replacement character."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg

from gateway.state.postgres import Connection, PostgresConnection
from gateway.stored_responses.schema import (
    MIGRATIONS,
    MIGRATIONS_TABLE,
    Row,
    delete_sql,
    select_sql,
    sweep_sql,
    upsert_sql,
)
from gateway.stored_responses.store import (
    SWEEP_EVERY,
    ResponseStoreUnavailable,
    ThreadedResponseStore,
    check_ttl,
)

T = TypeVar("T")

# A statement writes or reads one response (up to 16 MiB of JSON to parse), or sweeps a batch.
STATEMENT_TIMEOUT_MS = 4000
# The whole of one call once connected: the server's statement timeout normally answers first.
CALL_TIMEOUT = 5.0
# How long a call on its thread waits for another one (only a call whose caller was cancelled can
# still be running: the store lets one call at a time in).
LOCK_TIMEOUT = 2.0
# How long a call waits for its turn on the event loop: a hung database fails requests in seconds.
TURN_TIMEOUT = 2.0
CLOSE_TIMEOUT = CALL_TIMEOUT + LOCK_TIMEOUT + 1.0

# A `\u0000` escape in orjson's output: a backslash that is not itself escaped (an even number of
# backslashes before it), then u0000.
_NUL_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")


def _migrate(conn: Connection) -> None:
    with conn.transaction():
        # Replicas starting together: one migrates, the others wait, then find nothing to do.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('gateway stored responses migrations'))")
        conn.execute(MIGRATIONS_TABLE)
        done = {row[0] for row in conn.execute("SELECT version FROM stored_responses_migrations")}
        for migration in MIGRATIONS:
            if migration.version not in done:
                for statement in migration.postgres:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO stored_responses_migrations VALUES (%s, %s, %s)",
                    (migration.version, migration.description, time.time()),
                )


def jsonb_text(payload: bytes | str) -> str:
    """JSON text PostgreSQL's JSONB takes: NUL characters replaced by U+FFFD."""
    if isinstance(payload, str):
        payload = payload.encode()
    if b"\\u0000" in payload:
        payload = _NUL_ESCAPE.sub(rb"\1\\ufffd", payload)
    return payload.decode()


class PostgresResponses:
    """The blocking half (`store.BlockingDatabase`)."""

    def __init__(self, url: str) -> None:
        self._db = PostgresConnection(
            url,
            unavailable=ResponseStoreUnavailable,
            statement_timeout_ms=STATEMENT_TIMEOUT_MS,
            call_timeout=CALL_TIMEOUT,
            lock_timeout=LOCK_TIMEOUT,
            prepare=_migrate,
        )

    def _run(self, work: Callable[[Connection], T]) -> T:
        try:
            return self._db.run(work)
        except psycopg.DataError as exc:
            raise ValueError(f"PostgreSQL refused the stored response: {exc}".strip()) from exc

    def put(self, row: Row, now: float) -> bool:
        sql = upsert_sql("%s", "%s::jsonb")
        values = (
            row.id,
            row.tenant,
            row.created_at,
            row.expires_at,
            jsonb_text(row.response),
            jsonb_text(row.input_items),
            jsonb_text(row.conversation),
            now,
        )
        return self._run(lambda conn: conn.execute(sql, values).rowcount) == 1

    def get(self, tenant: str, response_id: str, now: float) -> Row | None:
        sql = select_sql("%s", "{}::text")
        found = self._run(lambda conn: conn.execute(sql, (response_id, tenant, now)).fetchone())
        return None if found is None else Row(*found)

    def delete(self, tenant: str, response_id: str) -> float | None:
        sql = delete_sql("%s")
        found = self._run(lambda conn: conn.execute(sql, (response_id, tenant)).fetchone())
        return None if found is None else float(found[0])

    def sweep(self, now: float, limit: int) -> int:
        sql = sweep_sql("%s")
        return self._run(lambda conn: conn.execute(sql, (now, limit)).rowcount)

    def schema_version(self) -> int:
        found = self._run(
            lambda conn: conn.execute("SELECT MAX(version) FROM stored_responses_migrations").fetchone()
        )
        return int(found[0] or 0) if found is not None else 0

    def close(self) -> None:
        self._db.close()


class PostgresResponseStore(ThreadedResponseStore):
    """Stored responses in the PostgreSQL at `database_url`, each kept `ttl_seconds` after its
    creation."""

    def __init__(
        self,
        database_url: str,
        ttl_seconds: float,
        *,
        clock: Callable[[], float] = time.time,
        sweep_every: float = SWEEP_EVERY,
    ) -> None:
        check_ttl(ttl_seconds)
        super().__init__(
            PostgresResponses(database_url),
            name="stored responses (PostgreSQL)",
            ttl_seconds=ttl_seconds,
            turn_timeout=TURN_TIMEOUT,
            close_timeout=CLOSE_TIMEOUT,
            clock=clock,
            sweep_every=sweep_every,
        )

"""The spend ledger on PostgreSQL (`GATEWAY_DATABASE_URL=postgresql://…`): the same table, migrations
and report as SQLite (`sqlite.py`), through psycopg 3, imported only when a PostgreSQL ledger is
configured, and the gateway's one PostgreSQL connection manager (`state/postgres.PostgresConnection`).

It keeps one connection and reconnects after an outage: a call that fails raises LedgerUnavailable
and the next one tries a fresh connection. Every call ends within CALL_TIMEOUT whatever the server does
(timeouts, keepalives, and a watchdog that cuts a hung call's connection), and waits at most
LOCK_TIMEOUT for another call: a frozen database makes drains, reports and feedback fail with
LedgerUnavailable in seconds (records stay in the spool) instead of holding their threads for ever.
A database that is down at start-up is no reason not to serve: the migrations run on the first
connection that works."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg

from gateway.ledger.feedback import (
    Feedback,
    RatedRequest,
    insert_feedback_sql,
    latest_per_request,
    rated_requests_sql,
    request_known_sql,
    row_of_feedback,
)
from gateway.ledger.record import SpendRecord
from gateway.ledger.schema import (
    DECISION_COLUMNS,
    MIGRATIONS,
    decisions_sql,
    insert_sql,
    report_query,
    row_of,
)
from gateway.ledger.store import (
    MIGRATIONS_TABLE,
    LedgerRejected,
    LedgerUnavailable,
    report_rows,
)
from gateway.state.postgres import Connection, PostgresConnection

T = TypeVar("T")
# A drain inserts one spool segment (half a second of traffic) in a transaction; reports scan hours.
STATEMENT_TIMEOUT_MS = 8000
# The whole of one call once connected: the server's statement timeout normally answers first.
CALL_TIMEOUT = 10.0
# Migrations may rewrite a large ledger (the rollup's backfill): bounded, but generously.
MIGRATION_TIMEOUT = 600.0
# How long a call waits for another one (which may be stuck until its own timeout) to finish.
LOCK_TIMEOUT = 5.0


def _migrate(conn: Connection) -> None:
    with conn.transaction():
        # Replicas starting together: one migrates, the others wait, then find nothing to do.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('gateway ledger migrations'))")
        conn.execute(MIGRATIONS_TABLE)
        done = {row[0] for row in conn.execute("SELECT version FROM ledger_migrations")}
        for migration in MIGRATIONS:
            if migration.version not in done:
                conn.execute(migration.postgres)
                conn.execute(
                    "INSERT INTO ledger_migrations VALUES (%s, %s, %s)",
                    (migration.version, migration.description, time.time()),
                )


class PostgresLedgerStore:
    def __init__(self, url: str) -> None:
        self._db = PostgresConnection(
            url,
            unavailable=LedgerUnavailable,
            statement_timeout_ms=STATEMENT_TIMEOUT_MS,
            call_timeout=CALL_TIMEOUT,
            lock_timeout=LOCK_TIMEOUT,
            prepare=_migrate,
            prepare_timeout=MIGRATION_TIMEOUT,
        )

    def _run(self, work: Callable[[Connection], T]) -> T:
        try:
            return self._db.run(work)
        except psycopg.DataError as exc:
            raise LedgerRejected(f"PostgreSQL: {exc}".strip()) from exc

    def insert(self, records: Sequence[SpendRecord]) -> None:
        rows = [row_of(record) for record in records]

        def write(conn: Connection) -> None:
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(insert_sql("%s"), rows)

        self._run(write)

    def report(
        self,
        group_by: Sequence[str],
        since: float | None = None,
        until: float | None = None,
        team: str | None = None,
    ) -> list[dict[str, Any]]:
        sql, params = report_query(group_by, "%s", since, until, team)
        rows = self._run(lambda conn: conn.execute(sql, params).fetchall())
        return report_rows(group_by, rows)

    def add_feedback(self, feedback: Feedback) -> bool:
        known_sql, team = request_known_sql("%s", feedback.team)

        def write(conn: Connection) -> bool:
            with conn.transaction():
                if conn.execute(known_sql, [feedback.request_id, *team]).fetchone() is None:
                    return False
                conn.execute(insert_feedback_sql("%s"), row_of_feedback(feedback))
                return True

        return bool(self._run(write))

    def rated_requests(self, since: float = 0.0) -> list[RatedRequest]:
        rows = self._run(lambda conn: conn.execute(rated_requests_sql("%s"), [since]).fetchall())
        return latest_per_request(rows)

    def decisions(self, policy: str, since: float = 0.0) -> list[dict[str, Any]]:
        rows = self._run(lambda conn: conn.execute(decisions_sql("%s"), [policy, since]).fetchall())
        return [dict(zip(DECISION_COLUMNS, row, strict=True)) for row in rows]

    def read(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        return self._run(lambda conn: conn.execute(sql.format(p="%s"), list(params)).fetchall())

    def schema_version(self) -> int:
        row = self._run(lambda conn: conn.execute("SELECT MAX(version) FROM ledger_migrations").fetchone())
        return int(row[0] or 0) if row is not None else 0

    def close(self) -> None:
        self._db.close()

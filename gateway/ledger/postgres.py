"""The spend ledger on PostgreSQL (`GATEWAY_DATABASE_URL=postgresql://…`): the same table, migrations
and report as SQLite (`ledger_store`), through psycopg 3, imported only when a PostgreSQL ledger is
configured.

Every call ends within CALL_TIMEOUT whatever the server does (`state/postgres.py`: timeouts,
keepalives, and a watchdog that cuts a hung call's connection), and waits at most LOCK_TIMEOUT for
another call: a frozen database makes drains, reports and feedback fail with LedgerUnavailable in
seconds (records stay in the spool) instead of holding their threads for ever."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

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
from gateway.ledger.record import SpendRecord
from gateway.state.postgres import CONNECTION_OPTIONS, UNREACHABLE, close_when_free, watchdog

# A drain inserts one spool segment (half a second of traffic) in a transaction; reports scan hours.
STATEMENT_TIMEOUT_MS = 8000
# The whole of one call once connected: the server's statement timeout normally answers first.
CALL_TIMEOUT = 10.0
# Migrations may rewrite a large ledger (the rollup's backfill): bounded, but generously.
MIGRATION_TIMEOUT = 600.0
# How long a call waits for another one (which may be stuck until its own timeout) to finish.
LOCK_TIMEOUT = 5.0


class PostgresLedgerStore:
    """Keeps one connection (autocommit; writes in explicit transactions) and reconnects after an
    outage: a call that fails raises LedgerUnavailable and the next one tries a fresh connection."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._migrated = False

    def _connection(self) -> psycopg.Connection[Any]:
        """Connected and migrated; a database that is down at start-up is no reason not to serve."""
        if self._conn is None or self._conn.closed:
            try:
                conn = psycopg.connect(self._url, autocommit=True, **CONNECTION_OPTIONS)
            except psycopg.OperationalError as exc:
                raise LedgerUnavailable(f"PostgreSQL: {exc}".strip()) from exc
            try:
                if not self._migrated:
                    with watchdog(conn, MIGRATION_TIMEOUT, threading.Event()):
                        self._migrate(conn)
                    self._migrated = True
                with watchdog(conn, CALL_TIMEOUT, threading.Event()):
                    conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            except BaseException as exc:
                conn.close()  # never keep a connection whose migration did not happen
                if isinstance(exc, psycopg.Error):
                    raise LedgerUnavailable(f"PostgreSQL migration: {exc}".strip()) from exc
                raise
            self._conn = conn
        return self._conn

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
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

    def _run(self, work: Any) -> Any:
        if not self._lock.acquire(timeout=LOCK_TIMEOUT):
            raise LedgerUnavailable(
                f"PostgreSQL: busy, an earlier call has not ended within {LOCK_TIMEOUT:g} s"
            )
        try:
            conn = self._connection()
            cut = threading.Event()
            try:
                with watchdog(conn, CALL_TIMEOUT, cut):
                    return work(conn)
            except UNREACHABLE as exc:
                conn.close()
                if cut.is_set():
                    raise LedgerUnavailable(f"PostgreSQL: no answer within {CALL_TIMEOUT:g} s") from exc
                raise LedgerUnavailable(f"PostgreSQL: {exc}".strip()) from exc
            except psycopg.DataError as exc:
                raise LedgerRejected(f"PostgreSQL: {exc}".strip()) from exc
        finally:
            self._lock.release()

    def insert(self, records: Sequence[SpendRecord]) -> None:
        rows = [row_of(record) for record in records]

        def write(conn: psycopg.Connection[Any]) -> None:
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

        def write(conn: psycopg.Connection[Any]) -> bool:
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
        rows: list[tuple[Any, ...]] = self._run(
            lambda conn: conn.execute(sql.format(p="%s"), list(params)).fetchall()
        )
        return rows

    def schema_version(self) -> int:
        row = self._run(lambda conn: conn.execute("SELECT MAX(version) FROM ledger_migrations").fetchone())
        return int(row[0] or 0)

    def close(self) -> None:
        close_when_free(self._lock, self._conn, CALL_TIMEOUT + LOCK_TIMEOUT)

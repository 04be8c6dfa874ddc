"""Where drained spend records end up: SQLite (WAL) by default, PostgreSQL when
`GATEWAY_DATABASE_URL` names one. Both apply the versioned migrations at open, insert idempotently
(a segment drained twice after a crash counts once) and answer the same spend report.

Blocking DB-API calls: the ledger calls these from a worker thread, one call at a time per store.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

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
    REPORT_FIELDS,
    decisions_sql,
    insert_sql,
    report_query,
    row_of,
)
from gateway.ledger.record import SpendRecord
from gateway.state.sqlite import open_database

MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS ledger_migrations "
    "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
)


class LedgerUnavailable(Exception):
    """The database cannot take records now; they stay in the spool."""


class LedgerRejected(Exception):
    """The database refuses these records as they are (bad data): retrying will not help."""


class LedgerStore(Protocol):
    def insert(self, records: Sequence[SpendRecord]) -> None: ...

    def report(
        self,
        group_by: Sequence[str],
        since: float | None = None,
        until: float | None = None,
        team: str | None = None,
    ) -> list[dict[str, Any]]: ...

    def add_feedback(self, feedback: Feedback) -> bool:
        """Keep the feedback if the ledger holds its request (for its team); whether it did."""
        ...

    def rated_requests(self, since: float = 0.0) -> list[RatedRequest]: ...

    def decisions(self, policy: str, since: float = 0.0) -> list[dict[str, Any]]:
        """The routed records of a policy: DECISION_COLUMNS, `signals` as a JSON string."""
        ...

    def read(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        """Rows of a read-only query written with `{p}` for each parameter (e.g. a dashboard view)."""
        ...

    def schema_version(self) -> int: ...

    def close(self) -> None: ...


def check_database_url(database_url: str | None) -> None:
    """Raises ValueError, saying what is expected, for a URL the ledger cannot use."""
    if database_url and not database_url.startswith(("postgres://", "postgresql://", "sqlite:///")):
        raise ValueError(
            f"GATEWAY_DATABASE_URL must be postgresql://… or sqlite:///path, not {database_url!r}"
        )


def open_ledger_store(database_url: str | None, state_dir: Path) -> LedgerStore:
    check_database_url(database_url)
    if database_url and database_url.startswith(("postgres://", "postgresql://")):
        # psycopg costs ~20 MB and only a PostgreSQL ledger needs it.
        from gateway.ledger.postgres import PostgresLedgerStore

        return PostgresLedgerStore(database_url)
    path = Path(database_url.removeprefix("sqlite:///")) if database_url else state_dir / "ledger.sqlite"
    return SqliteLedgerStore(path)


def sqlite_statements(script: str) -> list[str]:
    """A script's statements, one each, `;` inside a trigger's body kept where it belongs."""
    statements, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending.strip())
            pending = ""
    return statements


def report_rows(group_by: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    names = (*group_by, *REPORT_FIELDS)
    return [dict(zip(names, (_plain(value) for value in row), strict=True)) for row in rows]


def _plain(value: Any) -> Any:
    return float(value) if type(value).__name__ == "Decimal" else value


class SqliteLedgerStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_database(path, MIGRATIONS_TABLE)
        self._lock = threading.Lock()
        with self._lock:
            self._migrate()

    def _migrate(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")  # one replica at a time
        try:
            done = {row[0] for row in self._db.execute("SELECT version FROM ledger_migrations")}
            for migration in MIGRATIONS:
                if migration.version not in done:
                    for statement in sqlite_statements(migration.sqlite):
                        self._db.execute(statement)
                    self._db.execute(
                        "INSERT INTO ledger_migrations VALUES (?, ?, ?)",
                        (migration.version, migration.description, time.time()),
                    )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def insert(self, records: Sequence[SpendRecord]) -> None:
        rows = [row_of(record) for record in records]
        try:
            with self._lock:
                self._db.execute("BEGIN")
                try:
                    self._db.executemany(insert_sql("?"), rows)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.OperationalError as exc:  # locked for too long, disk full
            raise LedgerUnavailable(f"{self.path}: {exc}") from exc
        except (sqlite3.IntegrityError, sqlite3.InterfaceError) as exc:
            raise LedgerRejected(f"{self.path}: {exc}") from exc

    def report(
        self,
        group_by: Sequence[str],
        since: float | None = None,
        until: float | None = None,
        team: str | None = None,
    ) -> list[dict[str, Any]]:
        sql, params = report_query(group_by, "?", since, until, team)
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return report_rows(group_by, rows)

    def add_feedback(self, feedback: Feedback) -> bool:
        known_sql, team = request_known_sql("?", feedback.team)
        try:
            with self._lock:
                self._db.execute("BEGIN")
                try:
                    known = self._db.execute(known_sql, [feedback.request_id, *team]).fetchone()
                    if known:
                        self._db.execute(insert_feedback_sql("?"), row_of_feedback(feedback))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.OperationalError as exc:
            raise LedgerUnavailable(f"{self.path}: {exc}") from exc
        return known is not None

    def rated_requests(self, since: float = 0.0) -> list[RatedRequest]:
        with self._lock:
            rows = self._db.execute(rated_requests_sql("?"), [since]).fetchall()
        return latest_per_request(rows)

    def decisions(self, policy: str, since: float = 0.0) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(decisions_sql("?"), [policy, since]).fetchall()
        return [dict(zip(DECISION_COLUMNS, row, strict=True)) for row in rows]

    def read(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql.format(p="?"), list(params)).fetchall()

    def schema_version(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(version) FROM ledger_migrations").fetchone()
        return int(row[0] or 0)

    def close(self) -> None:
        # Under the lock: a drain cancelled at shutdown may still be inserting on its worker thread,
        # and closing the connection under it crashes the process.
        with self._lock:
            self._db.close()

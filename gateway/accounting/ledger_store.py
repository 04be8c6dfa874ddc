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

import psycopg

from gateway.accounting.ledger_schema import (
    MIGRATIONS,
    REPORT_FIELDS,
    insert_sql,
    report_sql,
    row_of,
)
from gateway.accounting.record import SpendRecord
from gateway.state.sqlite import open_database

_MIGRATIONS_TABLE = (
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

    def schema_version(self) -> int: ...

    def close(self) -> None: ...


def open_ledger_store(database_url: str | None, state_dir: Path) -> LedgerStore:
    if database_url and database_url.startswith(("postgres://", "postgresql://")):
        return PostgresLedgerStore(database_url)
    if database_url and not database_url.startswith("sqlite:///"):
        raise ValueError(
            f"GATEWAY_DATABASE_URL must be postgresql://… or sqlite:///path, not {database_url!r}"
        )
    path = Path(database_url.removeprefix("sqlite:///")) if database_url else state_dir / "ledger.sqlite"
    return SqliteLedgerStore(path)


def _report_rows(group_by: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    names = (*group_by, *REPORT_FIELDS)
    return [dict(zip(names, (_plain(value) for value in row), strict=True)) for row in rows]


def _plain(value: Any) -> Any:
    return float(value) if type(value).__name__ == "Decimal" else value


def _conditions(since: float | None, until: float | None, team: str | None) -> list[object]:
    return [value for value in (since, until, team) if value is not None]


class SqliteLedgerStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_database(path, _MIGRATIONS_TABLE)
        self._lock = threading.Lock()
        with self._lock:
            self._migrate()

    def _migrate(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")  # one replica at a time
        try:
            done = {row[0] for row in self._db.execute("SELECT version FROM ledger_migrations")}
            for migration in MIGRATIONS:
                if migration.version not in done:
                    for statement in migration.sqlite.split(";"):
                        if statement.strip():
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
        sql = report_sql(
            group_by, "?", since=since is not None, until=until is not None, team=team is not None
        )
        with self._lock:
            rows = self._db.execute(sql, _conditions(since, until, team)).fetchall()
        return _report_rows(group_by, rows)

    def schema_version(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(version) FROM ledger_migrations").fetchone()
        return int(row[0] or 0)

    def close(self) -> None:
        self._db.close()


class PostgresLedgerStore:
    """Keeps one connection (autocommit; writes in explicit transactions) and reconnects after an
    outage: a call that fails raises LedgerUnavailable and the next one tries a fresh connection."""

    CONNECT_TIMEOUT = 3

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._migrated = False

    def _connection(self) -> psycopg.Connection[Any]:
        """Connected and migrated; a database that is down at start-up is no reason not to serve."""
        if self._conn is None or self._conn.closed:
            try:
                conn = psycopg.connect(self._url, connect_timeout=self.CONNECT_TIMEOUT, autocommit=True)
            except psycopg.OperationalError as exc:
                raise LedgerUnavailable(f"PostgreSQL: {exc}".strip()) from exc
            try:
                if not self._migrated:
                    self._migrate(conn)
                    self._migrated = True
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
            conn.execute(_MIGRATIONS_TABLE)
            done = {row[0] for row in conn.execute("SELECT version FROM ledger_migrations")}
            for migration in MIGRATIONS:
                if migration.version not in done:
                    conn.execute(migration.postgres)
                    conn.execute(
                        "INSERT INTO ledger_migrations VALUES (%s, %s, %s)",
                        (migration.version, migration.description, time.time()),
                    )

    def _run(self, work: Any) -> Any:
        with self._lock:
            conn = self._connection()
            try:
                return work(conn)
            except psycopg.OperationalError as exc:
                conn.close()
                raise LedgerUnavailable(f"PostgreSQL: {exc}".strip()) from exc
            except psycopg.DataError as exc:
                raise LedgerRejected(f"PostgreSQL: {exc}".strip()) from exc

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
        sql = report_sql(
            group_by, "%s", since=since is not None, until=until is not None, team=team is not None
        )
        rows = self._run(lambda conn: conn.execute(sql, _conditions(since, until, team)).fetchall())
        return _report_rows(group_by, rows)

    def schema_version(self) -> int:
        row = self._run(lambda conn: conn.execute("SELECT MAX(version) FROM ledger_migrations").fetchone())
        return int(row[0] or 0)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

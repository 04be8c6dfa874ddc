"""The spend ledger in SQLite (WAL): the default, a file in the state directory or the one
`GATEWAY_DATABASE_URL=sqlite:///path` names. One connection, one call at a time (under a lock)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
from gateway.ledger.store import MIGRATIONS_TABLE, LedgerRejected, LedgerUnavailable, report_rows
from gateway.state.sqlite import open_database


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

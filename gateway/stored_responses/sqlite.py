"""Stored responses in SQLite (WAL), the default: a file in the state directory (`responses.sqlite`,
named by `backends.open_response_store`), shared by replicas on one volume. One connection, one call at
a time (under a lock, on a worker thread: see `store.py`); the payloads are orjson's bytes, as BLOBs.

Opening the store creates the file and applies the migrations (blocking, briefly: at start-up). A
locked or full database makes a call raise ResponseStoreUnavailable. Deleted rows leave free pages the
file reuses; it does not shrink."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gateway.state.sqlite import open_database
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

# How long a call waits for its turn (the calls before it; a replica writing the file may hold it
# for up to the connection's 10 s busy timeout).
TURN_TIMEOUT = 10.0
# How long closing waits for a call under way.
CLOSE_TIMEOUT = 15.0


class SqliteResponses:
    """The blocking half (`store.BlockingDatabase`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_database(path, MIGRATIONS_TABLE)
        # A commit is in the WAL before the call returns, so a stored response survives the process
        # (a crash, a restart); only the OS going down may lose the last ones, which is what skipping
        # the fsync of each commit buys: about 45 µs of CPU a put instead of 150, and 50 µs instead of
        # 270 of waiting. Spend never lives here (the ledger's spool is its own).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.Lock()
        try:
            with self._lock:
                self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")  # one replica at a time
        try:
            done = {row[0] for row in self._db.execute("SELECT version FROM stored_responses_migrations")}
            for migration in MIGRATIONS:
                if migration.version not in done:
                    for statement in migration.sqlite:
                        self._db.execute(statement)
                    self._db.execute(
                        "INSERT INTO stored_responses_migrations VALUES (?, ?, ?)",
                        (migration.version, migration.description, time.time()),
                    )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _locked(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            with self._lock:
                return work(self._db)
        except sqlite3.OperationalError as exc:  # locked for too long, disk full
            raise ResponseStoreUnavailable(f"{self.path}: {exc}") from exc

    def put(self, row: Row, now: float) -> bool:
        sql = upsert_sql("?")
        return self._locked(lambda db: db.execute(sql, (*row.values(), now)).rowcount) == 1

    def get(self, tenant: str, response_id: str, now: float) -> Row | None:
        sql = select_sql("?")
        found = self._locked(lambda db: db.execute(sql, (response_id, tenant, now)).fetchone())
        return None if found is None else Row(*found)

    def delete(self, tenant: str, response_id: str) -> float | None:
        sql = delete_sql("?")
        # fetchall: a DELETE … RETURNING is done only once its rows are read.
        deleted = self._locked(lambda db: db.execute(sql, (response_id, tenant)).fetchall())
        return float(deleted[0][0]) if deleted else None

    def sweep(self, now: float, limit: int) -> int:
        sql = sweep_sql("?")
        return self._locked(lambda db: db.execute(sql, (now, limit)).rowcount)

    def schema_version(self) -> int:
        found = self._locked(
            lambda db: db.execute("SELECT MAX(version) FROM stored_responses_migrations").fetchone()
        )
        return int(found[0] or 0)

    def close(self) -> None:
        # Under the lock: a call whose caller was cancelled may still be running on its thread, and
        # closing the connection under it crashes the process.
        with self._lock:
            self._db.close()


class SqliteResponseStore(ThreadedResponseStore):
    """Stored responses in the SQLite file at `path`, each kept `ttl_seconds` after its creation."""

    def __init__(
        self,
        path: Path,
        ttl_seconds: float,
        *,
        clock: Callable[[], float] = time.time,
        sweep_every: float = SWEEP_EVERY,
    ) -> None:
        self.path = path
        check_ttl(ttl_seconds)  # before the file is opened
        super().__init__(
            SqliteResponses(path),
            name=f"stored responses ({path})",
            ttl_seconds=ttl_seconds,
            turn_timeout=TURN_TIMEOUT,
            close_timeout=CLOSE_TIMEOUT,
            clock=clock,
            sweep_every=sweep_every,
        )

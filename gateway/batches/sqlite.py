"""The batch store in SQLite (WAL), the default: a file in the state directory (`batches.sqlite`, named
by `backends.open_batch_store`), shared by replicas on one volume. One connection, one call at a time
(under a lock, on a worker thread: see `store.py`).

Every call is one transaction: `BEGIN IMMEDIATE` for one that writes (so replicas' writers take turns,
waiting up to the connection's 10 s busy timeout), a deferred `BEGIN` for one that only reads (a
consistent snapshot; WAL readers never wait for the writer). `synchronous=FULL`: a commit is on the
disk before the call returns, so a finished line and its batch's counts survive the process and the
OS going down alike (the counts are spend-adjacent; a batch is worth the fsync). A locked or full
database makes a call raise BatchStoreUnavailable; the transaction is rolled back.

Opening the store creates the file and applies the migrations (blocking, briefly: at start-up)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from gateway.batches.schema import MIGRATIONS_TABLE, Sql, migrate
from gateway.batches.store import MAX_ATTEMPTS, BatchStoreUnavailable, ThreadedBatchStore
from gateway.state.sqlite import open_database

T = TypeVar("T")

# How long a call waits for its turn (the calls before it; a replica writing the file may hold it for
# up to the connection's 10 s busy timeout, and a 200 MB file takes a while to write).
TURN_TIMEOUT = 15.0
# How long closing waits for a call under way.
CLOSE_TIMEOUT = 20.0


class _SqliteSql:
    """`schema.Sql` on a SQLite connection (placeholders are already `?`)."""

    postgres = False

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def rows(self, statement: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(statement, params).fetchall()

    def run(self, statement: str, params: Sequence[object] = ()) -> int:
        return self._db.execute(statement, params).rowcount

    def insert_many(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
        placeholders = ", ".join("?" * len(columns))
        self._db.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})", rows)


class SqliteBatches:
    """The blocking half (`store.BlockingBatchDatabase`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_database(path, MIGRATIONS_TABLE)
        self._db.execute("PRAGMA synchronous=FULL")
        self._lock = threading.Lock()
        try:
            self.write(migrate)
        except BaseException:
            self._db.close()
            raise

    def read(self, work: Callable[[Sql], T]) -> T:
        return self._transaction("BEGIN", work)

    def write(self, work: Callable[[Sql], T]) -> T:
        return self._transaction("BEGIN IMMEDIATE", work)

    def _transaction(self, begin: str, work: Callable[[Sql], T]) -> T:
        try:
            with self._lock:
                self._db.execute(begin)
                try:
                    result = work(_SqliteSql(self._db))
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                return result
        except sqlite3.OperationalError as exc:  # locked for too long, disk full
            raise BatchStoreUnavailable(f"{self.path}: {exc}") from exc

    def close(self) -> None:
        # Under the lock: a call whose caller was cancelled may still be running on its thread, and
        # closing the connection under it crashes the process.
        with self._lock:
            self._db.close()


class SqliteBatchStore(ThreadedBatchStore):
    """The batch store in the SQLite file at `path`."""

    def __init__(
        self, path: Path, *, clock: Callable[[], float] = time.time, max_attempts: int = MAX_ATTEMPTS
    ) -> None:
        self.path = path
        super().__init__(
            SqliteBatches(path),
            name=f"batch store ({path})",
            turn_timeout=TURN_TIMEOUT,
            close_timeout=CLOSE_TIMEOUT,
            clock=clock,
            max_attempts=max_attempts,
        )

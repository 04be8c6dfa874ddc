"""The batch store's tables and their versioned migrations (SQLite and PostgreSQL, in the ledger's
style: a `batch_migrations` table of the versions applied), and `Sql`, the one interface through which
the store's operations (`operations.py`) reach either database: statements with `?` placeholders run
inside a transaction the backend opened.

Five tables: `batch_files` (a file's metadata and its content, as a BLOB or BYTEA), `batches` (one row
a batch: status, timestamps, counts, running cost and tokens; `seq` orders them by creation) and
`batch_lines` (one row a request, keyed by batch id and line number, while its batch is open);
`upstream_lines` and `upstream_submissions` (lines sent on to an upstream's own Batch API,
`upstream.py`). JSON is stored as text (orjson's, one line): it comes back byte for byte, keys in the
order they were written.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS batch_migrations "
    "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
)


class Sql(Protocol):
    """An open transaction. `postgres` says which database answers (the few statements that differ
    ask). `rows` returns what a statement selects, `run` how many rows it changed, `insert_many` adds
    rows to a table in bulk."""

    postgres: bool

    def rows(self, statement: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]: ...

    def run(self, statement: str, params: Sequence[object] = ()) -> int: ...

    def insert_many(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None: ...


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


_FILES = """
CREATE TABLE IF NOT EXISTS batch_files (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    purpose TEXT NOT NULL,
    filename TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    content {blob} NOT NULL
)
"""
_BATCHES = """
CREATE TABLE IF NOT EXISTS batches (
    seq {seq},
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT,
    input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status TEXT NOT NULL,
    metadata TEXT,
    errors TEXT,
    created_at BIGINT NOT NULL,
    in_progress_at BIGINT,
    finalizing_at BIGINT,
    completed_at BIGINT,
    failed_at BIGINT,
    expired_at BIGINT,
    cancelling_at BIGINT,
    cancelled_at BIGINT,
    expires_at BIGINT,
    output_file_id TEXT,
    error_file_id TEXT,
    total BIGINT NOT NULL,
    completed BIGINT NOT NULL DEFAULT 0,
    failed BIGINT NOT NULL DEFAULT 0,
    cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    cached_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    reasoning_tokens BIGINT NOT NULL DEFAULT 0,
    total_tokens BIGINT NOT NULL DEFAULT 0
)
"""
_LINES = """
CREATE TABLE IF NOT EXISTS batch_lines (
    batch_id TEXT NOT NULL,
    line_no INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    method TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL,
    claimed_by TEXT,
    lease_until DOUBLE PRECISION,
    attempts INTEGER NOT NULL DEFAULT 0,
    response TEXT,
    cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    finished_at DOUBLE PRECISION,
    PRIMARY KEY (batch_id, line_no)
)
"""
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS batches_by_tenant ON batches (tenant, seq)",
    "CREATE INDEX IF NOT EXISTS batches_by_status ON batches (status, seq)",
    # The lines claims and finalization look for: those still to run, and those running (few: at most
    # what the workers hold), by when their lease runs out.
    "CREATE INDEX IF NOT EXISTS batch_lines_pending ON batch_lines (batch_id, line_no)"
    " WHERE state = 'pending'",
    "CREATE INDEX IF NOT EXISTS batch_lines_running ON batch_lines (batch_id, lease_until)"
    " WHERE state = 'running'",
)


def _tables(blob: str, seq: str) -> tuple[str, ...]:
    return (_FILES.format(blob=blob), _BATCHES.format(seq=seq), _LINES, *_INDEXES)


# Lines sent on to an upstream's own Batch API (`upstream.py`): one row a batch line (its key is the
# line's `batch_id:line_no`), queued until a submission takes it, then answered from the upstream's
# output; and one row a submission (one upstream batch), whose `lease_until` is when a replica may next
# take it in hand: to create it upstream again (its creator died) or to look at its status.
_UPSTREAM = (
    """
CREATE TABLE IF NOT EXISTS upstream_lines (
    line_key TEXT PRIMARY KEY,
    deployment TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL,
    submission TEXT,
    status INTEGER,
    response TEXT,
    queued_at DOUBLE PRECISION NOT NULL
)
""",
    """
CREATE TABLE IF NOT EXISTS upstream_submissions (
    id TEXT PRIMARY KEY,
    deployment TEXT NOT NULL,
    url TEXT NOT NULL,
    state TEXT NOT NULL,
    upstream_id TEXT,
    lines BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    lease_until DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION
)
""",
    "CREATE INDEX IF NOT EXISTS upstream_lines_queued ON upstream_lines (deployment, url, queued_at)"
    " WHERE state = 'queued'",
    "CREATE INDEX IF NOT EXISTS upstream_lines_by_submission ON upstream_lines (submission)",
    "CREATE INDEX IF NOT EXISTS upstream_submissions_open ON upstream_submissions (lease_until)"
    " WHERE state <> 'ended'",
)

# Whose budgets and rate limits a batch's lines count against (NULL for batches made before: their
# tenant is taken as their team, as it was then).
_CREATOR = ("ALTER TABLE batches ADD COLUMN team TEXT", "ALTER TABLE batches ADD COLUMN key_id TEXT")

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "the batch files, batches and batch lines tables",
        _tables("BLOB", "INTEGER PRIMARY KEY AUTOINCREMENT"),
        _tables("BYTEA", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"),
    ),
    Migration(2, "lines sent on to upstream Batch APIs, and their submissions", _UPSTREAM, _UPSTREAM),
    Migration(3, "who created each batch: its team and key", _CREATOR, _CREATOR),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def migrate(sql: Sql) -> None:
    """Apply the migrations not applied yet, in the transaction `sql` is (a write transaction: on
    SQLite an immediate one, so one replica at a time; on PostgreSQL under an advisory lock)."""
    if sql.postgres:
        sql.rows("SELECT pg_advisory_xact_lock(hashtext('gateway batches migrations'))")
    sql.run(MIGRATIONS_TABLE)
    done = {row[0] for row in sql.rows("SELECT version FROM batch_migrations")}
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.postgres if sql.postgres else migration.sqlite:
            sql.run(statement)
        sql.run(
            "INSERT INTO batch_migrations VALUES (?, ?, ?)",
            (migration.version, migration.description, time.time()),
        )


def schema_version(sql: Sql) -> int:
    found = sql.rows("SELECT MAX(version) FROM batch_migrations")
    return int(found[0][0] or 0) if found else 0


FILE_COLUMNS = ("id", "tenant", "purpose", "filename", "bytes", "created_at", "expires_at")
BATCH_COLUMNS = (
    "id",
    "tenant",
    "endpoint",
    "model",
    "input_file_id",
    "completion_window",
    "status",
    "metadata",
    "errors",
    "created_at",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "expires_at",
    "output_file_id",
    "error_file_id",
    "total",
    "completed",
    "failed",
    "cost_usd",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
    "team",
    "key_id",
)
LINE_COLUMNS = ("batch_id", "line_no", "custom_id", "method", "url", "body", "state")

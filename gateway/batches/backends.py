"""Where the Batch API's files, batches and lines are kept: PostgreSQL when `GATEWAY_DATABASE_URL` names
one (shared by every replica and worker), else SQLite, `batches.sqlite` in the state directory (also
when the URL names a SQLite file: that one is the ledger's). The one module that knows both backends;
the URLs it accepts are the ledger's (`ledger.store.check_database_url`)."""

from __future__ import annotations

from pathlib import Path

from gateway.batches.sqlite import SqliteBatchStore
from gateway.batches.store import ThreadedBatchStore
from gateway.ledger.store import check_database_url


def open_batch_store(state_dir: Path, database_url: str | None) -> ThreadedBatchStore:
    """The batch store; ValueError for a URL it cannot use. SQLite is opened (file made, migrated)
    here; PostgreSQL on its first call, so a database that is away at start-up does not stop the
    gateway. Close it with `await store.aclose()`."""
    check_database_url(database_url)
    if database_url and database_url.startswith(("postgres://", "postgresql://")):
        # psycopg costs ~20 MB and only a PostgreSQL store needs it.
        from gateway.batches.postgres import PostgresBatchStore

        return PostgresBatchStore(database_url)
    return SqliteBatchStore(state_dir / "batches.sqlite")

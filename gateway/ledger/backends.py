"""Which database the ledger writes to: PostgreSQL when `GATEWAY_DATABASE_URL` names one, else SQLite
(the file it names, or `ledger.sqlite` in the state directory). The one module that knows both
backends."""

from __future__ import annotations

from pathlib import Path

from gateway.ledger.sqlite import SqliteLedgerStore
from gateway.ledger.store import LedgerStore, check_database_url


def open_ledger_store(database_url: str | None, state_dir: Path) -> LedgerStore:
    check_database_url(database_url)
    if database_url and database_url.startswith(("postgres://", "postgresql://")):
        # psycopg costs ~20 MB and only a PostgreSQL ledger needs it.
        from gateway.ledger.postgres import PostgresLedgerStore

        return PostgresLedgerStore(database_url)
    path = Path(database_url.removeprefix("sqlite:///")) if database_url else state_dir / "ledger.sqlite"
    return SqliteLedgerStore(path)

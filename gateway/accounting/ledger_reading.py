"""The ledger as the CLI reads it: the configured database, after draining what the spool still holds
(segments a running gateway still writes are locked and left to it)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from gateway.accounting.ledger import Ledger
from gateway.accounting.ledger_store import open_ledger_store
from gateway.accounting.spool import Spool
from gateway.settings import Settings


@contextmanager
def reading_ledger(database_url: str | None = None) -> Iterator[Ledger]:
    """The ledger of `database_url` (default: $GATEWAY_DATABASE_URL, else the state directory's SQLite),
    drained. Raises ValueError for a bad URL and LedgerUnavailable when the database is away."""
    settings = Settings()
    store = open_ledger_store(database_url or settings.database_url, settings.state_dir)
    ledger = Ledger(Spool(settings.state_dir / "spool"), store)
    try:
        asyncio.run(ledger.drain())
        yield ledger
    finally:
        asyncio.run(ledger.close())

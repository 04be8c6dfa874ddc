"""The ledger as the CLI reads it: the configured database, after draining what the spool still holds
(segments a running gateway still writes are locked and left to it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

from gateway.ledger.backends import open_ledger_store
from gateway.ledger.ledger import Ledger
from gateway.ledger.spool import Spool
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


def since_time(span: str, now: float | None = None) -> float:
    """The unix time `span` (30m, 24h, 7d, or 'all') before now."""
    if span == "all":
        return 0.0
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(span) < 2 or span[-1] not in units or not span[:-1].replace(".", "", 1).isdigit():
        raise ValueError(f"--since {span!r}: use a number and a unit (s, m, h, d), e.g. 24h, or 'all'")
    return (time.time() if now is None else now) - float(span[:-1]) * units[span[-1]]

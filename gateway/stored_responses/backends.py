"""Where the Responses API's stored responses are kept: PostgreSQL when `GATEWAY_DATABASE_URL` names one
(shared by every replica), else SQLite, `responses.sqlite` in the state directory (also when the URL
names a SQLite file: that one is the ledger's). The one module that knows both backends; the URLs it
accepts are the ledger's (`ledger.store.check_database_url`)."""

from __future__ import annotations

from pathlib import Path

from gateway.ledger.store import check_database_url
from gateway.stored_responses.sqlite import SqliteResponseStore
from gateway.stored_responses.store import ThreadedResponseStore

# How long a stored response is kept after its creation: 30 days, as OpenAI keeps them.
DEFAULT_TTL_SECONDS = 30 * 24 * 3600.0


def open_response_store(
    database_url: str | None, state_dir: Path, ttl_seconds: float = DEFAULT_TTL_SECONDS
) -> ThreadedResponseStore:
    """A `ResponseStore` (gateway.inbound.response_store); ValueError for a URL it cannot use. SQLite
    is opened (file made, migrated) here; PostgreSQL on its first call, so a database that is away at
    start-up does not stop the gateway. Close it with `await store.aclose()`."""
    check_database_url(database_url)
    if database_url and database_url.startswith(("postgres://", "postgresql://")):
        # psycopg costs ~20 MB and only a PostgreSQL store needs it.
        from gateway.stored_responses.postgres import PostgresResponseStore

        return PostgresResponseStore(database_url, ttl_seconds)
    return SqliteResponseStore(state_dir / "responses.sqlite", ttl_seconds)

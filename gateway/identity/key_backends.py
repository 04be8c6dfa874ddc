"""Which database holds the keys: PostgreSQL when the ledger is there (keys shared by every replica),
else SQLite in the state directory. The one module that knows both backends."""

from __future__ import annotations

from pathlib import Path

from gateway.identity.keys import KeyStore, KeysUnavailable
from gateway.identity.keys_sqlite import SqliteKeys


def open_key_store(database_url: str | None, state_dir: Path) -> KeyStore:
    """Keys a replica kept in its own SQLite before (earlier versions did) are copied into PostgreSQL
    once: an upgrade loses no key."""
    local = state_dir / "keys.sqlite"
    if database_url and database_url.startswith(("postgres://", "postgresql://")):
        # psycopg costs ~20 MB and only PostgreSQL keys need it.
        from gateway.identity.keys_postgres import PostgresKeys

        shared = KeyStore(PostgresKeys(database_url))
        if local.exists():
            earlier = KeyStore(SqliteKeys(local))
            try:
                shared.import_keys(earlier)
            except KeysUnavailable:
                pass  # copied at the next start; until then, those keys are not known
            finally:
                earlier.close()
        return shared
    return KeyStore(SqliteKeys(local))

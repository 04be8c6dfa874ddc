"""The stored responses' table, its versioned migrations (for SQLite and PostgreSQL, in the ledger's
style: a `stored_responses_migrations` table of the versions applied), the statements both backends
run, and how a `StoredResponse` becomes a row and back (its JSON payloads serialized by orjson)."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from gateway.inbound.response_store import StoredResponse

# One stored response, its three payloads serialized together, may take at most this many bytes:
# larger ones are refused (ValueError) rather than stored. 16 MiB holds any conversation a model's
# context takes, with room to spare, and keeps one row well within what either database handles.
MAX_STORED_BYTES = 16 * 1024 * 1024

MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS stored_responses_migrations "
    "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


_TABLE = """
CREATE TABLE IF NOT EXISTS stored_responses (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    created_at {real} NOT NULL,
    expires_at {real} NOT NULL,
    response {json} NOT NULL,
    input_items {json} NOT NULL,
    conversation {json} NOT NULL
)
"""
_EXPIRY_INDEX = "CREATE INDEX IF NOT EXISTS stored_responses_expires_at ON stored_responses (expires_at)"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "the stored responses table",
        (_TABLE.format(real="REAL", json="BLOB"), _EXPIRY_INDEX),
        (_TABLE.format(real="DOUBLE PRECISION", json="JSONB"), _EXPIRY_INDEX),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

PAYLOADS = ("response", "input_items", "conversation")
COLUMNS = ("id", "tenant", "created_at", "expires_at", *PAYLOADS)


@dataclass(frozen=True, slots=True)
class Row:
    """A stored response as its table holds it: the payloads as JSON text (bytes or str)."""

    id: str
    tenant: str
    created_at: float
    expires_at: float
    response: bytes | str
    input_items: bytes | str
    conversation: bytes | str

    def values(self) -> tuple[object, ...]:
        return (
            self.id,
            self.tenant,
            self.created_at,
            self.expires_at,
            self.response,
            self.input_items,
            self.conversation,
        )


def row_of(stored: StoredResponse, ttl_seconds: float) -> Row:
    """The row of a response, expiring `ttl_seconds` after its creation; ValueError when its payloads
    take more than MAX_STORED_BYTES serialized."""
    if not stored.id:
        raise ValueError("a stored response needs an id")
    response = orjson.dumps(stored.response)
    input_items = orjson.dumps(stored.input_items)
    conversation = orjson.dumps(stored.conversation)
    size = len(response) + len(input_items) + len(conversation)
    if size > MAX_STORED_BYTES:
        raise ValueError(
            f"response {stored.id} takes {size} bytes serialized; a stored response may take at most "
            f"{MAX_STORED_BYTES} (16 MiB)"
        )
    return Row(
        stored.id,
        stored.tenant,
        stored.created_at,
        stored.created_at + ttl_seconds,
        response,
        input_items,
        conversation,
    )


def stored_of(row: Row) -> StoredResponse:
    return StoredResponse(
        id=row.id,
        tenant=row.tenant,
        response=orjson.loads(row.response),
        input_items=orjson.loads(row.input_items),
        conversation=orjson.loads(row.conversation),
        created_at=float(row.created_at),
    )


def upsert_sql(placeholder: str, payload: str | None = None) -> str:
    """Insert a row, or replace the one of its id, unless that one is another tenant's and not expired
    (then nothing changes and no row counts as written). Parameters: the row's values, then now.
    `payload` is the placeholder of a JSON payload when it differs (PostgreSQL's `%s::jsonb`)."""
    values = [placeholder] * 4 + [payload or placeholder] * len(PAYLOADS)
    updates = ", ".join(f"{column} = excluded.{column}" for column in COLUMNS[1:])
    return (
        f"INSERT INTO stored_responses ({', '.join(COLUMNS)}) VALUES ({', '.join(values)})"
        f" ON CONFLICT (id) DO UPDATE SET {updates}"
        " WHERE stored_responses.tenant = excluded.tenant"
        f" OR stored_responses.expires_at <= {placeholder}"
    )


def select_sql(placeholder: str, payload_column: str = "{}") -> str:
    """The tenant's unexpired response of an id. Parameters: id, tenant, now. `payload_column` says
    how a payload column is read (PostgreSQL's `{}::text`)."""
    columns = [*COLUMNS[:4], *(payload_column.format(column) for column in PAYLOADS)]
    return (
        f"SELECT {', '.join(columns)} FROM stored_responses"
        f" WHERE id = {placeholder} AND tenant = {placeholder} AND expires_at > {placeholder}"
    )


def delete_sql(placeholder: str) -> str:
    """Delete the tenant's response of an id, saying when it would have expired. Parameters: id,
    tenant."""
    return (
        "DELETE FROM stored_responses"
        f" WHERE id = {placeholder} AND tenant = {placeholder} RETURNING expires_at"
    )


def sweep_sql(placeholder: str) -> str:
    """Delete at most a batch of expired rows, those expired longest ago first. Parameters: now, the
    batch."""
    return (
        "DELETE FROM stored_responses WHERE id IN (SELECT id FROM stored_responses"
        f" WHERE expires_at <= {placeholder} ORDER BY expires_at LIMIT {placeholder})"
    )

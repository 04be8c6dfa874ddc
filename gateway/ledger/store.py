"""Where drained spend records end up: the `LedgerStore` Protocol, its errors and what its backends
share. The backends are `sqlite.SqliteLedgerStore` (WAL, the default) and `postgres.PostgresLedgerStore`
(when `GATEWAY_DATABASE_URL` names a PostgreSQL); `backends.open_ledger_store` picks one. Both apply
the versioned migrations at open, insert idempotently (a segment drained twice after a crash counts
once) and answer the same spend report.

Blocking DB-API calls: the ledger calls these from a worker thread, one call at a time per store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from gateway.ledger.feedback import Feedback, RatedRequest
from gateway.ledger.record import SpendRecord
from gateway.ledger.schema import REPORT_FIELDS

MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS ledger_migrations "
    "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
)


class LedgerUnavailable(Exception):
    """The database cannot take records now; they stay in the spool."""


class LedgerRejected(Exception):
    """The database refuses these records as they are (bad data): retrying will not help."""


class LedgerStore(Protocol):
    def insert(self, records: Sequence[SpendRecord]) -> None: ...

    def report(
        self,
        group_by: Sequence[str],
        since: float | None = None,
        until: float | None = None,
        team: str | None = None,
    ) -> list[dict[str, Any]]: ...

    def add_feedback(self, feedback: Feedback) -> bool:
        """Keep the feedback if the ledger holds its request (for its team); whether it did."""
        ...

    def rated_requests(self, since: float = 0.0) -> list[RatedRequest]: ...

    def decisions(self, policy: str, since: float = 0.0) -> list[dict[str, Any]]:
        """The routed records of a policy: DECISION_COLUMNS, `signals` as a JSON string."""
        ...

    def read(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        """Rows of a read-only query written with `{p}` for each parameter (e.g. a dashboard view)."""
        ...

    def schema_version(self) -> int: ...

    def close(self) -> None: ...


def check_database_url(database_url: str | None) -> None:
    """Raises ValueError, saying what is expected, for a URL the ledger cannot use."""
    if database_url and not database_url.startswith(("postgres://", "postgresql://", "sqlite:///")):
        raise ValueError(
            f"GATEWAY_DATABASE_URL must be postgresql://… or sqlite:///path, not {database_url!r}"
        )


def report_rows(group_by: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    names = (*group_by, *REPORT_FIELDS)
    return [dict(zip(names, (_plain(value) for value in row), strict=True)) for row in rows]


def _plain(value: Any) -> Any:
    return float(value) if type(value).__name__ == "Decimal" else value

"""The ledger's table, its versioned migrations (for SQLite and PostgreSQL), and the one SQL report
both share: spend grouped by team, route, model, rule or day, with what routing saved."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from orjson import dumps

from gateway.ledger import rollup as ledger_rollup
from gateway.ledger.record import SpendRecord

# The columns in insert order; `day` (UTC) is derived from `at` so reports group without date maths.
COLUMNS = (
    "id", "request_id", "at", "day", "team", "key_id", "policy", "route", "rule", "deployment", "model",
    "stream", "status", "error", "cache", "prompt_tokens", "completion_tokens", "cached_tokens",
    "reasoning_tokens", "estimated", "cost_usd", "reference_usd", "saved_usd", "latency_ms", "ttfb_ms",
    "upstream_ms", "overhead_ms", "signals", "body", "api", "priority", "queue_ms", "admission",
    "energy_wh", "reference_energy_wh", "saved_energy_wh",
)  # fmt: skip


_EPOCH = date(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sqlite: str
    postgres: str


_TABLE = """
CREATE TABLE IF NOT EXISTS ledger (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    at {real} NOT NULL,
    day TEXT NOT NULL,
    team TEXT,
    key_id TEXT,
    policy TEXT,
    route TEXT,
    rule TEXT,
    deployment TEXT,
    model TEXT,
    stream INTEGER NOT NULL,
    status INTEGER NOT NULL,
    error TEXT,
    cache TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    estimated INTEGER NOT NULL,
    cost_usd {real},
    reference_usd {real},
    saved_usd {real},
    latency_ms {real} NOT NULL,
    ttfb_ms {real},
    upstream_ms {real},
    overhead_ms {real},
    signals TEXT NOT NULL,
    body TEXT
);
CREATE INDEX IF NOT EXISTS ledger_at ON ledger (at);
CREATE INDEX IF NOT EXISTS ledger_team_day ON ledger (team, day);
"""

# Ratings and labels clients send for their requests (`POST /v1/feedback`), kept beside the ledger so
# a team's own outcomes can become the learned router's training data. Several per request may exist.
_FEEDBACK = """
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    at {real} NOT NULL,
    team TEXT,
    key_id TEXT,
    rating {real},
    label TEXT,
    comment TEXT
);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback (request_id);
CREATE INDEX IF NOT EXISTS ledger_request ON ledger (request_id);
"""

# Records from before it came through chat completions, the only API then served.
_API_COLUMN = "ALTER TABLE ledger ADD COLUMN api TEXT NOT NULL DEFAULT 'chat.completions';"

# Priority classes, capacity queues and admission control; energy beside cost.
_LOAD_COLUMNS = """
ALTER TABLE ledger ADD COLUMN priority TEXT NOT NULL DEFAULT 'interactive';
ALTER TABLE ledger ADD COLUMN queue_ms {real} NOT NULL DEFAULT 0;
ALTER TABLE ledger ADD COLUMN admission TEXT;
ALTER TABLE ledger ADD COLUMN energy_wh {real};
ALTER TABLE ledger ADD COLUMN reference_energy_wh {real};
ALTER TABLE ledger ADD COLUMN saved_energy_wh {real};
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the ledger table", _TABLE.format(real="REAL"), _TABLE.format(real="DOUBLE PRECISION")),
    Migration(
        2, "feedback on requests", _FEEDBACK.format(real="REAL"), _FEEDBACK.format(real="DOUBLE PRECISION")
    ),
    Migration(3, "spend by the hour, for dashboards", ledger_rollup.SQLITE, ledger_rollup.POSTGRES),
    Migration(4, "the inbound API of each request", _API_COLUMN, _API_COLUMN),
    Migration(
        5,
        "priority, queue time, admission and energy",
        _LOAD_COLUMNS.format(real="REAL") + ledger_rollup.SQLITE_ENERGY,
        _LOAD_COLUMNS.format(real="DOUBLE PRECISION") + ledger_rollup.POSTGRES_ENERGY,
    ),
)

# What a report may group by (the column names double as the allow-list: never interpolate input).
GROUPS = (
    "team", "route", "model", "rule", "day", "deployment", "key_id", "cache", "policy", "api", "priority",
)  # fmt: skip


def row_of(record: SpendRecord) -> tuple[object, ...]:
    day = (_EPOCH + timedelta(days=int(record.at // 86_400))).isoformat()  # UTC; strftime costs 10x
    return (
        record.id, record.request_id, record.at, day, record.team, record.key_id, record.policy,
        record.route, record.rule, record.deployment, record.model, int(record.stream), record.status,
        record.error, record.cache, record.prompt_tokens, record.completion_tokens, record.cached_tokens,
        record.reasoning_tokens, int(record.estimated), record.cost_usd, record.reference_usd,
        record.saved_usd, record.latency_ms, record.ttfb_ms, record.upstream_ms, record.overhead_ms,
        dumps(dict(record.signals)).decode(), record.body, record.api, record.priority, record.queue_ms,
        record.admission, record.energy_wh, record.reference_energy_wh, record.saved_energy_wh,
    )  # fmt: skip


def insert_sql(placeholder: str) -> str:
    values = ", ".join([placeholder] * len(COLUMNS))
    return f"INSERT INTO ledger ({', '.join(COLUMNS)}) VALUES ({values}) ON CONFLICT (id) DO NOTHING"


# What a routed record says about its decision: enough to replay it under a candidate policy.
DECISION_COLUMNS = (
    "request_id", "at", "policy", "team", "rule", "route", "deployment", "status", "latency_ms", "signals",
)  # fmt: skip


def decisions_sql(placeholder: str) -> str:
    """Routed records of one policy since a time, oldest first."""
    return (
        f"SELECT {', '.join(DECISION_COLUMNS)} FROM ledger"
        f" WHERE policy = {placeholder} AND at >= {placeholder} AND rule IS NOT NULL ORDER BY at"
    )


REPORT_FIELDS = (
    "requests", "prompt_tokens", "completion_tokens", "cost_usd", "reference_usd", "saved_usd",
    "unpriced_requests", "estimated_requests", "cached_answers", "errors",
)  # fmt: skip


def report_query(
    group_by: Sequence[str],
    placeholder: str,
    since: float | None = None,
    until: float | None = None,
    team: str | None = None,
) -> tuple[str, list[object]]:
    """`SELECT` of spend grouped by the given columns (checked against GROUPS), filtered by the
    conditions given, and its parameters."""
    unknown = [name for name in group_by if name not in GROUPS]
    if unknown:
        raise ValueError(f"cannot group spend by {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    filters = [
        (f"at >= {placeholder}", since),
        (f"at < {placeholder}", until),
        (f"team = {placeholder}", team),
    ]
    where = [condition for condition, value in filters if value is not None]
    params: list[object] = [value for _, value in filters if value is not None]
    groups = ", ".join(group_by)
    sql = (
        f"SELECT {groups + ', ' if groups else ''}"
        "COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd), SUM(reference_usd),"
        " SUM(saved_usd), SUM(CASE WHEN cost_usd IS NULL THEN 1 ELSE 0 END), SUM(estimated),"
        " SUM(CASE WHEN cache <> 'miss' THEN 1 ELSE 0 END), SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END)"
        " FROM ledger"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        # NULLS LAST: the same order on SQLite and PostgreSQL (their defaults differ).
        + (f" GROUP BY {groups} ORDER BY {', '.join(f'{g} NULLS LAST' for g in group_by)}" if groups else "")
    )
    return sql, params

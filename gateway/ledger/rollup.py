"""The ledger rolled up by hour, so dashboards never scan the ledger: `spend_hourly` holds one row per hour,
team, route, model, rule, deployment and cache outcome, with the sums a view needs and a latency histogram.

A trigger on the ledger keeps it in step, in the same transaction as each insert, on SQLite and on
PostgreSQL alike. A record inserted twice (a spool segment drained again after a crash) is skipped by the
ledger's `ON CONFLICT (id) DO NOTHING`, so it fires no trigger and is never counted twice. Migration 3
creates the table and the trigger and backfills the rows already in the ledger.

Missing groups (a request refused before routing has no route) are stored as '' so the hour's key stays
unique; readers turn '' back into None.
"""

from __future__ import annotations

from collections.abc import Sequence

# Upper bounds (ms) of the latency histogram's buckets; the last one is unbounded.
LATENCY_BOUNDS_MS = (10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000)
LATENCY_COLUMNS = tuple(f"latency_le_{index}" for index in range(len(LATENCY_BOUNDS_MS) + 1))
KEYS = ("hour", "team", "route", "model", "rule", "deployment", "cache")
# The sums as migration 3 made them; migration 5 added the energy sums (`SUMS` is the table now).
SUMS_V3 = (
    "requests", "errors", "cached_answers", "prompt_tokens", "completion_tokens", "cost_usd", "unpriced",
    "reference_usd", "saved_usd", "latency_ms", *LATENCY_COLUMNS,
)  # fmt: skip
# Energy used and the reference's (each where known), saved (where both are), and how many requests
# had an estimate: a sum of 0 over requests with none is unknown, not nothing.
ENERGY_WH_SUMS = ("energy_wh", "reference_energy_wh", "saved_energy_wh")
ENERGY_SUMS = (*ENERGY_WH_SUMS, "energy_estimated")
SUMS = (*SUMS_V3, *ENERGY_SUMS)
_REAL_SUMS = ("cost_usd", "reference_usd", "saved_usd", "latency_ms", *ENERGY_WH_SUMS)


def _values(row: str, hour: str, sums: Sequence[str] = SUMS) -> list[str]:
    """The rollup's column values for one ledger row named `row` (NEW in a trigger, a table otherwise)."""
    latency = [
        f"CASE WHEN {row}.latency_ms <= {bound} THEN 1 ELSE 0 END"
        if index == 0
        else f"CASE WHEN {row}.latency_ms > {LATENCY_BOUNDS_MS[index - 1]} AND {row}.latency_ms <= {bound}"
        " THEN 1 ELSE 0 END"
        for index, bound in enumerate(LATENCY_BOUNDS_MS)
    ] + [f"CASE WHEN {row}.latency_ms > {LATENCY_BOUNDS_MS[-1]} THEN 1 ELSE 0 END"]
    return [
        hour,
        *(f"COALESCE({row}.{key}, '')" for key in KEYS[1:6]),
        f"{row}.cache",
        "1",
        f"CASE WHEN {row}.status >= 400 THEN 1 ELSE 0 END",
        f"CASE WHEN {row}.cache <> 'miss' THEN 1 ELSE 0 END",
        f"{row}.prompt_tokens",
        f"{row}.completion_tokens",
        f"COALESCE({row}.cost_usd, 0)",
        f"CASE WHEN {row}.cost_usd IS NULL THEN 1 ELSE 0 END",
        f"COALESCE({row}.reference_usd, 0)",
        f"COALESCE({row}.saved_usd, 0)",
        f"{row}.latency_ms",
        *latency,
        *((f"COALESCE({row}.{name}, 0)" for name in ENERGY_WH_SUMS) if "energy_wh" in sums else ()),
        *([f"CASE WHEN {row}.energy_wh IS NULL THEN 0 ELSE 1 END"] if "energy_estimated" in sums else []),
    ]


def _table(real: str) -> str:
    sums = ",\n    ".join(f"{name} {real if name in _REAL_SUMS else 'BIGINT'} NOT NULL" for name in SUMS_V3)
    return f"""
CREATE TABLE IF NOT EXISTS spend_hourly (
    hour BIGINT NOT NULL,
    team TEXT NOT NULL,
    route TEXT NOT NULL,
    model TEXT NOT NULL,
    rule TEXT NOT NULL,
    deployment TEXT NOT NULL,
    cache TEXT NOT NULL,
    {sums},
    PRIMARY KEY ({", ".join(KEYS)})
);
CREATE INDEX IF NOT EXISTS spend_hourly_team_hour ON spend_hourly (team, hour)"""


def _upsert(values: Sequence[str], sums: Sequence[str] = SUMS) -> str:
    updates = ", ".join(f"{name} = spend_hourly.{name} + excluded.{name}" for name in sums)
    return (
        f"INSERT INTO spend_hourly ({', '.join((*KEYS, *sums))}) VALUES ({', '.join(values)})"
        f" ON CONFLICT ({', '.join(KEYS)}) DO UPDATE SET {updates}"
    )


def _backfill(hour: str) -> str:
    values = _values("ledger", hour, SUMS_V3)
    keys, sums = values[: len(KEYS)], values[len(KEYS) :]
    return (
        f"INSERT INTO spend_hourly ({', '.join((*KEYS, *SUMS_V3))})"
        f" SELECT {', '.join(keys)}, {', '.join(f'SUM({value})' for value in sums)} FROM ledger"
        f" GROUP BY {', '.join(keys)}"
    )


_SQLITE_HOUR = "CAST({row}.at / 3600 AS INTEGER) * 3600"
_POSTGRES_HOUR = "(FLOOR({row}.at / 3600) * 3600)::BIGINT"

SQLITE = ";\n".join(
    [
        _table("REAL"),
        "CREATE TRIGGER IF NOT EXISTS ledger_rollup AFTER INSERT ON ledger BEGIN "
        + _upsert(_values("NEW", _SQLITE_HOUR.format(row="NEW"), SUMS_V3), SUMS_V3)
        + "; END",
        _backfill(_SQLITE_HOUR.format(row="ledger")),
    ]
)
POSTGRES = ";\n".join(
    [
        _table("DOUBLE PRECISION"),
        "CREATE OR REPLACE FUNCTION ledger_rollup() RETURNS trigger AS $$ BEGIN "
        + _upsert(_values("NEW", _POSTGRES_HOUR.format(row="NEW"), SUMS_V3), SUMS_V3)
        + "; RETURN NULL; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER ledger_rollup AFTER INSERT ON ledger FOR EACH ROW EXECUTE FUNCTION ledger_rollup()",
        _backfill(_POSTGRES_HOUR.format(row="ledger")),
    ]
)


# Migration 5: the energy sums, and the trigger that keeps them (hours before it count no energy).
SQLITE_ENERGY = ";\n".join(
    [
        *(f"ALTER TABLE spend_hourly ADD COLUMN {name} REAL NOT NULL DEFAULT 0" for name in ENERGY_WH_SUMS),
        "ALTER TABLE spend_hourly ADD COLUMN energy_estimated BIGINT NOT NULL DEFAULT 0",
        "DROP TRIGGER IF EXISTS ledger_rollup",
        "CREATE TRIGGER ledger_rollup AFTER INSERT ON ledger BEGIN "
        + _upsert(_values("NEW", _SQLITE_HOUR.format(row="NEW")))
        + "; END",
    ]
)
POSTGRES_ENERGY = ";\n".join(
    [
        *(
            f"ALTER TABLE spend_hourly ADD COLUMN {name} DOUBLE PRECISION NOT NULL DEFAULT 0"
            for name in ENERGY_WH_SUMS
        ),
        "ALTER TABLE spend_hourly ADD COLUMN energy_estimated BIGINT NOT NULL DEFAULT 0",
        "CREATE OR REPLACE FUNCTION ledger_rollup() RETURNS trigger AS $$ BEGIN "
        + _upsert(_values("NEW", _POSTGRES_HOUR.format(row="NEW")))
        + "; RETURN NULL; END $$ LANGUAGE plpgsql",
    ]
)

"""In-process budget counters start from the ledger: the embedded default keeps no counter across a
restart, and without this a restarted gateway would hand every team its day's budget again.

At start-up (after the spool left by the previous run is drained), the day's and the month's spend
per team and per key is read from the ledger and each counter is raised to it. Shared (Redis) counters
outlive a replica's restart and are not touched.
"""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.ledger.store import LedgerStore
from gateway.limits.budget_counters import NANO_PER_USD, BudgetLine, InProcessBudgetCounters
from gateway.limits.budgets import period_ends

# One scan of the month's records by time (the ledger is indexed on `at`).
SPENT_SQL = (
    "SELECT team, key_id, SUM(CASE WHEN at >= {p} THEN cost_usd ELSE 0 END), SUM(cost_usd)"
    " FROM ledger WHERE at >= {p} AND cost_usd IS NOT NULL GROUP BY team, key_id"
)


def seed_from_ledger(counters: InProcessBudgetCounters, store: LedgerStore, now: float) -> int:
    """Raise each team's and key's day and month counters to what the ledger holds; the number of
    counters raised. Blocks on the database: call it from a worker thread."""
    moment = datetime.fromtimestamp(now, UTC)
    day_start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    month_start = day_start.replace(day=1)
    day_ends, month_ends = period_ends(moment)
    totals: dict[str, tuple[float, float]] = {}
    for team, key_id, day_usd, month_usd in store.read(
        SPENT_SQL, [day_start.timestamp(), month_start.timestamp()]
    ):
        for kind, name in (("team", team), ("key", key_id)):
            if name is None:
                continue
            day, month = totals.get(f"{kind}:{name}", (0.0, 0.0))
            totals[f"{kind}:{name}"] = (day + float(day_usd or 0), month + float(month_usd or 0))
    day_id, month_id = f"day:{moment:%Y-%m-%d}", f"month:{moment:%Y-%m}"
    for owner, (day_usd, month_usd) in totals.items():
        counters.raise_to(BudgetLine(owner, f"{owner}:{day_id}", 0, day_ends), round(day_usd * NANO_PER_USD))
        counters.raise_to(
            BudgetLine(owner, f"{owner}:{month_id}", 0, month_ends), round(month_usd * NANO_PER_USD)
        )
    return 2 * len(totals)

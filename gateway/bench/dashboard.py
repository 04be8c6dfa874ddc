"""`python -m gateway.bench.dashboard`: how long each finance dashboard view takes to compute and render
with a large ledger (target: <= 1 s per view with 1,000,000 records), on SQLite and on PostgreSQL.

The ledger is filled through the store, as the gateway's drain fills it, so the hourly rollup is what the
trigger made of 1,000,000 records spread over 90 days, 20 teams, 4 routes and 8 models. Each view is
timed end to end on the server side (the rollup queries, then the page's HTML), median of `--rounds`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from gateway.dashboard.views import Filters, spend_view
from gateway.ledger.record import SpendRecord
from gateway.ledger.sqlite import SqliteLedgerStore
from gateway.ledger.store import LedgerStore
from gateway.limits.budgets import Budgets, SpendLimit

TARGET_SECONDS = 1.0
DAYS = 90
TEAMS = tuple(f"team-{n:02d}" for n in range(20))
ROUTES = (
    ("frontier", "needs-frontier", "gpt-4o", "gpt-4o"),
    ("frontier", "needs-frontier", "claude-sonnet", "claude-sonnet-4-5"),
    ("local", "everything-else-local", "smollm2", "smollm2"),
    ("cheap", "short", "mini", "gpt-4o-mini"),
)


def _progress(message: str) -> None:
    print(f"[dashboard bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def records(count: int, today: date) -> Iterator[list[SpendRecord]]:
    """`count` records over the DAYS before today, in batches of 10,000."""
    start = datetime(today.year, today.month, today.day, tzinfo=UTC).timestamp() - DAYS * 86400
    step = DAYS * 86400 / count
    batch: list[SpendRecord] = []
    for number in range(count):
        route, rule, deployment, model = ROUTES[number % len(ROUTES)]
        prompt, completion = 200 + number % 1800, 20 + number % 380
        batch.append(
            SpendRecord(
                id=f"r{number:08d}",
                request_id=f"q{number:08d}",
                at=start + number * step,
                team=TEAMS[(number * 7) % len(TEAMS)],
                key_id=f"k{number % 50}",
                policy="default",
                route=route,
                rule=rule,
                deployment=deployment,
                model=f"{model}-{number % 2}",
                stream=number % 3 == 0,
                status=502 if number % 97 == 0 else 200,
                cache="exact" if number % 13 == 0 else "miss",
                prompt_tokens=prompt,
                completion_tokens=completion,
                cost_usd=(prompt * 2.5 + completion * 10) / 1e6 / (1 + number % 4),
                reference_usd=(prompt * 2.5 + completion * 10) / 1e6,
                latency_ms=40.0 + number % 4000,
            )
        )
        if len(batch) == 10_000:
            yield batch
            batch = []
    if batch:
        yield batch


def fill(store: LedgerStore, count: int, today: date) -> float:
    started = time.perf_counter()
    written = 0
    for batch in records(count, today):
        store.insert(batch)
        written += len(batch)
        if written % 100_000 == 0:
            _progress(f"{written:,}/{count:,} records in the ledger")
    return time.perf_counter() - started


def views(today: date) -> dict[str, Filters]:
    until = today + timedelta(days=1)
    month = until - timedelta(days=30)
    return {
        "30 days, all teams, by team": Filters(month, until, None, "team"),
        "30 days, all teams, by model": Filters(month, until, None, "model"),
        "30 days, one team, by route": Filters(month, until, TEAMS[3], "route"),
        "90 days, all teams, by rule": Filters(until - timedelta(days=DAYS), until, None, "rule"),
        "1 day, all teams, by deployment": Filters(today, until, None, "deployment"),
    }


def time_views(store: LedgerStore, today: date, rounds: int) -> dict[str, float]:
    from gateway.api.dashboard import TEMPLATES

    budgets = Budgets(teams={"*": SpendLimit(monthly_usd=500.0)})
    template = TEMPLATES.get_template("spend.html")
    medians = {}
    for name, filters in views(today).items():
        samples = []
        for _ in range(rounds):
            started = time.perf_counter()
            view = spend_view(store, filters, budgets)
            chart = orjson.dumps({"spend": view.spend_by_day, "saved": view.saved_by_day}).decode()
            template.render(
                view=view,
                principal=None,
                chart_json=chart,
                export="",
                groups=(),
                audits=[],
                routers=[],
                rendered_ms=0.0,
            )
            samples.append(time.perf_counter() - started)
        medians[name] = statistics.median(samples)
        _progress(f"{name}: {medians[name] * 1000:.1f} ms")
    return medians


def run_backend(backend: str, count: int, rounds: int, postgres_url: str, today: date) -> dict[str, Any]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            store: LedgerStore = SqliteLedgerStore(Path(directory) / "ledger.sqlite")
            return _measure(store, backend, count, rounds, today)
    from gateway.bench.ledger import scratch_postgres
    from gateway.ledger.postgres import PostgresLedgerStore

    with scratch_postgres(postgres_url) as url:
        return _measure(PostgresLedgerStore(url), backend, count, rounds, today)


def _measure(store: LedgerStore, backend: str, count: int, rounds: int, today: date) -> dict[str, Any]:
    try:
        _progress(f"{backend}: filling the ledger with {count:,} records")
        fill_seconds = fill(store, count, today)
        [(rollup_rows,)] = store.read("SELECT COUNT(*) FROM spend_hourly", [])
        return {
            "backend": backend,
            "records": count,
            "rollup_rows": int(rollup_rows),
            "fill_seconds": round(fill_seconds, 1),
            "views_ms": {
                name: round(seconds * 1000, 1) for name, seconds in time_views(store, today, rounds).items()
            },
        }
    finally:
        store.close()


def table(results: Sequence[dict[str, Any]]) -> str:
    names = list(results[0]["views_ms"])
    lines = [f"{'view':<36}" + "".join(f"{r['backend']:>14}" for r in results)]
    for name in names:
        cells = "".join(f"{r['views_ms'][name]:>11.1f} ms" for r in results)
        verdict = "PASS" if all(r["views_ms"][name] <= TARGET_SECONDS * 1000 for r in results) else "FAIL"
        lines.append(f"{name:<36}{cells}  {verdict}")
    lines.append(f"{'rollup rows':<36}" + "".join(f"{r['rollup_rows']:>14,}" for r in results))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench-dashboard.json"))
    args = parser.parse_args(argv)
    today = datetime.now(UTC).date()
    results = [
        run_backend(backend, args.records, args.rounds, args.postgres_url, today)
        for backend in args.backends.split(",")
    ]
    print(f"dashboard views with {args.records:,} ledger records (median of {args.rounds}; target <= 1 s)")
    print(table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": platform.machine(), "results": results}, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
